"""Run history (R17) and the one-run-at-a-time lock (R18), both held by the GovernanceRun row.

The lock is a partial unique index (one `running` row per job), so it holds across processes,
hosts and databases without Redis; a beat run is also unique per job and scheduled day, so two
beats or a redelivered beat message cannot start a second nightly run.
"""

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from .deletion_record import refuse_while_deletions_undone
from .health import ping_run
from .models import GovernanceRun, RunItem
from .reports import run_report
from .refusals import record_refusal

Job = GovernanceRun.Job
Trigger = GovernanceRun.Trigger
RunStatus = GovernanceRun.Status


class ClockSkew(ImproperlyConfigured):
    """This host's clock and the database server's differ by more than CHECKTICK_MAX_CLOCK_SKEW_SECONDS."""


def run_clock():
    """The run's "now": the database server's clock (SQLite's is this host's), or the host's when
    CHECKTICK_CLOCK=host. Returns (now, skew in seconds against this host)."""
    host = timezone.now()
    if settings.CHECKTICK_CLOCK == "host" or connection.vendor == "sqlite":
        return host, 0.0
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement_timestamp()")
        database = cursor.fetchone()[0]
    return database, abs((database - host).total_seconds())


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

    Its record is the report of the items it settled (reports.run_report), so the history says what the
    dead run did, not nothing. Returns the number of runs abandoned.
    """
    now = timezone.now()
    cutoff = now - timedelta(minutes=settings.CHECKTICK_RUN_STALE_AFTER_MINUTES)
    error = f"No heartbeat for {settings.CHECKTICK_RUN_STALE_AFTER_MINUTES} minutes: the process running it died."
    abandoned = 0
    # At most one running row per job (the partial unique index), so this loop is one row, or none.
    for run in GovernanceRun.objects.filter(job=job, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff):
        if run.job == Job.DATA_GOVERNANCE:
            report = run_report(run)
            counts, details = report.counts(), report.details()
        else:
            counts, details = run.counts, run.details  # a cleanup run's counts are saved after every slice
        abandoned += GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).update(
            status=RunStatus.ABANDONED, finished_at=now, error=error, counts=counts, details=details)
    return abandoned


def open_run(job, *, trigger, dry_run=False, user=None, scheduled_for=None, on_celery=False, now=None):
    """Open the run row (the lock); `now` is the run's clock (default: the moment it starts)."""
    refuse_while_deletions_undone(job)  # a restored backup brought hard-deleted surveys back (deletion_record)
    clock, skew = run_clock()
    if skew > settings.CHECKTICK_MAX_CLOCK_SKEW_SECONDS:
        _record_clock_skew(job, trigger, dry_run, user, clock, skew)
    abandon_stale_runs(job)
    started = clock
    try:
        with transaction.atomic():
            run = GovernanceRun.objects.create(
                job=job, trigger=trigger, dry_run=dry_run, scheduled_for=scheduled_for, on_celery=on_celery,
                triggered_by_id=getattr(user, "pk", None), triggered_by=user.get_username() if user else "",
                started_at=started, heartbeat_at=started, as_of=now or started,
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


def _record_clock_skew(job, trigger, dry_run, user, clock, skew):
    """The refusal is a failed run in the history (health turns red), outside the night's beat slot."""
    message = (f"Run not started: this host's clock is {skew:.0f} s away from the database server's "
               f"(more than CHECKTICK_MAX_CLOCK_SKEW_SECONDS={settings.CHECKTICK_MAX_CLOCK_SKEW_SECONDS}). "
               "Fix the host's time synchronisation (NTP) and run again.")
    run = GovernanceRun.objects.create(
        job=job, trigger=trigger, dry_run=dry_run, triggered_by_id=getattr(user, "pk", None),
        triggered_by=user.get_username() if user else "", started_at=clock, heartbeat_at=clock, as_of=clock,
        finished_at=clock, status=RunStatus.FAILED, error=message)
    ping_run(run, "fail")
    raise ClockSkew(message)


def heartbeat(run):
    GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(heartbeat_at=timezone.now())


def record_item(run, kind, object_id, outcome, error=""):
    """An item settled as it is recorded (a cleanup slice); a second record of the same item is a no-op."""
    item, _ = RunItem.objects.get_or_create(
        run_id=getattr(run, "pk", run), kind=kind, object_id=object_id,
        defaults={"outcome": outcome, "error": error[:4000], "settled_at": timezone.now()},
    )
    return item


def close_run(run, *, report=None, counts=None, error=""):
    """Finish the run (compare-and-set on `running`); it fails if any item failed or an error stopped it (R12).

    A data-governance run passes its report (reports.run_report); a cleanup run its counts.
    Returns the run as it is now (closed by this call or, if another caller won, by that one).
    """
    details = {}
    if report is not None:
        counts, details = report.counts(), report.details()
        failed = bool(report.failures)
    else:
        failed_items = RunItem.objects.filter(run=run, outcome=RunItem.Outcome.FAILED).count()
        counts = {**(counts or {}), "failed_items": failed_items}
        failed = bool(failed_items)
    status = RunStatus.FAILED if (failed or error) else RunStatus.SUCCEEDED
    now = timezone.now()
    closed = GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        status=status, counts=counts, details=details, error=error, finished_at=now, heartbeat_at=now,
    )
    run.refresh_from_db()
    if closed:
        ping_run(run, "success" if run.status == RunStatus.SUCCEEDED else "fail")
    return run
