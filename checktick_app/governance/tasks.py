"""Celery tasks: thin adapters over the governance services (STYLE 3).

Each takes ids and ISO values only (never model instances, never addresses), re-reads its row with a
state guard in the service it calls, and is safe to run twice: acks_late redelivers a message whose
worker died, and a duplicate dispatch is a recorded no-op. Queues and time limits are in settings.py
("# --- Celery ---"): run_data_governance and cleanup_survey_progress on `governance`, the deletions
on `deletion`, the emails on `email`.
"""

import logging

from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError as BrokerError

from . import dispatch
from .runs import Job, RunRefused
from .warnings import SendInterrupted

logger = logging.getLogger(__name__)

# Transient SMTP failures (4xx, timeouts, refused connections): exponential backoff with full jitter,
# 30 s, 60 s, 120 s, 240 s, 480 s (each at most EMAIL_RETRY_BACKOFF_MAX), about 15 minutes in all, so a
# greylisting or briefly down server is waited out the same night; after that the ledger row stays
# pending and the next night's run offers it again.
EMAIL_MAX_RETRIES = 5
EMAIL_RETRY_BACKOFF = 30
EMAIL_RETRY_BACKOFF_MAX = 600  # settings.CELERY_LONGEST_RETRY_DELAY counts on this
# Redis briefly unreachable while the orchestrator enqueues: retry; a redelivery re-sends only what is missing.
ORCHESTRATOR_MAX_RETRIES = 3
ORCHESTRATOR_RETRY_BACKOFF = 10
# A cleanup task deletes for this long, then re-enqueues itself (below its 5-minute soft time limit).
CLEANUP_TIME_BUDGET_SECONDS = 120


@shared_task(autoretry_for=(BrokerError,), max_retries=ORCHESTRATOR_MAX_RETRIES,
             retry_backoff=ORCHESTRATOR_RETRY_BACKOFF, retry_jitter=True)
def run_data_governance(run_id=None, dry_run=False, batch_size=None):
    """The nightly orchestrator. From beat (no run_id) it opens tonight's run, once per day."""
    if run_id is None:
        try:
            run_id = dispatch.open_scheduled_run(Job.DATA_GOVERNANCE, dry_run=dry_run).pk
        except RunRefused as exc:
            logger.warning("%s", exc)
            return {"refused": str(exc), "recorded_as_run_id": exc.refusal.pk}
    return {"run_id": run_id, "enqueued": dispatch.orchestrate_data_governance(run_id, batch_size=batch_size)}


# The database gone for a moment (failover, restart, dropped connection): 2, 4, 8 ... 60 s, about
# 4 minutes in all, then the item is recorded as failed and the next run takes it (R12).
DB_MAX_RETRIES = 6
DB_RETRY_BACKOFF = 2
DB_RETRY_BACKOFF_MAX = 60
# DATABASE_OUTAGE too: recording the outcome (land) can meet the outage after the work committed; the
# retry then finds the survey deleted, or the ledger row sent, by this run and records "done".
DATABASE_RETRY = (dispatch.DatabaseUnavailable, *dispatch.DATABASE_OUTAGE)
deletion_retries = dict(autoretry_for=DATABASE_RETRY, max_retries=DB_MAX_RETRIES,
                        retry_backoff=DB_RETRY_BACKOFF, retry_backoff_max=DB_RETRY_BACKOFF_MAX, retry_jitter=True)


@shared_task(bind=True, **deletion_retries)
def soft_delete_survey(self, survey_id, run_id=None):
    final = self.request.retries >= self.max_retries
    return dispatch.delete_survey(dispatch.SOFT_DELETE, survey_id, run_id, final_attempt=final).value


@shared_task(bind=True, **deletion_retries)
def hard_delete_survey(self, survey_id, run_id=None):
    final = self.request.retries >= self.max_retries
    return dispatch.delete_survey(dispatch.HARD_DELETE, survey_id, run_id, final_attempt=final).value


@shared_task(bind=True, autoretry_for=(dispatch.TransientSendFailure, *DATABASE_RETRY),
             max_retries=EMAIL_MAX_RETRIES, retry_backoff=EMAIL_RETRY_BACKOFF,
             retry_backoff_max=EMAIL_RETRY_BACKOFF_MAX, retry_jitter=True)
def send_deletion_warning(self, warning_id, run_id=None, claim_token="", accepted=False):
    final = self.request.retries >= self.max_retries
    try:
        return dispatch.send_warning(warning_id, run_id, final_attempt=final, claim_token=claim_token,
                                     accepted=accepted).value
    except SendInterrupted as exc:
        # The same backoff as autoretry, but the retry carries this delivery's claim (a random token,
        # no personal data) and whether the SMTP server took the message (warnings.SendInterrupted).
        countdown = get_exponential_backoff_interval(EMAIL_RETRY_BACKOFF, self.request.retries,
                                                     EMAIL_RETRY_BACKOFF_MAX, full_jitter=True)
        raise self.retry(exc=exc, countdown=countdown, kwargs={
            "warning_id": warning_id, "run_id": run_id, "claim_token": exc.claim_token, "accepted": exc.accepted})


@shared_task
def cleanup_survey_progress(run_id=None, dry_run=False, batch_size=None, time_budget=None):
    """The progress cleanup, in slices of CLEANUP_TIME_BUDGET_SECONDS; each re-enqueues the next."""
    if run_id is None:
        try:
            run_id = dispatch.open_scheduled_run(Job.PROGRESS_CLEANUP, dry_run=dry_run).pk
        except RunRefused as exc:
            logger.warning("%s", exc)
            return {"refused": str(exc), "recorded_as_run_id": exc.refusal.pk}
    budget = CLEANUP_TIME_BUDGET_SECONDS if time_budget is None else time_budget
    if not dispatch.continue_cleanup(run_id, batch_size=batch_size, time_budget=budget):
        cleanup_survey_progress.apply_async(kwargs={"run_id": run_id, "dry_run": dry_run, "batch_size": batch_size,
                                                    "time_budget": time_budget})
        return {"run_id": run_id, "continued": True}
    return {"run_id": run_id, "continued": False}


@shared_task
def watch_runs():
    """Beat, every few minutes: abandon dead runs, finalise finished ones, resume stalled ones (dispatch)."""
    return dispatch.watch_runs()
