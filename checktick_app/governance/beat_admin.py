"""django-celery-beat's "Run selected tasks", made to tell the truth about the two governance jobs.

The stock action sends each task and says "1 task was successfully run", even when the worker then
refuses it (tonight's scheduled run already happened) and nothing runs. For the governance jobs this
action does what beat does, in the request: it opens the scheduled run (or records its refusal, with
the admin user as who asked) and only then queues it, and it says which of the two happened. Other
periodic tasks (the watchdog) keep the stock behaviour.
"""

from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django_celery_beat.admin import PeriodicTaskAdmin

from .models import GovernanceRun
from .runs import RunRefused, open_run

JOB_OF_TASK = {
    "checktick_app.governance.tasks.run_data_governance": GovernanceRun.Job.DATA_GOVERNANCE,
    "checktick_app.governance.tasks.cleanup_survey_progress": GovernanceRun.Job.PROGRESS_CLEANUP,
}


def run_link(run_id):
    return format_html('<a href="{}">run #{}</a>', reverse("admin:governance_governancerun_change", args=[run_id]),
                       run_id)


def dispatch_scheduled_job(job, user):
    """Open today's scheduled run of `job` as beat would (RunRefused if it is refused) and queue it."""
    from . import dispatch, engine  # Celery is only needed once someone runs a task

    if job == GovernanceRun.Job.DATA_GOVERNANCE:
        engine.check_governance_config()
    dispatch.finish_planned_runs()
    run = open_run(job, trigger=GovernanceRun.Trigger.BEAT, user=user, scheduled_for=timezone.now().date(),
                   on_celery=True)
    dispatch._send_or_close(dispatch.TASK_NAMES[job], {"run_id": run.pk, "dry_run": False}, run)
    return run


class TruthfulPeriodicTaskAdmin(PeriodicTaskAdmin):
    @admin.action(description="Run selected tasks")
    def run_tasks(self, request, queryset):
        if any(task.task in JOB_OF_TASK for task in queryset) and not request.user.has_perm(
                "governance.run_governance"):
            raise PermissionDenied
        others = queryset.exclude(task__in=list(JOB_OF_TASK))
        for periodic in queryset.filter(task__in=list(JOB_OF_TASK)):
            job = GovernanceRun.Job(JOB_OF_TASK[periodic.task])
            try:
                run = dispatch_scheduled_job(job, request.user)
            except RunRefused as exc:
                self.message_user(request, format_html(
                    "{}: not run. {} The refusal is recorded as {} in the run history; for another run, "
                    "use Run now on the governance runs page.", periodic.name, str(exc), run_link(exc.refusal.pk)),
                    messages.WARNING)
            except ImproperlyConfigured as exc:
                self.message_user(request, f"{periodic.name}: not run. {exc}", messages.ERROR)
            else:
                self.message_user(request, format_html("{}: today's scheduled run is queued as {}.",
                                                       periodic.name, run_link(run.pk)), messages.SUCCESS)
        if others.exists():
            return super().run_tasks(request, others)

