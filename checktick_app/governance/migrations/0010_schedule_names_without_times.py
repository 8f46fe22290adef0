"""The periodic tasks' names say what runs, not when: an edited time made "(nightly, 02:00 UTC)" false.

Each job also gets a schedule row of its own (CrontabSchedule for the nightly jobs, IntervalSchedule
for the watchdog): a row shared by two tasks moves both when one is edited in the Crontabs admin.
An operator's own name (anything but the name a migration gave) is left alone.
"""

from django.db import migrations
from django.utils import timezone

RENAMES = {
    "checktick_app.governance.tasks.run_data_governance": ("Data governance (nightly, 02:00 UTC)", "Data governance"),
    "checktick_app.governance.tasks.cleanup_survey_progress": ("Progress cleanup (nightly, 03:00 UTC)",
                                                               "Progress cleanup"),
    "checktick_app.governance.tasks.watch_runs": ("Governance watchdog (every 5 minutes)", "Governance watchdog"),
}
CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year", "timezone")


def own_schedules_and_timeless_names(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    for task, (old, new) in RENAMES.items():
        for periodic in PeriodicTask.objects.filter(task=task):
            if periodic.name == old and not PeriodicTask.objects.filter(name=new).exists():
                periodic.name = new
            give_own_schedule(periodic, PeriodicTask)
            periodic.save()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def give_own_schedule(periodic, PeriodicTask):
    """Point `periodic` at a copy of its schedule row if any other task uses that row too."""
    for field in ("crontab", "interval"):
        schedule = getattr(periodic, field)
        if schedule is None or not PeriodicTask.objects.filter(**{field: schedule}).exclude(pk=periodic.pk).exists():
            continue
        schedule.pk = None  # saved as a new row with the same values
        schedule._state.adding = True
        schedule.save()
        setattr(periodic, field, schedule)


def old_names_back(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for task, (old, new) in RENAMES.items():
        PeriodicTask.objects.filter(task=task, name=new).update(name=old)


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0009_refused_runs"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(own_schedules_and_timeless_names, old_names_back)]
