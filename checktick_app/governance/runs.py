"""Run history (R17) and the one-run-at-a-time lock (R18), both held by the GovernanceRun row.

The lock is a partial unique index (one `running` row per job), so it holds across processes,
hosts and databases without Redis; a beat run is also unique per job and scheduled day, so two
beats or a redelivered beat message cannot start a second nightly run.
"""

from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from .deletion_record import refuse_while_deletions_undone
from .health import ping_run
from checktick_app.audit.models import AuditEvent
from .models import DeletionWarning, GovernanceRun, RunItem
from .refusals import record_refusal

Action = AuditEvent.Action
Job = GovernanceRun.Job
Trigger = GovernanceRun.Trigger
RunStatus = GovernanceRun.Status


class RunRefused(Exception):
    """Another run holds the lock, or tonight's scheduled run already happened."""

    def __init__(self, message, existing=None):
        super().__init__(message)
        self.existing = existing
        self.refusal = None  # the refused run's own row (refusals.record_refusal)


def describe(run):
    who = f" by {run.triggered_by}" if run.triggered_by else ""
    return (
        f"run #{run.pk} of {run.get_job_display().lower()} ({run.get_trigger_display().lower()}{who}, "
        f"started {run.started_at:%Y-%m-%d %H:%M:%S} UTC)"
    )


def abandon_stale_runs(job):
    """A `running` row with no heartbeat for the stale period belongs to a process that died.

    Its counts are made up from the audit rows that name it, so the history says what the dead run
    did (its deletions and emails), not nothing. Returns the number of runs abandoned.
    """
    now = timezone.now()
    cutoff = now - timedelta(minutes=settings.CHECKTICK_RUN_STALE_AFTER_MINUTES)
    error = f"No heartbeat for {settings.CHECKTICK_RUN_STALE_AFTER_MINUTES} minutes: the process running it died."
    abandoned = 0
    # At most one running row per job (the partial unique index), so this loop is one row, or none.
    for run in GovernanceRun.objects.filter(job=job, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff):
        counts = {**(run.counts or {}), **counts_from_audit(run)}
        abandoned += GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).update(
            status=RunStatus.ABANDONED, finished_at=now, error=error, counts=counts)
    return abandoned


def counts_from_audit(run):
    """What a run did, by its audit rows: the record of a run that died before it could count."""
    if run.job != Job.DATA_GOVERNANCE:
        return {}  # a cleanup run's counts are saved after every slice (dispatch.continue_cleanup)
    notice = Q(details__threshold_days=DeletionWarning.SOFT_DELETION_NOTICE)
    counts = AuditEvent.objects.filter(run_id=run.pk).aggregate(
        soft_deleted=Count("pk", filter=Q(action=Action.SOFT_DELETED)),
        hard_deleted=Count("pk", filter=Q(action=Action.HARD_DELETED)),
        emails_sent=Count("pk", filter=Q(action=Action.WARNING_SENT) & ~notice),
        soft_deletion_notices_sent=Count("pk", filter=Q(action=Action.WARNING_SENT) & notice),
    )
    failed = RunItem.objects.filter(run=run, outcome=RunItem.Outcome.FAILED)
    counts["emails_failed"] = failed.filter(kind="warning").count()  # as a finished run counts them
    counts["failed_items"] = failed.count()
    return counts


def open_run(job, *, trigger, dry_run=False, user=None, scheduled_for=None, on_celery=False):
    refuse_while_deletions_undone(job)  # a restored backup brought hard-deleted surveys back (deletion_record)
    abandon_stale_runs(job)
    now = timezone.now()
    try:
        with transaction.atomic():
            run = GovernanceRun.objects.create(
                job=job, trigger=trigger, dry_run=dry_run, scheduled_for=scheduled_for, on_celery=on_celery,
                triggered_by_id=getattr(user, "pk", None), triggered_by=user.get_username() if user else "",
                started_at=now, heartbeat_at=now,
            )
    except IntegrityError:
        asked = dict(job=job, trigger=trigger, dry_run=dry_run, user=user, scheduled_for=scheduled_for, on_celery=on_celery)
        running = GovernanceRun.objects.filter(job=job, status=RunStatus.RUNNING).first()
        if running:
            raise record_refusal(RunRefused(
                f"Refused: {describe(running)} is still in progress. Wait for it to finish; "
                f"if its process died it is released after CHECKTICK_RUN_STALE_AFTER_MINUTES.",
                running,
            ), **asked)
        done = GovernanceRun.objects.filter(
            job=job, trigger=Trigger.BEAT, dry_run=False, scheduled_for=scheduled_for
        ).exclude(status=RunStatus.REFUSED).first()
        if done:
            raise record_refusal(RunRefused(
                f"Refused: the scheduled run for {scheduled_for} already happened: {describe(done)}.", done), **asked)
        raise
    ping_run(run, "start")
    return run


def heartbeat(run):
    GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())


def record_item(run, kind, object_id, outcome, error=""):
    """An item's outcome, once per run (a redelivered subtask finds its row already there)."""
    item, _ = RunItem.objects.get_or_create(
        run_id=getattr(run, "pk", run), kind=kind, object_id=object_id,
        defaults={"outcome": outcome, "error": error[:4000]},
    )
    return item


def close_run(run, *, counts, details=None, error=""):
    """Finish the run; it fails if any item failed or an error stopped it (R12)."""
    failed_items = RunItem.objects.filter(run=run, outcome=RunItem.Outcome.FAILED).count()
    counts = {**counts, "failed_items": failed_items}
    status = RunStatus.FAILED if (failed_items or error) else RunStatus.SUCCEEDED
    GovernanceRun.objects.filter(pk=run.pk).update(
        status=status, counts=counts, details=details or {}, error=error, finished_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    run.refresh_from_db()
    ping_run(run, "success" if run.status == RunStatus.SUCCEEDED else "fail")
    return run
