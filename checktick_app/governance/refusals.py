"""A refused run is a row in the run history, not only a log line in a worker.

runs.open_run calls `record_refusal` when the lock (a run in progress) or tonight's scheduled run
stops it: the row says who asked, how, and which run it deferred to, so the admin, the metrics and
Flower's task result all show the refusal. Its status, "refused", is outside both partial unique
constraints on GovernanceRun, so any number of refusals can be recorded.
"""

from django.utils import timezone

from .models import GovernanceRun


def record_refusal(exc, *, job, trigger, dry_run=False, user=None, scheduled_for=None, on_celery=False):
    """Write the refused run's row, attach it to the RunRefused `exc` (as `exc.refusal`) and return `exc`."""
    now = timezone.now()
    exc.refusal = GovernanceRun.objects.create(
        job=job, trigger=trigger, dry_run=dry_run, scheduled_for=scheduled_for, on_celery=on_celery,
        triggered_by_id=getattr(user, "pk", None), triggered_by=user.get_username() if user else "",
        started_at=now, heartbeat_at=now, finished_at=now, status=GovernanceRun.Status.REFUSED,
        deferred_to=exc.existing, error=str(exc),
    )
    return exc
