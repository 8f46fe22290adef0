"""Celery tasks: a few lines each around the run engine (engine.py) and its Celery transport (dispatch.py).

Each takes ids only (never model instances, never addresses) and is safe to run twice: acks_late
redelivers a message whose worker died, and the engine's compare-and-sets make a duplicate a no-op.
The registered names are explicit, so beat's rows and the routes in settings.py (queues
`governance`, `deletion`, `email`; time limits) name them whatever the functions are called.
"""

import logging
import threading

from celery import shared_task
from celery.signals import task_postrun, task_prerun, worker_process_shutdown
from django.db import connections
from kombu.exceptions import OperationalError as BrokerError

from . import dispatch, engine, services
from .emails import SmtpSession
from .runs import Job, RunRefused

logger = logging.getLogger(__name__)

# Redis briefly unreachable while the orchestrator sends items: retry; the plan's cursor and the
# pending items make the retry carry on, not start again.
ORCHESTRATOR_MAX_RETRIES = 3
ORCHESTRATOR_RETRY_BACKOFF = 10
# A cleanup task deletes for this long, then re-enqueues itself (below its 5-minute soft time limit).
CLEANUP_TIME_BUDGET_SECONDS = 120


def _open_scheduled(job, dry_run):
    """(run id, None), or (None, the refusal recorded as a run row) when tonight's run of the job already happened or is in progress."""
    try:
        return dispatch.open_scheduled_run(job, dry_run=dry_run).pk, None
    except RunRefused as exc:
        logger.warning("%s", exc)
        return None, {"refused": str(exc), "recorded_as_run_id": exc.refusal.pk}


@shared_task(name=dispatch.TASK_NAMES[Job.DATA_GOVERNANCE], bind=True, autoretry_for=(BrokerError,),
             max_retries=ORCHESTRATOR_MAX_RETRIES, retry_backoff=ORCHESTRATOR_RETRY_BACKOFF, retry_jitter=True)
def plan_governance_run(self, run_id=None, dry_run=False, batch_size=None, continued=False):
    """The nightly orchestrator: from beat (no run_id) it opens tonight's run, once per day; then it plans
    the run for a time budget, sending each item as it is planned, and hands what is left to a new message."""
    if run_id is None:
        run_id, refused = _open_scheduled(Job.DATA_GOVERNANCE, dry_run)
        if refused:
            return refused
    sent = dispatch.plan_and_send(run_id, batch_size=batch_size, continued=continued)
    if sent is None:
        self.apply_async(kwargs={"run_id": run_id, "dry_run": dry_run, "batch_size": batch_size, "continued": True})
        return {"run_id": run_id, "continued": True}
    return {"run_id": run_id, "sent": sent}


def _execute(task, item_id, claim_token, accepted, connection=None):
    try:
        return engine.execute_item(item_id, attempt=task.request.retries, connection=connection,
                                   claim_token=claim_token, accepted=accepted)
    except engine.TryAgain as again:
        # The retry carries this delivery's claim (a random token, no personal data), if it holds one.
        raise task.retry(exc=again, countdown=again.delay, kwargs={
            "item_id": item_id, "claim_token": again.claim_token, "accepted": again.accepted})


@task_prerun.connect
@task_postrun.connect
def _recycle_database_connections(**_kwargs):
    """Around each task, what Django does around each request: keep the connection for CONN_MAX_AGE, health
    checked (CONN_HEALTH_CHECKS), and drop one that errored (settings.CELERY_DB_REUSE_MAX)."""
    for connection in connections.all(initialized_only=True):
        connection.close_if_unusable_or_obsolete()


# One SMTP session per worker process (per thread, for a threaded pool), kept open across its email tasks.
_smtp = threading.local()


def _smtp_session():
    if not hasattr(_smtp, "session"):
        _smtp.session = SmtpSession()
    return _smtp.session


@worker_process_shutdown.connect
def _quit_smtp_session(**_kwargs):
    if hasattr(_smtp, "session"):
        _smtp.session.close()


# No retry limit of Celery's own: the engine's retry policy (engine.RETRY_POLICIES) decides when to stop.
@shared_task(name=dispatch.TASK_NAMES["deletion"], bind=True, max_retries=None)
def execute_deletion_item(self, item_id, claim_token="", accepted=False):
    """One soft or hard deletion of a run (queue `deletion`); a soft deletion then sends its notices."""
    outcome = _execute(self, item_id, claim_token, accepted)
    dispatch.send_notices_of(item_id)
    return outcome


# ignore_result: the run item is the record, and Flower shows each outcome from the task events; a result
# write to Redis per email is a round trip nobody reads.
@shared_task(name=dispatch.TASK_NAMES["email"], bind=True, max_retries=None, ignore_result=True)
def execute_email_item(self, item_id, claim_token="", accepted=False):
    """One warning email or soft-deletion notice of a run (queue `email`), on the process's SMTP session."""
    return _execute(self, item_id, claim_token, accepted, connection=_smtp_session().connection())


@shared_task(name=dispatch.TASK_NAMES[Job.PROGRESS_CLEANUP])
def clean_up_progress(run_id=None, dry_run=False, batch_size=None, time_budget=None):
    """The progress cleanup, in slices of CLEANUP_TIME_BUDGET_SECONDS; each re-enqueues the next."""
    if run_id is None:
        run_id, refused = _open_scheduled(Job.PROGRESS_CLEANUP, dry_run)
        if refused:
            return refused
    budget = CLEANUP_TIME_BUDGET_SECONDS if time_budget is None else time_budget
    if not services.run_cleanup_slice(run_id, batch_size=batch_size, time_budget=budget):
        clean_up_progress.apply_async(kwargs={"run_id": run_id, "dry_run": dry_run, "batch_size": batch_size,
                                              "time_budget": time_budget})
        return {"run_id": run_id, "continued": True}
    return {"run_id": run_id, "continued": False}


@shared_task(name="checktick_app.governance.tasks.watch_runs")
def watch_runs():
    """Beat, every few minutes: abandon dead runs, close finished ones, resume stalled ones (dispatch)."""
    return dispatch.watch_runs()
