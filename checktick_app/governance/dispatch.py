"""Runs on Celery: queue a run, spread it over per-item tasks, and close it when the last outcome lands.

The run row is the record and the lock (runs.py); Celery only carries ids. There is no chord: the
orchestrator saves its plan (every item it enqueues) and `expected_items` on the run row, each
per-item task records its outcome once (`RunItem`, unique per run, kind and object, so a redelivered
message does not count twice), and whoever lands the last outcome finalises the run with a
compare-and-set on the row. A finaliser that was lost (a worker killed between the two) is made up
by `finalise_landed_runs`, which every new dispatch and every beat-started run calls first.

A run can also wait for messages that are gone (Redis restarted without its data, or its last writes
lost with it). `watch_runs` (beat, every few minutes) re-sends
the items of a fanned-out run that has made no progress for CHECKTICK_RUN_RESUME_AFTER_MINUTES; every
per-item task is idempotent, so a copy that was not lost after all is a recorded no-op.

`enqueue_run` is what the admin's "Run now"/"Preview" buttons and `--async` call.
"""

import logging
import traceback
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from checktick_app.surveys.models import Survey

from . import services
from checktick_app.audit.services import Action, actor_fields
from .deletion import DeletionOutcome, hard_delete_survey, soft_delete_survey
from checktick_app.audit.models import AuditEvent
from .models import DeletionWarning, GovernanceRun, RunItem
from .runs import Job, RunStatus, Trigger, abandon_stale_runs, close_run, heartbeat, open_run, record_item
from .warnings import (DATABASE_OUTAGE, SendInterrupted, SendOutcome, pending_soft_deletion_notices,
                       send_deletion_warning)

logger = logging.getLogger(__name__)

Outcome = RunItem.Outcome
WARNING, SOFT_DELETE, HARD_DELETE, CLEANUP_BATCH = "warning", "soft_delete", "hard_delete", "cleanup_batch"


class BrokerUnavailable(ImproperlyConfigured):
    """The run could not be queued: Redis (REDIS_URL) did not take the message."""


# --- Queue a run -------------------------------------------------------------------------------

def enqueue_run(job, *, trigger, user=None, dry_run=False, batch_size=None):
    """Open the run row (runs.RunRefused if one is in progress) and send its orchestrator once that commits.

    Returns the GovernanceRun. Configuration is checked first (ImproperlyConfigured names the variable).
    """
    from . import tasks  # the tasks import this module

    job = Job(job)
    if job == Job.DATA_GOVERNANCE:
        services.check_governance_config()
    finalise_landed_runs()
    run = open_run(job, trigger=Trigger(trigger), user=user, dry_run=dry_run, on_celery=True)
    task = tasks.run_data_governance if job == Job.DATA_GOVERNANCE else tasks.cleanup_survey_progress
    kwargs = {"run_id": run.pk, "dry_run": dry_run}
    if batch_size:
        kwargs["batch_size"] = batch_size
    transaction.on_commit(lambda: _send(task, kwargs, run))
    return run


# Someone is waiting (the admin's Run now, `--async`): a few tries, then a clear error. Workers and beat
# wait longer for Redis (settings.CELERY_TASK_PUBLISH_RETRY_POLICY).
QUICK_PUBLISH = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def _send(task, kwargs, run):
    try:
        task.apply_async(kwargs=kwargs, retry_policy=QUICK_PUBLISH)
    except Exception as exc:  # noqa: BLE001 - kombu raises several kinds; the run must not stay "running"
        reason = f"{type(exc).__name__}: {exc}"
        close_run(run, counts={}, error=f"Not queued: the broker refused the message ({reason}).")
        raise BrokerUnavailable(
            f"Run #{run.pk} could not be queued: Redis did not take the message ({reason}). "
            "Check REDIS_URL and that Redis is running; the run is closed as failed."
        ) from exc


def open_scheduled_run(job, dry_run=False):
    """A beat-started run: unique per job and scheduled day, so a duplicate dispatch is refused (R18)."""
    finalise_landed_runs()
    return open_run(Job(job), trigger=Trigger.BEAT, dry_run=dry_run, scheduled_for=timezone.now().date(),
                    on_celery=True)


def running_run(run_id):
    """The run a message is about, if it still runs; a stale or duplicate message finds None."""
    return GovernanceRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).first()


# --- The data-governance orchestrator ----------------------------------------------------------

def orchestrate_data_governance(run_id, *, batch_size=None):
    """Plan the night, save the plan, enqueue one task per item. Returns the number of items enqueued.

    A dry run computes the inline report (services.process_data_governance) and closes the run.
    Redelivered after its plan was saved, it only re-sends the items that have not landed.
    """
    batch_size = batch_size or services.BATCH_SIZE
    run = running_run(run_id)
    if run is None:
        logger.info("Run #%s is not running any more: nothing to do.", run_id)
        return 0
    if run.dry_run:
        try:
            services.check_governance_config()
        except ImproperlyConfigured as exc:
            close_run(run, counts={}, error=str(exc))
            return 0
        services.process_data_governance(run, batch_size=batch_size)
        return 0
    if run.expected_items is not None:
        sent = _enqueue(run, (run.details or {}).get("plan", {}).get("items", []), only_missing=True)
        finalise_if_complete(run.pk)
        return sent
    try:
        services.check_governance_config()
        items = _plan(run, timezone.now(), batch_size)
    except Exception as exc:  # noqa: BLE001 - the run records why it stopped (R12, R17)
        error = str(exc) if isinstance(exc, ImproperlyConfigured) else traceback.format_exc(limit=5)
        close_run(run, counts={}, error=error)
        if isinstance(exc, ImproperlyConfigured):
            return 0
        raise
    if items is None:
        return 0  # another delivery of this message saved its plan first
    sent = _enqueue(run, items)
    finalise_if_complete(run.pk)
    return sent


def _plan(run, now, batch_size):
    """Select with the queryset rules, write the ledger rows, and save the plan on the run row."""
    report = services.GovernanceReport(run_id=run.pk, dry_run=False, now=now)
    items = []
    lines = {SOFT_DELETE: {}, HARD_DELETE: {}}
    for _days, _chunk, warning_ids in services.select_warnings(report, run, now, batch_size):
        items += [[WARNING, wid] for wid in warning_ids]
        heartbeat(run)
    for kind, due, date_field in ((SOFT_DELETE, Survey.objects.due_for_soft_delete(now), "deletion_date"),
                                  (HARD_DELETE, Survey.objects.due_for_hard_delete(now), "hard_deletion_date")):
        for chunk in services.id_chunks(due, batch_size, "name", date_field):
            for s in chunk:
                items.append([kind, s["pk"]])
                lines[kind][str(s["pk"])] = {"name": s["name"], "date": s[date_field].isoformat()}
            heartbeat(run)
    # Soft-deletion notices a previous run wrote but did not send (R9); this run's come from its deletions.
    items += [[WARNING, wid] for wid in pending_soft_deletion_notices(now).order_by("pk").values_list("pk", flat=True)]
    services._report_holds(report, run, now, batch_size, dry_run=False)
    details = {**report.details(), "plan": {"now": now.isoformat(), "items": items, "lines": lines}}
    saved = GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, expected_items__isnull=True).update(
        expected_items=len(items), counts=report.counts(), details=details, heartbeat_at=timezone.now())
    return items if saved else None


def _enqueue(run, items, only_missing=False):
    from . import tasks

    if only_missing:
        landed = set(RunItem.objects.filter(run=run).values_list("kind", "object_id"))
        items = [item for item in items if tuple(item) not in landed]
        # Notices of this run's soft deletions are not in the plan: re-send those still pending.
        soft = RunItem.objects.filter(run=run, kind=SOFT_DELETE, outcome=Outcome.DONE).values("object_id")
        items += [[WARNING, wid] for wid in pending_soft_deletion_notices(timezone.now())
                  .filter(survey_id__in=soft).values_list("pk", flat=True)]
    task_for = {WARNING: tasks.send_deletion_warning, SOFT_DELETE: tasks.soft_delete_survey,
                HARD_DELETE: tasks.hard_delete_survey}
    key = {WARNING: "warning_id", SOFT_DELETE: "survey_id", HARD_DELETE: "survey_id"}
    with tasks.send_deletion_warning.app.producer_or_acquire() as producer:  # one broker connection for all
        for kind, object_id in items:
            task_for[kind].apply_async(kwargs={key[kind]: object_id, "run_id": run.pk}, producer=producer)
    logger.info("Run #%s: %d item task(s) enqueued.", run.pk, len(items))
    return len(items)


# --- Per-item work -----------------------------------------------------------------------------

class DatabaseUnavailable(Exception):
    """The database dropped the connection: the task retries with backoff (the transaction rolled back)."""


def _failed(run_id, kind, object_id, exc, final_attempt):
    """Record a failure in the run, unless the database is only away for a moment and a retry follows."""
    if isinstance(exc, DATABASE_OUTAGE) and not final_attempt:
        raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
    land(run_id, kind, object_id, Outcome.FAILED, f"{type(exc).__name__}: {exc}")


def delete_survey(kind, survey_id, run_id=None, *, final_attempt=True):
    """One survey's soft or hard deletion; returns the outcome recorded for it in the run."""
    delete_one = soft_delete_survey if kind == SOFT_DELETE else hard_delete_survey
    if stale_message(run_id, kind, survey_id):
        return DeletionOutcome.RUN_OVER
    now = timezone.now()
    try:
        result = delete_one(survey_id, now=now, run_id=run_id)
    except Exception as exc:  # noqa: BLE001 - recorded in the run (R12); the task then fails visibly
        _failed(run_id, kind, survey_id, exc, final_attempt)
        raise
    notices = None
    if result.outcome is DeletionOutcome.DELETED or _deleted_by_run(kind, survey_id, run_id):
        # Done, whichever delivery of the message did it: a duplicate that waited on the row lock
        # and found the survey gone records the same outcome, so the count cannot depend on the race.
        # The notice rows (R9) committed with the deletion; they become items of this run.
        notices = _notices(survey_id, now) if kind == SOFT_DELETE else []
        land(run_id, kind, survey_id, Outcome.DONE, more_expected=len(notices))
    else:
        first = land(run_id, kind, survey_id, Outcome.NOOP)
        if result.outcome is DeletionOutcome.ON_HOLD and first:
            _audit_held(survey_id, run_id, now)
    if kind == SOFT_DELETE and run_id is not None:
        _send_notices(survey_id, run_id, now, notices)
    return result.outcome


def stale_message(run_id, kind, object_id):
    """A message of a run that is over (closed, or abandoned as dead) does nothing: the next run owns the
    work, and the finished run's record stays true to what it did."""
    if run_id is None or running_run(run_id) is not None:
        return False
    logger.info("Run #%s is not running: %s %s left to the next run.", run_id, kind, object_id)
    return True


def _deleted_by_run(kind, survey_id, run_id):
    action = Action.SOFT_DELETED if kind == SOFT_DELETE else Action.HARD_DELETED
    return run_id is not None and AuditEvent.objects.filter(run_id=run_id, survey_id=survey_id,
                                                            action=action).exists()


def _notices(survey_id, now):
    return list(pending_soft_deletion_notices(now).filter(survey_id=survey_id).order_by("pk")
                .values_list("pk", flat=True))


def _send_notices(survey_id, run_id, now, notices=None):
    """After this run soft-deleted the survey: one email task per notice row (again, if redelivered)."""
    from . import tasks

    if notices is None:
        if not RunItem.objects.filter(run_id=run_id, kind=SOFT_DELETE, object_id=survey_id,
                                      outcome=Outcome.DONE).exists():
            return
        notices = _notices(survey_id, now)
    for warning_id in notices:
        tasks.send_deletion_warning.apply_async(kwargs={"warning_id": warning_id, "run_id": run_id})


def _audit_held(survey_id, run_id, now):
    """R13, R20: a hold placed after the plan wins under the row lock; the audit says why nothing went."""
    survey = Survey.objects.filter(pk=survey_id).values("name", "deletion_date").first()
    if survey:
        AuditEvent.objects.create(
            action=Action.SKIPPED_FOR_HOLD, survey_id=survey_id, survey_name=survey["name"], run_id=run_id,
            created_at=now, details={"deletion_date": survey["deletion_date"].isoformat()}, **actor_fields(None))


class TransientSendFailure(Exception):
    """The SMTP server said "try later" (4xx, timeout, refused connection): the task retries."""


def send_warning(warning_id, run_id=None, *, final_attempt=True, claim_token="", accepted=False):
    """One ledger row's email (claimed compare-and-set in warnings.send_deletion_warning).

    A SendInterrupted (the database went away mid-send) is raised for the task to retry with the
    claim it carries; on the final attempt it is recorded as a failure like any other error.
    """
    if not claim_token and stale_message(run_id, WARNING, warning_id):
        # (A retry that holds a claim always finishes: its email may be with the SMTP server already.)
        return SendOutcome.RUN_OVER
    try:
        result = send_deletion_warning(warning_id, run_id=run_id, claim_token=claim_token, accepted=accepted)
    except SendInterrupted as exc:
        if not final_attempt:
            raise  # tasks.send_deletion_warning retries, carrying the claim
        _failed(run_id, WARNING, warning_id, exc, final_attempt)
        raise
    except Exception as exc:  # noqa: BLE001 - the run must hear about it, or it would never finish
        _failed(run_id, WARNING, warning_id, exc, final_attempt)
        raise
    if result.outcome is SendOutcome.TRANSIENT_FAILURE and not final_attempt:
        raise TransientSendFailure(result.error)
    outcome, error = {
        SendOutcome.SENT: Outcome.DONE,
        SendOutcome.TRANSIENT_FAILURE: Outcome.FAILED,  # retries exhausted: still pending for the next run
        SendOutcome.PERMANENT_FAILURE: Outcome.FAILED,  # marked failed in the ledger with its error
    }.get(result.outcome, Outcome.NOOP), result.error  # no longer due: left pending
    if result.outcome is SendOutcome.NOT_CLAIMED:
        # Another delivery of this message got the claim: record what the ledger row says it did.
        row = DeletionWarning.objects.filter(pk=warning_id).values("status", "last_error").first() or {}
        if row.get("status") == DeletionWarning.Status.SENDING and not final_attempt:
            # Still being sent: look again later (the same bounded retries). Recording a no-op now
            # could close the run before that delivery records the email; and if its worker died,
            # the claim's lease runs out and a later attempt sends it.
            raise TransientSendFailure(f"warning {warning_id} is being sent by another delivery")
        outcome, error = {
            DeletionWarning.Status.SENT: (Outcome.DONE, ""),
            DeletionWarning.Status.FAILED: (Outcome.FAILED, row.get("last_error", "")),
        }.get(row.get("status"), (Outcome.NOOP, ""))  # skipped, or still claimed after every retry
    land(run_id, WARNING, warning_id, outcome, error)
    return result.outcome


# --- Outcomes and finalisation -----------------------------------------------------------------

def land(run_id, kind, object_id, outcome, error="", more_expected=0):
    """Record one item's outcome in the run, once; True if this call recorded it.

    `more_expected` grows the run's expected items in the same transaction (a soft deletion's
    notices), so the run cannot be finalised between the two. A later, more telling outcome
    replaces a no-op (a duplicate delivery that lost the claim to the one that sent).
    """
    if run_id is None:
        return False  # an ad-hoc call outside any run
    with transaction.atomic():
        # Serialise outcomes per run (PostgreSQL row lock; SQLite serialises writers anyway).
        status = GovernanceRun.objects.select_for_update().filter(pk=run_id).values_list("status", flat=True).first()
        if status != RunStatus.RUNNING:
            # A message redelivered after its run was closed (or abandoned): the run's record stays as it was.
            logger.info("Run #%s is %s: the outcome of %s %s is not recorded in it.", run_id, status, kind, object_id)
            return False
        existing = RunItem.objects.filter(run_id=run_id, kind=kind, object_id=object_id).first()
        if existing is None:
            record_item(run_id, kind, object_id, outcome, error)
        elif existing.outcome == Outcome.NOOP and outcome != Outcome.NOOP:
            RunItem.objects.filter(pk=existing.pk).update(outcome=outcome, error=error[:4000])
        else:
            more_expected = 0
        if more_expected:
            GovernanceRun.objects.filter(pk=run_id).update(expected_items=F("expected_items") + more_expected)
    GovernanceRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
    finalise_if_complete(run_id)
    return existing is None


FINALISER_GRACE = timedelta(minutes=5)  # close_run takes milliseconds; longer means its caller died


def finalise_if_complete(run_id):
    """Close the run once every expected outcome has landed; exactly one caller wins. Returns the run or None."""
    run = GovernanceRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, expected_items__isnull=False).first()
    if run is None or RunItem.objects.filter(run_id=run_id).count() < run.expected_items:
        return None
    # finished_at marks the finaliser's claim; one that died before close_run is taken over after a grace.
    now = timezone.now()
    won = GovernanceRun.objects.filter(
        Q(finished_at__isnull=True) | Q(finished_at__lt=now - FINALISER_GRACE), pk=run_id, status=RunStatus.RUNNING,
    ).update(finished_at=now)
    if won != 1:
        return None
    report = report_from_items(run)
    return close_run(run, counts=report.counts(), details=report.details())


def finalise_landed_runs():
    """The sweep: finalise fanned-out runs whose outcomes all landed but whose finaliser was lost."""
    closed = []
    for run_id in GovernanceRun.objects.filter(status=RunStatus.RUNNING, expected_items__isnull=False).values_list(
            "pk", flat=True):
        run = finalise_if_complete(run_id)
        if run is not None:
            logger.warning("Run #%s had every outcome landed but no finaliser: closed by the sweep.", run_id)
            closed.append(run)
    return closed


# --- The watchdog ------------------------------------------------------------------------------

def watch_runs(now=None):
    """Every few minutes (beat): release dead runs, close finished ones, resume stalled ones."""
    abandoned = sum(abandon_stale_runs(job) for job in Job)
    finalised = finalise_landed_runs()
    resumed = resume_stalled_runs(now)
    return {"abandoned": abandoned, "finalised": [run.pk for run in finalised], "resumed": resumed}


def resume_stalled_runs(now=None):
    """Re-send what Celery runs with no outcome for CHECKTICK_RUN_RESUME_AFTER_MINUTES are waiting for.

    A healthy run lands an outcome at least every EMAIL_RETRY_BACKOFF_MAX (the longest retry delay),
    so a quieter one is waiting for messages that are gone: a planned run gets its missing items again,
    an unplanned one its orchestrator, a cleanup its next slice. Not while the queues hold messages
    (workers down or behind: a backlog, not a loss), and once per quiet period; it never touches the
    heartbeat, so a run that never progresses is still abandoned after CHECKTICK_RUN_STALE_AFTER_MINUTES.
    Returns {run id: messages re-sent}.
    """
    from . import tasks

    now = now or timezone.now()
    quiet_since = now - timedelta(minutes=settings.CHECKTICK_RUN_RESUME_AFTER_MINUTES)
    stalled = list(GovernanceRun.objects.filter(
        Q(resumed_at__isnull=True) | Q(resumed_at__lt=quiet_since), on_celery=True, status=RunStatus.RUNNING,
        heartbeat_at__lt=quiet_since,
    ))
    if not stalled or waiting_messages():
        return {}
    resumed = {}
    for run in stalled:  # at most one per job: one running run per job
        won = GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, resumed_at=run.resumed_at).update(
            resumed_at=now, resumes=F("resumes") + 1)
        if not won:
            continue  # another watchdog took it
        kwargs = {"run_id": run.pk, "dry_run": run.dry_run}
        if run.job == Job.PROGRESS_CLEANUP:
            tasks.cleanup_survey_progress.apply_async(kwargs=kwargs)
            sent = 1
        elif run.expected_items is None:
            tasks.run_data_governance.apply_async(kwargs=kwargs)
            sent = 1
        else:
            sent = _enqueue(run, (run.details or {}).get("plan", {}).get("items", []), only_missing=True)
        logger.warning("Run #%s landed no outcome for %s minutes: re-sent the %d message(s) it was waiting for.",
                       run.pk, settings.CHECKTICK_RUN_RESUME_AFTER_MINUTES, sent)
        resumed[run.pk] = sent
        finalise_if_complete(run.pk)
    return resumed


def waiting_messages():
    """Messages waiting in the governance queues (not counting those delivered to a worker)."""
    from . import tasks

    queues = sorted({route["queue"] for route in settings.CELERY_TASK_ROUTES.values()})
    with tasks.watch_runs.app.connection_for_read() as connection:
        channel = connection.default_channel
        # Redis (kombu's virtual transport): the lists' lengths. A passive declare would do on AMQP, but
        # on Redis it refuses a queue whose list is empty, and ignores a global key prefix.
        size = getattr(channel, "_size", None)
        return sum(size(queue) if size else channel.queue_declare(queue=queue, passive=True).message_count
                   for queue in queues)


def report_from_items(run):
    """The inline run's report (same counts, same details), built from the plan and the landed outcomes."""
    plan = (run.details or {}).get("plan", {})
    partial = services.GovernanceReport.from_run(run)  # what the plan noted: no recipient, skipped, held
    report = services.GovernanceReport(
        run_id=run.pk, dry_run=False, now=run.started_at, warned={days: [] for days in partial.warned},
        recipients_skipped=partial.recipients_skipped, without_recipients=partial.without_recipients,
        held=partial.held,
    )
    items = RunItem.objects.filter(run=run).order_by("created_at", "pk")
    ledger = {w.pk: w for w in DeletionWarning.objects.filter(
        pk__in=items.filter(kind=WARNING).values("object_id")).only(
        "pk", "survey_id", "survey_name", "deletion_date", "threshold_days")}
    held_now = set(AuditEvent.objects.filter(run_id=run.pk, action=Action.SKIPPED_FOR_HOLD)
                   .values_list("survey_id", flat=True))
    held_listed = {line.id for line in report.held}
    warned = {}
    for item in items:
        if item.outcome == Outcome.FAILED:
            report.failures.append((item.kind, item.object_id, item.error))
        if item.kind == WARNING:
            row = ledger.get(item.object_id)
            notice = row is not None and row.threshold_days == DeletionWarning.SOFT_DELETION_NOTICE
            if item.outcome == Outcome.DONE and notice:
                report.notices_sent += 1
            elif item.outcome == Outcome.DONE and row is not None:
                report.emails_sent += 1
                warned.setdefault(row.threshold_days, {})[row.survey_id] = services.SurveyLine(
                    row.survey_id, row.survey_name, row.deletion_date)
            elif item.outcome == Outcome.FAILED:
                report.emails_failed += 1
        elif item.kind in (SOFT_DELETE, HARD_DELETE):
            line = plan.get("lines", {}).get(item.kind, {}).get(str(item.object_id))
            if line is None:
                continue
            line = services.SurveyLine(item.object_id, line["name"], _datetime(line["date"]))
            if item.outcome == Outcome.DONE:
                (report.soft_deleted if item.kind == SOFT_DELETE else report.hard_deleted).append(line)
            elif item.object_id in held_now and item.object_id not in held_listed:
                report.held.append(line)
                held_listed.add(item.object_id)
    for days, by_survey in warned.items():
        report.warned.setdefault(days, [])
        report.warned[days] = sorted(by_survey.values(), key=lambda line: line.id)
    for lines in (report.soft_deleted, report.hard_deleted):
        lines.sort(key=lambda line: line.id)
    return report


def _datetime(value):
    return datetime.fromisoformat(value)


# --- Progress cleanup --------------------------------------------------------------------------

def continue_cleanup(run_id, *, batch_size=None, time_budget=None):
    """One bounded slice of the cleanup. True when the run is finished; False when it must continue."""
    run = running_run(run_id)
    if run is None:
        logger.info("Cleanup run #%s is not running any more: nothing to do.", run_id)
        return True
    report = services.CleanupReport.from_run(run)
    continuing = bool(run.counts)
    try:
        # The run's own start is "now" for every slice, so all slices apply the same expiry rule.
        services.cleanup_survey_progress(
            now=run.started_at, dry_run=run.dry_run, batch_size=batch_size or services.CLEANUP_BATCH_SIZE,
            time_budget=time_budget, report=report, continuing=continuing)
    except Exception:
        close_run(run, counts=report.counts(), error=traceback.format_exc(limit=5))
        raise
    record_item(run, CLEANUP_BATCH, RunItem.objects.filter(run=run, kind=CLEANUP_BATCH).count() + 1, Outcome.DONE)
    if run.dry_run or report.complete:
        close_run(run, counts=report.counts())
        return True
    GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        counts=report.counts(), heartbeat_at=timezone.now())
    logger.info("Cleanup run #%s: time budget spent after %d deletions; continuing in a new task.",
                run.pk, report.deleted)
    return False
