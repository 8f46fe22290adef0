"""django-celery-beat's schedule admin, held to the governance admin's rules (issue 13, point 2).

Out of the box its changelist actions (enable, disable, toggle, run) need no more than the view
permission, and "Run selected tasks" sends the task straight to Celery: a governance run triggered by
nobody, which used up the night's beat slot. Here:

- every action needs `change_periodictask`;
- running a governance or cleanup task also needs `governance.run_governance`, and goes through the
  same path as the run history's Run now (`queue_admin_run` -> `dispatch.enqueue_run`: trigger
  "admin", the user recorded, refused while a run is in progress, no use of the beat slot);
- every schedule change (task, schedule, enabled, arguments, and the crontab rows behind them) is
  written to the audit log with the user;
- the arguments of the three governance tasks are validated on save: no positional arguments,
  `dry_run` a boolean and `batch_size` a whole number from 1 to 10000, nothing else.
"""

import json

from django.contrib import admin, messages
from django.db import transaction
from django_celery_beat.admin import CrontabScheduleAdmin, PeriodicTaskAdmin, PeriodicTaskForm
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from checktick_app.audit.services import Action, record_audit

from .admin_runs import RUN_PERMISSION, queue_admin_run
from .models import GovernanceRun

TASKS = "checktick_app.governance.tasks."
RUNS_A_JOB = {
    TASKS + "run_data_governance": GovernanceRun.Job.DATA_GOVERNANCE,
    TASKS + "cleanup_survey_progress": GovernanceRun.Job.PROGRESS_CLEANUP,
}
# The keyword arguments each governance task may be given from its schedule; run_id is never one
# (a schedule that names a run would close another job's run, or a finished one).
ALLOWED_KWARGS = {
    TASKS + "run_data_governance": {"dry_run", "batch_size"},
    TASKS + "cleanup_survey_progress": {"dry_run", "batch_size"},
    TASKS + "watch_runs": set(),
}
MAX_BATCH_SIZE = 10000  # as the commands' --batch-size
# What a change to a schedule is made of (what the audit entry compares).
SCHEDULE_FIELDS = ("name", "task", "enabled", "crontab", "interval", "solar", "clocked", "one_off", "start_time",
                   "expires", "expire_seconds", "args", "kwargs", "queue", "exchange", "routing_key", "priority",
                   "headers")
CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year", "timezone")


def governance_kwargs_errors(task, args, kwargs):
    """What is wrong with a governance task's arguments (an empty list when nothing is)."""
    if task not in ALLOWED_KWARGS:
        return []
    errors = []
    if args != []:
        errors.append("Governance tasks take no positional arguments: set Positional Arguments to [].")
    if not isinstance(kwargs, dict):
        return errors + ['Keyword Arguments must be a JSON object, e.g. {"dry_run": false}.']
    allowed = ALLOWED_KWARGS[task]
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        may = ", ".join(sorted(allowed)) if allowed else "none"
        errors.append(f"Unknown keyword argument(s) {', '.join(unknown)} for {task.rsplit('.', 1)[1]} "
                      f"(allowed: {may}).")
    if "dry_run" in kwargs and not isinstance(kwargs["dry_run"], bool):
        errors.append(f"dry_run must be true or false (got {json.dumps(kwargs['dry_run'])}).")
    if "batch_size" in kwargs:
        size = kwargs["batch_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
            errors.append(f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE} (got {json.dumps(size)}).")
    return errors


class GovernedPeriodicTaskForm(PeriodicTaskForm):
    def clean(self):
        data = super().clean()
        try:
            args, kwargs = json.loads(data.get("args") or "[]"), json.loads(data.get("kwargs") or "{}")
        except (TypeError, ValueError):
            return data  # the JSON fields already carry their own error
        for error in governance_kwargs_errors(data.get("task"), args, kwargs):
            self.add_error("kwargs", error)
        return data


def _value(obj, name):
    value = getattr(obj, name)
    return value if value is None or isinstance(value, (bool, int)) else str(value)


def _changes(before, after, fields):
    return {name: [_value(before, name), _value(after, name)] for name in fields
            if before is None or _value(before, name) != _value(after, name)}


def audit_schedule_change(request, task, change, fields=None):
    record_audit(Action.SCHEDULE_CHANGED, actor=request.user, periodic_task=task.name, task=task.task,
                 change=change, **({"fields": fields} if fields else {}))


class GovernedPeriodicTaskAdmin(PeriodicTaskAdmin):
    form = GovernedPeriodicTaskForm

    def save_model(self, request, obj, form, change):
        before = PeriodicTask.objects.filter(pk=obj.pk).first() if change else None
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            fields = {name: pair for name, pair in _changes(before, obj, SCHEDULE_FIELDS).items()
                      if before is not None or pair[1] not in (None, "", "[]", "{}")}
            if before is None or fields:
                audit_schedule_change(request, obj, "updated" if before else "created", fields)

    def delete_model(self, request, obj):
        with transaction.atomic():
            audit_schedule_change(request, obj, "deleted")
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for task in queryset:
                audit_schedule_change(request, task, "deleted")
            super().delete_queryset(request, queryset)

    def _audited_switch(self, request, queryset, switch):
        """Enable, disable or toggle, with one audit entry per schedule whose `enabled` changed."""
        with transaction.atomic():
            # Locked without the changelist's outer joins (PostgreSQL cannot lock their nullable side).
            locked = PeriodicTask.objects.select_for_update().filter(pk__in=queryset.values("pk"))
            before = dict(locked.values_list("pk", "enabled"))
            switch()
            for task in PeriodicTask.objects.filter(pk__in=before):
                if task.enabled != before[task.pk]:
                    audit_schedule_change(request, task, "updated", {"enabled": [before[task.pk], task.enabled]})

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable_tasks(self, request, queryset):
        self._audited_switch(request, queryset, lambda: super(GovernedPeriodicTaskAdmin, self).enable_tasks(
            request, queryset))

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable_tasks(self, request, queryset):
        self._audited_switch(request, queryset, lambda: super(GovernedPeriodicTaskAdmin, self).disable_tasks(
            request, queryset))

    @admin.action(description="Toggle activity of selected tasks", permissions=["change"])
    def toggle_tasks(self, request, queryset):
        self._audited_switch(request, queryset, lambda: super(GovernedPeriodicTaskAdmin, self).toggle_tasks(
            request, queryset))

    @admin.action(description="Run selected tasks", permissions=["change"])
    def run_tasks(self, request, queryset):
        """Governance jobs are queued as the Run now button queues them; other tasks as beat would send them."""
        jobs = [t for t in queryset if t.task in RUNS_A_JOB]
        if jobs and not request.user.has_perm(RUN_PERMISSION):
            self.message_user(request, "Nothing was run: running a governance job needs the permission to run "
                                       "governance (governance.run_governance).", messages.ERROR)
            return
        for task in jobs:
            kwargs = json.loads(task.kwargs or "{}")
            errors = governance_kwargs_errors(task.task, json.loads(task.args or "[]"), kwargs)
            if errors:
                self.message_user(request, f"{task.name} not run: {' '.join(errors)}", messages.ERROR)
                continue
            queue_admin_run(self, request, RUNS_A_JOB[task.task], dry_run=kwargs.get("dry_run", False),
                            batch_size=kwargs.get("batch_size"))
        others = queryset.exclude(pk__in=[t.pk for t in jobs])
        if others.exists():
            super().run_tasks(request, others)


class AuditedCrontabScheduleAdmin(CrontabScheduleAdmin):
    """A crontab row is the schedule of every task that uses it: its changes are audited too."""

    def save_model(self, request, obj, form, change):
        before = CrontabSchedule.objects.filter(pk=obj.pk).first() if change else None
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            fields = _changes(before, obj, CRONTAB_FIELDS) if before else {}
            if fields:
                for task in PeriodicTask.objects.filter(crontab=obj):
                    audit_schedule_change(request, task, "crontab updated", fields)


def install():
    """Replace django-celery-beat's registrations with these (called from GovernanceConfig.ready)."""
    for model, model_admin in ((PeriodicTask, GovernedPeriodicTaskAdmin), (CrontabSchedule, AuditedCrontabScheduleAdmin)):
        if admin.site.is_registered(model):
            admin.site.unregister(model)
        admin.site.register(model, model_admin)

