"""The Celery transport of the run engine: queue a run, plan it in bounded slices, send one message per
item, and watch for runs whose messages were lost.

Everything a run does is in engine.py; this module only moves ids between processes. Messages are
sent by task name (TASK_NAMES), so this module does not import the tasks and the tasks import it.
"""

import logging
from datetime import timedelta
import time
import traceback

from celery import current_app
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F, Q, Subquery
from django.utils import timezone

from . import engine
from .models import GovernanceRun, RunItem
from .runs import Job, RunStatus, Trigger, abandon_stale_runs, close_run, open_run

logger = logging.getLogger(__name__)

Kind = RunItem.Kind
TASK_NAMES = {
    Job.DATA_GOVERNANCE: "checktick_app.governance.tasks.run_data_governance",
    Job.PROGRESS_CLEANUP: "checktick_app.governance.tasks.cleanup_survey_progress",
    "deletion": "checktick_app.governance.tasks.execute_deletion_item",
    "email": "checktick_app.governance.tasks.execute_email_item",
}
ITEM_TASK = {Kind.SOFT_DELETE: "deletion", Kind.HARD_DELETE: "deletion", Kind.WARNING: "email", Kind.NOTICE: "email",
             Kind.HARD_WARNING: "email"}
# The orchestrator plans for this long, then re-sends itself to carry on from the plan's cursor.
PLANNING_TIME_BUDGET_SECONDS = 120


class BrokerUnavailable(ImproperlyConfigured):
    """The run could not be queued: Redis (REDIS_URL) did not take the message."""


# --- Queue a run -------------------------------------------------------------------------------

def enqueue_run(job, *, trigger, user=None, dry_run=False, batch_size=None):
    """Open the run row (runs.RunRefused if one is in progress) and send its orchestrator once that commits.

    What the admin's Run now / Preview and `--async` call. Configuration is checked first
    (ImproperlyConfigured names the variable). Returns the GovernanceRun.
    """
    job = Job(job)
    if job == Job.DATA_GOVERNANCE:
        engine.check_governance_config()
    engine.finish_planned_runs()
    run = open_run(job, trigger=Trigger(trigger), user=user, dry_run=dry_run, on_celery=True)
    kwargs = {"run_id": run.pk, "dry_run": dry_run}
    if batch_size:
        kwargs["batch_size"] = batch_size
    transaction.on_commit(lambda: _send_or_close(TASK_NAMES[job], kwargs, run))
    return run


# Someone is waiting (the admin's Run now, `--async`): a few tries, then a clear error. Workers and beat
# wait longer for Redis (settings.CELERY_TASK_PUBLISH_RETRY_POLICY).
QUICK_PUBLISH = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def _send_or_close(name, kwargs, run):
    try:
        current_app.send_task(name, kwargs=kwargs, retry_policy=QUICK_PUBLISH)
    except Exception as exc:  # noqa: BLE001 - kombu raises several kinds; the run must not stay "running"
        reason = f"{type(exc).__name__}: {exc}"
        close_run(run, counts={}, error=f"Not queued: the broker refused the message ({reason}).")
        raise BrokerUnavailable(
            f"Run #{run.pk} could not be queued: Redis did not take the message ({reason}). "
            "Check REDIS_URL and that Redis is running; the run is closed as failed."
        ) from exc


def open_scheduled_run(job, dry_run=False):
    """A beat-started run: unique per job and scheduled day, so a duplicate dispatch is refused (R18)."""
    engine.finish_planned_runs()
    return open_run(Job(job), trigger=Trigger.BEAT, dry_run=dry_run, scheduled_for=timezone.now().date(),
                    on_celery=True)


def running_run(run_id, job):
    """The run a message is about, if it still runs; a stale or duplicate message finds None."""
    return GovernanceRun.objects.filter(pk=run_id, job=job, status=RunStatus.RUNNING).first()


# --- Plan, and send the items --------------------------------------------------------------------

def plan_and_send(run_id, *, batch_size=None, time_budget=PLANNING_TIME_BUDGET_SECONDS, continued=False):
    """Plan a slice of the run, sending each planned chunk's items as it commits. Returns the items sent,
    or None when the time budget ran out and the orchestrator must carry on in a new message.

    `continued`: this message is the previous slice's own continuation. Any other message for a run
    already part-planned is a redelivery or the watchdog's resume: its predecessor may have died between
    a chunk's commit and its sending, so the run's pending items are sent again first (a copy is a no-op).
    """
    run = running_run(run_id, Job.DATA_GOVERNANCE)
    if run is None:
        logger.info("Run #%s is not running any more: nothing to plan.", run_id)
        return 0
    try:
        engine.check_governance_config()
        sent = 0
        if run.plan_step and not continued:
            sent += sum(send_items(chunk) for chunk in engine.pending_item_chunks(run))
        planner = engine.plan_run(run, batch_size=batch_size or engine.BATCH_SIZE,
                                  deadline=time.monotonic() + time_budget)
        while True:
            try:
                chunk = next(planner)
            except StopIteration as done:
                planned = done.value
                break
            if run.plan_step == "soft_delete":
                # A soft deletion's notices go out once it is done (send_notices_of), not beside it: sent now,
                # most would reach a worker before their deletion and wait out a retry.
                chunk = [item for item in chunk if item.kind != Kind.NOTICE]
            sent += send_items(chunk)
    except Exception as exc:  # noqa: BLE001 - the run records why it stopped (R12, R17)
        engine.close_failed(run, str(exc) if isinstance(exc, ImproperlyConfigured) else traceback.format_exc(limit=5))
        if isinstance(exc, ImproperlyConfigured):
            return 0
        raise
    engine.finish_if_done(run.pk)
    if not planned and GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, planned_at__isnull=True,
                                                    plan_step=run.plan_step, plan_after=run.plan_after).exists():
        return None  # the budget ran out (not another planner): carry on from the cursor
    return sent


def send_items(items):
    """One message per pending item, over one broker connection, on the deletion or email queue."""
    items = [(item.pk, item.kind) for item in items]
    with current_app.producer_or_acquire() as producer:
        for item_id, kind in items:
            current_app.send_task(TASK_NAMES[ITEM_TASK[kind]], kwargs={"item_id": item_id}, producer=producer)
    return len(items)


def send_notices_of(deletion_item_id):
    """After a soft deletion settled: its notices' messages, one per recipient (pending notice items of the
    same run and survey). A duplicate is a no-op like any other; a notice lost with a worker that died here
    is re-sent by the watchdog. Returns how many were sent."""
    deletion = RunItem.objects.filter(pk=deletion_item_id, kind=Kind.SOFT_DELETE).exclude(outcome=RunItem.Outcome.PENDING)
    notices = RunItem.objects.filter(kind=Kind.NOTICE, outcome=RunItem.Outcome.PENDING,
                                     run_id=Subquery(deletion.values("run_id")),
                                     survey_id=Subquery(deletion.values("survey_id")))
    return send_items(notices.only("pk", "kind"))


# --- The watchdog ------------------------------------------------------------------------------

def watch_runs(now=None):
    """Every few minutes (beat): release dead runs, close finished ones, resume stalled ones."""
    abandoned = sum(abandon_stale_runs(job) for job in Job)
    finished = engine.finish_planned_runs()
    resumed = resume_stalled_runs(now)
    return {"abandoned": abandoned, "finished": [run.pk for run in finished], "resumed": resumed}


def resume_stalled_runs(now=None):
    """Re-send what Celery runs quiet for CHECKTICK_RUN_RESUME_AFTER_MINUTES are waiting for.

    A healthy run settles an item at least every settings.LONGEST_RETRY_DELAY_SECONDS, so a quieter one waits for
    messages that are gone: an unplanned run gets its orchestrator again (it carries on from the plan's
    cursor), a planned one its pending items, a cleanup its next slice. Not while the queues hold
    messages (workers down or behind: a backlog, not a loss), and once per quiet period; it never touches
    the heartbeat, so a run that never progresses is still abandoned after CHECKTICK_RUN_STALE_AFTER_MINUTES.
    Returns {run id: messages re-sent}.
    """
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
        if run.job == Job.PROGRESS_CLEANUP or run.planned_at is None:
            current_app.send_task(TASK_NAMES[run.job], kwargs={"run_id": run.pk, "dry_run": run.dry_run})
            sent = 1
        else:
            sent = sum(send_items(chunk) for chunk in engine.pending_item_chunks(run))
        logger.warning("Run #%s settled no item for %s minutes: re-sent the %d message(s) it was waiting for.",
                       run.pk, settings.CHECKTICK_RUN_RESUME_AFTER_MINUTES, sent)
        resumed[run.pk] = sent
        engine.finish_if_done(run.pk)
    return resumed



def waiting_messages():
    """Messages waiting in the governance queues (not counting those delivered to a worker)."""
    queues = sorted({route["queue"] for route in settings.CELERY_TASK_ROUTES.values()})
    with current_app.connection_for_read() as connection:
        channel = connection.default_channel
        # Redis (kombu's virtual transport): the lists' lengths. A passive declare would do on AMQP, but
        # on Redis it refuses a queue whose list is empty, and ignores a global key prefix.
        size = getattr(channel, "_size", None)
        return sum(size(queue) if size else channel.queue_declare(queue=queue, passive=True).message_count
                   for queue in queues)
