"""The one run engine. Every trigger (beat, Run now, Preview, the commands inline or --async) plans,
executes and finishes a data-governance run here; only the transport differs: the cron command loops
over the items in its own process (`run_inline`), Celery sends one message per item (tasks.py).

1. Plan (`plan_run`): the due-rules select in keyset chunks; a chunk's items (RunItem, `pending`), its
   ledger rows and the run's plan cursor commit together, so a planner stopped by its time budget, a
   crash or a duplicate delivery never plans an item twice, and the next one carries on from the cursor.
   A soft deletion's notices are planned with it; held surveys are planned settled, with their audit.
2. Execute (`execute_item`): one item, routed to the deletion or the email service, its outcome set on
   the same row by a compare-and-set (pending -> done / skipped / failed), so a second call does nothing.
   A transient failure raises TryAgain with the delay of the one retry policy (RETRY_POLICIES); a notice
   whose soft deletion has not committed yet raises TryAgain too (never sent before it, same night).
3. Finish (`finish_if_done`): once the run is planned and no item is pending, one caller wins the
   compare-and-set on the run row and saves the report (reports.run_report).
"""

import heapq
import itertools
import logging
import random
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError, connection as db_connection, transaction
from django.db.models import F
from django.utils import timezone

from checktick_app.audit.models import AuditEvent
from checktick_app.audit.services import Action, actor_fields
from checktick_app.config_checks import site_url_problems
from checktick_app.surveys.models import Survey

from .deletion import DeletionOutcome, hard_delete_survey, soft_delete_survey
from .emails import (NO_ADDRESS, SendInterrupted, SendOutcome, SmtpSession, recipients_for, send_warning_email,
                     write_ledger_rows)
from .models import DeletionWarning, GovernanceRun, RunItem
from .reports import run_report
from .runs import RunStatus, close_run

logger = logging.getLogger(__name__)

Kind, Outcome = RunItem.Kind, RunItem.Outcome
# Connection-level database errors only: a constraint or data error is a real failure, recorded at once (R12).
DATABASE_OUTAGE = (OperationalError, InterfaceError)
# Surveys (or ledger rows) per planning query, per ledger insert and per item insert. `make bench`
# (bench/RESULTS.md): no clear gain past 500; 500 also keeps IN (...) lists under SQLite's limit.
BATCH_SIZE = 500


# --- Before a run ------------------------------------------------------------------------------

class GovernanceConfigError(ImproperlyConfigured):
    pass


def check_governance_config():
    """R8: refuse to start, naming each variable, rather than fail half-way or send broken links."""
    problems = site_url_problems(settings.SITE_URL, debug=settings.DEBUG)
    if settings.EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend" and not settings.EMAIL_HOST:
        problems.append("EMAIL_HOST is not set: warnings cannot be sent. Set EMAIL_HOST (and EMAIL_PORT).")
    if not settings.DEFAULT_FROM_EMAIL:
        problems.append("DEFAULT_FROM_EMAIL is not set: set the sender, e.g. DEFAULT_FROM_EMAIL=noreply@example.org")
    if problems:
        raise GovernanceConfigError("Governance run not started. " + " ".join(problems))


HEARTBEAT_EVERY_SECONDS = 10  # far below CHECKTICK_RUN_STALE_AFTER_MINUTES and the watchdog's quiet period


# --- Retries: one policy for both transports ------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits up to min(longest, first * 2**n)."""

    first: float
    longest: float
    retries: int

    def delay(self, attempt):
        return random.uniform(0, min(self.longest, self.first * 2 ** attempt))


DEFAULT_RETRY_POLICIES = {
    # SMTP "try later" (4xx, timeouts, refused connections): 30 s ... 480 s, about 15 minutes in all, so a
    # greylisting or briefly down server is waited out the same night; then the row stays pending (R6).
    "smtp": RetryPolicy(first=30, longest=settings.LONGEST_RETRY_DELAY_SECONDS, retries=5),
    # The database gone for a moment (failover, restart, dropped connection): 2 ... 60 s, about 4 minutes.
    "database": RetryPolicy(first=2, longest=60, retries=6),
    # A notice whose soft deletion has not committed yet, or an email another delivery is still sending.
    "not_ready": RetryPolicy(first=2, longest=60, retries=20),
}
RETRY_POLICIES = dict(DEFAULT_RETRY_POLICIES)  # what the engine uses (tests shorten the waits here)


class TryAgain(Exception):
    """The item could not be settled now: execute it again after `delay` seconds, as attempt `attempt + 1`.

    `claim_token` and `accepted` carry an interrupted send's claim (emails.SendInterrupted), so the next
    attempt takes its own ledger row back at once and never sends an email the server already took.
    """

    def __init__(self, reason, *, delay, claim_token="", accepted=False):
        super().__init__(reason)
        self.delay, self.claim_token, self.accepted = delay, claim_token, accepted


def _try_again_or_fail(policy, attempt, error, **claim):
    """Within the policy's retries raise TryAgain; after them, the caller records the failure."""
    policy_ = RETRY_POLICIES[policy]
    if attempt < policy_.retries:
        raise TryAgain(f"{policy}: {error}", delay=policy_.delay(attempt), **claim)
    return error


# --- Plan ------------------------------------------------------------------------------------------

def plan_steps():
    """The order of planning, which is also the inline order of execution."""
    warnings = [f"warning_{days}" for days in sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True)]
    return [*warnings, "soft_delete", "notice", "hard_warning", "hard_delete", "held"]


EXECUTION_ORDER = (Kind.WARNING, Kind.SOFT_DELETE, Kind.NOTICE, Kind.HARD_WARNING, Kind.HARD_DELETE)


def plan_run(run, *, batch_size=BATCH_SIZE, deadline=None):
    """Plan the run from its cursor on, one committed chunk at a time; yields each chunk's pending items.

    Returns (StopIteration value) True once the run is planned, False when `deadline` (time.monotonic)
    passed first or another planner of the same run moved the cursor (a duplicate delivery).
    """
    now = run.now
    steps = plan_steps()
    start = steps.index(run.plan_step) if run.plan_step in steps else 0
    step, after = run.plan_step or steps[0], run.plan_after
    for next_step in steps[start:]:
        if next_step != step:
            step, after = next_step, 0
        while True:
            if deadline is not None and time.monotonic() > deadline:
                return False
            rows = list(_step_rows(run, step, now, after, batch_size))
            with transaction.atomic():
                if rows:
                    last = rows[-1]["pk"]
                elif step == steps[-1]:
                    last = None
                else:
                    break  # step done; the next step's first chunk moves the cursor
                moved = GovernanceRun.objects.filter(
                    pk=run.pk, status=RunStatus.RUNNING, plan_step=run.plan_step, plan_after=run.plan_after,
                    planned_at__isnull=True,
                )
                if last is None:
                    if not moved.update(planned_at=timezone.now(), heartbeat_at=timezone.now()):
                        return False
                    run.planned_at = timezone.now()
                    return True
                if not moved.update(plan_step=step, plan_after=last, heartbeat_at=timezone.now()):
                    return False  # another planner of this run got here first
                run.plan_step, run.plan_after = step, last
                items = _plan_chunk(run, step, rows, now)
            after = last
            yield [item for item in items if item.outcome == Outcome.PENDING]


def _step_rows(run, step, now, after, batch_size):
    if step.startswith("warning_"):
        rules = Survey.objects.due_for_warning(now, int(step.split("_")[1]))
        fields = ("name", "deletion_date")
    elif step == "soft_delete":
        rules, fields = Survey.objects.due_for_soft_delete(now), ("name", "deletion_date")
    elif step == "hard_delete":
        rules, fields = Survey.objects.due_for_hard_delete(now), ("name", "hard_deletion_date")
    elif step == "hard_warning":
        rules, fields = Survey.objects.due_for_hard_deletion_warning(now), ("name", "hard_deletion_date")
    elif step == "held":
        rules, fields = Survey.objects.held_back(now), ("name", "deletion_date")
    else:  # notices an earlier run (or an earlier attempt of this one) wrote and did not send
        rules = DeletionWarning.objects.pending_notices(now).exclude(
            pk__in=RunItem.objects.filter(run_id=run.pk, kind=Kind.NOTICE, object_id__isnull=False).values("object_id"))
        fields = ("survey_id", "survey_name", "deletion_date", "recipient_id", "threshold_days")
    return rules.filter(pk__gt=after).order_by("pk").values("pk", *fields)[:batch_size]


def _plan_chunk(run, step, rows, now):
    if step.startswith("warning_"):
        items = _plan_warnings(run, rows, int(step.split("_")[1]), now)
    elif step == "soft_delete":
        items = [_item(run, Kind.SOFT_DELETE, r["pk"], r["pk"], r["name"], r["deletion_date"]) for r in rows]
        items += _plan_notices(run, rows, now)
    elif step == "hard_delete":
        items = [_item(run, Kind.HARD_DELETE, r["pk"], r["pk"], r["name"], r["hard_deletion_date"]) for r in rows]
    elif step == "hard_warning":
        items = plan_hard_deletion_warnings(run, rows, now)
    elif step == "held":
        items = [_item(run, Kind.HELD, r["pk"], r["pk"], r["name"], r["deletion_date"], outcome=Outcome.DONE,
                       reason=RunItem.ON_HOLD) for r in rows]
        if not run.dry_run:
            _audit_held(run, [(r["pk"], r["name"], r["deletion_date"]) for r in rows], now)
    else:
        items = [_item(run, Kind.NOTICE, r["pk"], r["survey_id"], r["survey_name"], r["deletion_date"],
                       threshold_days=r["threshold_days"], recipient_id=r["recipient_id"]) for r in rows]
    if run.dry_run:  # a preview plans what a run would do, and settles it as "would be done" at once
        for item in items:
            if item.outcome == Outcome.PENDING:
                item.outcome, item.settled_at = Outcome.DONE, now
    return RunItem.objects.bulk_create(items, batch_size=BATCH_SIZE)


def _item(run, kind, object_id, survey_id, name, date, *, outcome=Outcome.PENDING, reason="", threshold_days=None,
          recipient_id=None):
    settled = None if outcome == Outcome.PENDING else timezone.now()
    return RunItem(run_id=run.pk, kind=kind, object_id=object_id, survey_id=survey_id, survey_name=name, date=date,
                   threshold_days=threshold_days, recipient_id=recipient_id, outcome=outcome, reason=reason,
                   settled_at=settled)


def _plan_warnings(run, surveys, days, now):
    """R6, R7: the chunk's recipients, its ledger rows (written before any email), one item per email."""
    ids = [s["pk"] for s in surveys]
    recipients = recipients_for(ids)
    items = [_item(run, Kind.WARNING, None, s["pk"], s["name"], s["deletion_date"], outcome=Outcome.SKIPPED,
                   reason=RunItem.NO_RECIPIENT, threshold_days=days) for s in surveys if not recipients[s["pk"]]]
    by_id = {s["pk"]: s for s in surveys}
    if run.dry_run:
        for s, recipient_id, skipped in warnings_a_run_would_send(surveys, days, now, recipients):
            items.append(_item(run, Kind.WARNING, None, s["pk"], s["name"], s["deletion_date"],
                               outcome=Outcome.SKIPPED if skipped else Outcome.PENDING,
                               reason=NO_ADDRESS if skipped else "", threshold_days=days, recipient_id=recipient_id))
        return items
    write_ledger_rows(surveys, days, recipients, run.pk, now)
    skipped = DeletionWarning.objects.filter(run_id=run.pk, survey_id__in=ids, threshold_days=days,
                                             status=DeletionWarning.Status.SKIPPED)
    due = DeletionWarning.objects.due(now, ids, days)
    for row in (*skipped.order_by("pk"), *due.order_by("pk")):
        s = by_id[row.survey_id]
        skip = row.status == DeletionWarning.Status.SKIPPED
        items.append(_item(run, Kind.WARNING, row.pk, row.survey_id, s["name"], row.deletion_date,
                           outcome=Outcome.SKIPPED if skip else Outcome.PENDING, reason=NO_ADDRESS if skip else "",
                           threshold_days=days, recipient_id=row.recipient_id))
    return items


def warnings_a_run_would_send(surveys, days, now, recipients=None):
    """A preview's warnings (and the forecast's): [(survey, recipient id, skipped for want of an address)].

    The same ledger rule as the real run, without writing: an existing row is sent again only if it is
    claimable, and a recipient without an address is skipped only once, when the row would be written.
    """
    ids = [s["pk"] for s in surveys]
    recipients = recipients if recipients is not None else recipients_for(ids)
    existing = DeletionWarning.objects.filter(survey_id__in=ids, threshold_days=days).for_current_deletion_date()
    written = set(existing.values_list("survey_id", "recipient_id"))
    settled = set(existing.settled(now).values_list("survey_id", "recipient_id"))
    found = []
    for s in surveys:
        for r in recipients[s["pk"]]:
            key = (s["pk"], r.user_id)
            if not r.email and key not in written:
                found.append((s, r.user_id, True))
            elif r.email and key not in settled:
                found.append((s, r.user_id, False))
    return found


def warning_emails_a_run_would_send(now, batch_size=BATCH_SIZE):
    """{threshold days: [(survey id, recipient id)]}: the emails a run at `now` would send (a preview's)."""
    found = {}
    for days in sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True):
        found[days] = []
        for chunk in id_chunks(Survey.objects.due_for_warning(now, days), batch_size, "name", "deletion_date"):
            found[days] += [(s["pk"], recipient_id)
                            for s, recipient_id, skipped in warnings_a_run_would_send(chunk, days, now) if not skipped]
    return found


def surveys_a_run_would_warn(now, batch_size=BATCH_SIZE):
    """{threshold days: ids of the surveys a run at `now` would email that warning about} (the forecast's)."""
    return {days: {survey_id for survey_id, _ in emails}
            for days, emails in warning_emails_a_run_would_send(now, batch_size).items()}


def id_chunks(queryset, size, *fields):
    """Keyset pagination over a due-query: each chunk re-asks the rule, so rows acted on drop out."""
    last = 0
    while chunk := list(queryset.filter(pk__gt=last).order_by("pk").values("pk", *fields)[:size]):
        yield chunk
        last = chunk[-1]["pk"]


def _plan_notices(run, surveys, now):
    """R9: the notices of the chunk's soft deletions, planned with them and sent only after them.

    The ledger rows are written now (the soft deletion writes the same rows again, a no-op, so a
    soft deletion outside any run notifies too); each is an item that waits for its soft deletion.
    """
    recipients = recipients_for([s["pk"] for s in surveys])
    if run.dry_run:
        return [_item(run, Kind.NOTICE, None, s["pk"], s["name"], s["deletion_date"], recipient_id=r.user_id,
                      threshold_days=DeletionWarning.SOFT_DELETION_NOTICE)
                for s in surveys for r in recipients[s["pk"]] if r.email]
    write_ledger_rows(surveys, DeletionWarning.SOFT_DELETION_NOTICE, recipients, run.pk, now)
    rows = DeletionWarning.objects.claimable(now).filter(
        survey_id__in=[s["pk"] for s in surveys], kind=DeletionWarning.Kind.NOTICE,
        deletion_date__in={s["deletion_date"] for s in surveys},
    ).order_by("pk")
    dates = {s["pk"]: s["deletion_date"] for s in surveys}
    return [_item(run, Kind.NOTICE, row.pk, row.survey_id, row.survey_name, row.deletion_date,
                  threshold_days=row.threshold_days, recipient_id=row.recipient_id)
            for row in rows if dates[row.survey_id] == row.deletion_date]


def plan_hard_deletion_warnings(run, surveys, now):
    """R23: a hard-deletion date moved after the soft-deletion notice (a hold was lifted) is warned of once per
    recipient and date: ledger rows first (kind HARD_WARNING, the date they name is the hard-deletion date),
    then one item per row still to send. A preview lists what a run would send, writing nothing."""
    by_id = {s["pk"]: {"pk": s["pk"], "name": s["name"], "deletion_date": s["hard_deletion_date"]} for s in surveys}
    recipients = recipients_for(list(by_id))
    hard = DeletionWarning.Kind.HARD_WARNING
    ledger = DeletionWarning.objects.filter(survey_id__in=list(by_id), kind=hard)
    if run.dry_run:
        told = set(ledger.settled(now).values_list("survey_id", "deletion_date", "recipient_id"))
        return [_item(run, Kind.HARD_WARNING, None, s["pk"], s["name"], s["deletion_date"], recipient_id=r.user_id,
                      threshold_days=0)
                for s in by_id.values() for r in recipients[s["pk"]]
                if r.email and (s["pk"], s["deletion_date"], r.user_id) not in told]
    write_ledger_rows(list(by_id.values()), 0, recipients, run.pk, now, kind=hard)
    items = []
    for row in ledger.claimable(now).order_by("pk"):
        s = by_id[row.survey_id]
        if row.deletion_date == s["deletion_date"]:
            items.append(_item(run, Kind.HARD_WARNING, row.pk, row.survey_id, s["name"], row.deletion_date,
                               threshold_days=0, recipient_id=row.recipient_id))
    return items


def _audit_held(run, surveys, now):
    """R13, R20: each night a held survey would have been deleted, the audit says why it was not."""
    AuditEvent.objects.bulk_create([
        AuditEvent(action=Action.SKIPPED_FOR_HOLD, survey_id=survey_id, survey_name=name, run_id=run.pk,
                   created_at=now, details={"deletion_date": date.isoformat()}, **actor_fields(None))
        for survey_id, name, date in surveys
    ])


# --- Execute -----------------------------------------------------------------------------------

def execute_item(item_id, *, attempt=0, connection=None, claim_token="", accepted=False, finish=True):
    """Do one item and settle it; returns its outcome. Safe to call twice: a settled item is left as it is.

    Raises TryAgain for a transient failure within the retry policy; after the policy's last retry the
    item is settled `failed` with the error (an email's ledger row stays pending for the next run, R6).
    """
    try:
        return _execute_item(item_id, attempt, connection, claim_token, accepted, finish)
    except DATABASE_OUTAGE as exc:
        # The database went away outside a send's own handling (reading the item, settling it, finishing
        # the run). Every step is a compare-and-set, so the item is simply done again: a deletion or an
        # email that committed finds itself done, and settles the item as such.
        policy = RETRY_POLICIES["database"]
        if attempt >= policy.retries:
            raise
        raise TryAgain(f"database: {type(exc).__name__}: {exc}", delay=policy.delay(attempt),
                       claim_token=claim_token, accepted=accepted) from exc


def _execute_item(item_id, attempt, connection, claim_token, accepted, finish):
    item = RunItem.objects.select_related("run").filter(pk=item_id).first()
    if item is None:
        return None
    if item.outcome != Outcome.PENDING:
        finish_if_done(item.run_id)  # a duplicate of the item that settled last may be the one to close the run
        return item.outcome
    if item.run.status != RunStatus.RUNNING and not claim_token:
        # A message of a run that is over (closed, or abandoned as dead): the next run owns the work.
        # (A retry holding a claim still finishes: its email may be with the SMTP server already.)
        logger.info("Run #%s is not running: %s left to the next run.", item.run_id, item)
        return item.outcome
    if item.kind in (Kind.SOFT_DELETE, Kind.HARD_DELETE):
        outcome = _delete(item, attempt)
    else:
        outcome = _send(item, attempt, connection, claim_token, accepted)
    _heartbeat(item.run)
    if finish:  # the inline transport finishes the run once, after its last item
        finish_if_done(item.run_id)
    return outcome


def _heartbeat(run):
    """A settled item is a sign of life (the watchdog and the stale check read heartbeat_at), written at
    most every HEARTBEAT_EVERY_SECONDS: one UPDATE per run and period, not one per item."""
    now = timezone.now()
    if run.heartbeat_at < now - timedelta(seconds=HEARTBEAT_EVERY_SECONDS):
        GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat_at=now)


def _settle(item, outcome, *, reason="", error=""):
    """The compare-and-set: True if this call settled the item (then `item.outcome` says how)."""
    settled = bool(RunItem.objects.filter(pk=item.pk, outcome=Outcome.PENDING).update(
        outcome=outcome, reason=reason[:255], error=error[:4000], settled_at=timezone.now()))
    if settled:
        item.outcome = outcome
    return settled


def _delete(item, attempt):
    """R9-R13 through deletion.py; the item is settled in the deletion's own transaction, under its row lock,
    so a racing duplicate waits for it and then finds the item settled."""
    now = item.run.now
    try:
        with transaction.atomic():
            if item.kind == Kind.SOFT_DELETE:  # its notices' ledger rows were written when it was planned
                result = soft_delete_survey(item.survey_id, now=now, run_id=item.run_id, notices_planned=True)
            else:
                result = hard_delete_survey(item.survey_id, now=now, run_id=item.run_id)
            if result.outcome is DeletionOutcome.DELETED:
                _settle(item, Outcome.DONE)
            elif result.outcome is DeletionOutcome.ON_HOLD:
                # A hold placed after the plan wins under the row lock; the audit says why nothing went.
                if _settle(item, Outcome.SKIPPED, reason=RunItem.ON_HOLD):
                    _audit_held(item.run, [(item.survey_id, item.survey_name, item.date)], now)
            else:
                _settle(item, Outcome.SKIPPED, reason=result.outcome.value.replace("_", " "))
    except DATABASE_OUTAGE as exc:
        error = _try_again_or_fail("database", attempt, f"{type(exc).__name__}: {exc}")
        _settle(item, Outcome.FAILED, error=error)
    except Exception as exc:  # noqa: BLE001 - one survey failing never stops the others (R12)
        _settle(item, Outcome.FAILED, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
    return _outcome_of(item)


def _outcome_of(item):
    """The item's outcome: as this call settled it, or as the database says (a duplicate settled it first)."""
    if item.outcome != Outcome.PENDING:
        return item.outcome
    return RunItem.objects.filter(pk=item.pk).values_list("outcome", flat=True).first()


# A run whose first sends all fail at the mail server stops sending after this many: the same error 3,000
# times tells the operator nothing more, and every ledger row stays pending for the next run (R6, R21).
MAIL_SERVER_STOP = 3


def _mail_server_down(run_id, failures):
    """Stopped: enough sends failed at the mail server, and none of the run's emails got through."""
    return failures >= MAIL_SERVER_STOP and not RunItem.objects.filter(
        run_id=run_id, kind__in=(Kind.WARNING, Kind.NOTICE, Kind.HARD_WARNING), outcome=Outcome.DONE).exists()


def _note_mail_server_failure(run_id, error):
    """Count it on the run row (one UPDATE); returns the run's count now."""
    GovernanceRun.objects.filter(pk=run_id).update(mail_server_failures=F("mail_server_failures") + 1,
                                                   mail_server_error=error[:2000])
    return GovernanceRun.objects.filter(pk=run_id).values_list("mail_server_failures", flat=True).first() or 0


def _send(item, attempt, connection, claim_token, accepted):
    """R6-R8 through emails.py: one ledger row's email."""
    if item.run.mail_server_failures and _mail_server_down(item.run_id, item.run.mail_server_failures):
        _settle(item, Outcome.FAILED, reason=RunItem.MAIL_SERVER,
                error=f"Not sent: the mail server refused this run's sends ({item.run.mail_server_error})")
        return Outcome.FAILED
    if item.kind == Kind.NOTICE:
        deletion = RunItem.objects.filter(run_id=item.run_id, kind=Kind.SOFT_DELETE, object_id=item.survey_id).values_list(
            "outcome", flat=True).first()
        if deletion == Outcome.PENDING:
            _try_again_or_fail("not_ready", attempt, "its soft deletion has not happened yet")
            return Outcome.PENDING  # retries spent: left pending for the watchdog and the next run
        if deletion in (Outcome.SKIPPED, Outcome.FAILED):
            _settle(item, Outcome.SKIPPED, reason="survey not soft-deleted")
            return _outcome_of(item)
    try:
        result = send_warning_email(item.object_id, now=item.run.now, connection=connection, run_id=item.run_id,
                                    claim_token=claim_token, accepted=accepted)
    except SendInterrupted as exc:
        error = _try_again_or_fail("database", attempt, str(exc), claim_token=exc.claim_token,
                                   accepted=exc.accepted)
        _settle(item, Outcome.FAILED, error=error)
        return Outcome.FAILED
    except DATABASE_OUTAGE as exc:
        error = _try_again_or_fail("database", attempt, f"{type(exc).__name__}: {exc}")
        _settle(item, Outcome.FAILED, error=error)
        return Outcome.FAILED
    if result.outcome is SendOutcome.SENT:
        _settle(item, Outcome.DONE)
    elif result.outcome is SendOutcome.PERMANENT_FAILURE:
        _settle(item, Outcome.FAILED, error=result.error)
    elif result.outcome is SendOutcome.TRANSIENT_FAILURE:
        error = _try_again_or_fail("smtp", attempt, result.error)
        _settle(item, Outcome.FAILED, error=error)  # retries spent: the ledger row stays pending (R6)
    elif result.outcome is SendOutcome.MAIL_SERVER_FAILURE:
        # The ledger row is pending again (emails.classify_failure); retried, unless the run has stopped sending.
        if not _mail_server_down(item.run_id, _note_mail_server_failure(item.run_id, result.error)):
            _try_again_or_fail("smtp", attempt, result.error)
        _settle(item, Outcome.FAILED, reason=RunItem.MAIL_SERVER, error=result.error)
    elif result.outcome is SendOutcome.NO_LONGER_DUE:
        _settle(item, Outcome.SKIPPED, reason="no longer due")
    else:  # NOT_CLAIMED: another delivery has it; settle as the ledger row says
        row = DeletionWarning.objects.filter(pk=item.object_id).values("status", "last_error").first() or {}
        status = row.get("status")
        if status == DeletionWarning.Status.SENT:
            _settle(item, Outcome.DONE)
        elif status == DeletionWarning.Status.FAILED:
            _settle(item, Outcome.FAILED, error=row.get("last_error", ""))
        elif status == DeletionWarning.Status.SENDING:
            # Being sent by another delivery: look again later. Settling now could finish the run before
            # that delivery records the email; if its worker died, the lease runs out and a retry sends it.
            _try_again_or_fail("not_ready", attempt, "being sent by another delivery")
            return Outcome.PENDING
        else:
            _settle(item, Outcome.SKIPPED, reason=f"ledger row {status or 'missing'}")
    return _outcome_of(item)


# --- Finish ------------------------------------------------------------------------------------

def finish_if_done(run_id):
    """Close the run once it is planned and no item is pending; exactly one caller wins. Returns the run or None."""
    if RunItem.objects.filter(run_id=run_id, outcome=Outcome.PENDING).exists():
        return None
    run = GovernanceRun.objects.filter(pk=run_id, status=RunStatus.RUNNING, planned_at__isnull=False,
                                       job=GovernanceRun.Job.DATA_GOVERNANCE).first()
    if run is None:
        return None
    error = ""
    if _mail_server_down(run.pk, run.mail_server_failures):
        error = (f"The mail server refused every email of this run: {run.mail_server_error}. Nothing was sent; "
                 "every warning stays pending and the next run sends it. Check EMAIL_HOST, EMAIL_PORT, "
                 "EMAIL_HOST_USER and EMAIL_HOST_PASSWORD, EMAIL_USE_TLS / EMAIL_USE_SSL and DEFAULT_FROM_EMAIL.")
    return close_run(run, report=run_report(run), error=error)


def finish_planned_runs():
    """Close planned runs with no pending item whose last finisher was lost (a worker killed between the two)."""
    closed = []
    for run_id in GovernanceRun.objects.filter(job=GovernanceRun.Job.DATA_GOVERNANCE, status=RunStatus.RUNNING,
                                               planned_at__isnull=False).values_list("pk", flat=True):
        run = finish_if_done(run_id)
        if run is not None:
            logger.warning("Run #%s had every item settled but was still open: closed by the watchdog.", run_id)
            closed.append(run)
    return closed


def pending_item_chunks(run, size=BATCH_SIZE):
    """The run's pending items (pk and kind), a keyset batch at a time: what a resumed run sends again."""
    after = 0
    while chunk := list(RunItem.objects.filter(run=run, outcome=Outcome.PENDING, pk__gt=after)
                        .order_by("pk").only("pk", "kind")[:size]):
        yield chunk
        after = chunk[-1].pk


def close_failed(run, error):
    """The run stopped before it could finish (configuration, a planning error): closed with what it did."""
    return close_run(run, report=run_report(run), error=error)


# --- The inline transport ----------------------------------------------------------------------

def run_inline(run, *, batch_size=BATCH_SIZE):
    """The whole run in this process: plan, then every item in EXECUTION_ORDER, with the same retries as
    Celery (a retry waits in a queue while the other items go on), then finish. Returns the report."""
    try:
        for _chunk in plan_run(run, batch_size=batch_size):
            pass
        if not run.dry_run:
            session = SmtpSession()  # one SMTP session for the run's emails, QUIT once they are done
            try:
                _execute_all(run, batch_size, session)
            finally:
                session.close()
    except Exception:
        close_failed(run, traceback.format_exc(limit=5))
        raise
    finish_if_done(run.pk)
    run.refresh_from_db()
    report = run_report(run)
    report.status = run.status
    return report


def _waiting_out_outages(query):
    """The inline run's own reads between items, through a database outage as an item's retries would."""
    policy = RETRY_POLICIES["database"]
    for attempt in itertools.count():
        try:
            return query()
        except DATABASE_OUTAGE as exc:
            if attempt >= policy.retries:
                raise
            delay = policy.delay(attempt)
            logger.warning("Database unavailable between items (%s); trying again in %.0f s", exc, delay)
            db_connection.close()  # the next query opens a new connection
            time.sleep(delay)


def _pending_items(run, batch_size):
    """The run's pending items in EXECUTION_ORDER, a keyset batch at a time."""
    for kind in EXECUTION_ORDER:
        after = 0
        while ids := _waiting_out_outages(lambda: list(
                RunItem.objects.filter(run_id=run.pk, kind=kind, outcome=Outcome.PENDING, pk__gt=after)
                .order_by("pk").values_list("pk", flat=True)[:batch_size])):
            yield from ids
            after = ids[-1]


def _execute_all(run, batch_size, session):
    retries, order = [], itertools.count()  # (ready at, order, item id, attempt, claim token, accepted)
    pending = _pending_items(run, batch_size)
    beat = time.monotonic()
    while True:
        if retries and retries[0][0] <= time.monotonic():
            _ready, _n, item_id, attempt, token, accepted = heapq.heappop(retries)
        else:
            item_id = next(pending, None)
            if item_id is None:
                if not retries:
                    return
                time.sleep(max(0, retries[0][0] - time.monotonic()))
                continue
            attempt, token, accepted = 0, "", False
        try:
            execute_item(item_id, attempt=attempt, connection=session.connection(), claim_token=token,
                         accepted=accepted, finish=False)
        except TryAgain as again:
            logger.warning("Item %s: %s; trying again in %.0f s", item_id, again, again.delay)
            if db_connection.connection is not None and not db_connection.is_usable():
                db_connection.close()  # the database went away: the next query opens a new connection
            heapq.heappush(retries, (time.monotonic() + again.delay, next(order), item_id, attempt + 1,
                                     again.claim_token, again.accepted))
        if time.monotonic() - beat > HEARTBEAT_EVERY_SECONDS:
            beat = time.monotonic()
            try:
                GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())
            except DATABASE_OUTAGE:
                pass  # the next item meets the outage, and its retry waits it out
