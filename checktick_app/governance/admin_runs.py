"""Starting a run from the admin, shared by the run history's Run now / Preview and django-celery-beat's
"Run selected tasks" (beat_admin.py): one path, with one set of permissions and messages."""

from django.contrib import messages
from django.core.exceptions import ImproperlyConfigured

from .models import GovernanceRun
from .runs import RunRefused, describe

VIEW_PERMISSION = "governance.view_governance"
RUN_PERMISSION = "governance.run_governance"


def can_view(user):
    return bool(user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION))


def can_run(user):
    return can_view(user) and user.has_perm(RUN_PERMISSION)


RUN_NOW_DRY_RUN_VALUES = {"0": False, "1": True}


def queue_admin_run(modeladmin, request, job, *, dry_run, batch_size=None):
    """Queue a run from the admin (Run now, Preview, the schedules' "Run selected tasks"): one path,
    `dispatch.enqueue_run` with trigger "admin" and the user, and every refusal told to the user.

    Returns (run, None) when queued, (None, the run in progress) or (None, None) when refused.
    """
    label = GovernanceRun.Job(job).label.lower()
    try:
        from . import dispatch  # imported here so the rest of the admin works on a host without Celery
    except ImportError as exc:
        modeladmin.message_user(request, f"Not started: runs cannot be queued on this host ({exc}).", messages.ERROR)
        return None, None
    try:
        run = dispatch.enqueue_run(job, trigger=GovernanceRun.Trigger.ADMIN, user=request.user, dry_run=dry_run,
                                   batch_size=batch_size)
    except RunRefused as exc:
        if exc.existing is not None and exc.existing.status == GovernanceRun.Status.RUNNING:
            modeladmin.message_user(request, f"Not started: {describe(exc.existing)} is still in progress. "
                                             "Please wait for it to finish, then try again.", messages.WARNING)
        else:
            modeladmin.message_user(request, f"Not started. {exc}", messages.WARNING)
        return None, exc.existing
    except ImproperlyConfigured as exc:
        modeladmin.message_user(request, f"Not started: {exc}", messages.ERROR)
        return None, None
    what = "A preview (dry run, nothing is changed or sent)" if dry_run else "A run"
    modeladmin.message_user(request, f"{what} of {label} is queued as run #{run.pk}. This page refreshes until it "
                                     "finishes.", messages.SUCCESS)
    return run, None
