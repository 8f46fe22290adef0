"""The two nightly jobs in django-celery-beat's database schedule (README.md, "Running with Celery").

Beat runs with the DatabaseScheduler, so an edit of these rows in the admin reaches a running beat
within seconds. Each message expires after EXPIRE_SECONDS (less than a day): a message that waited
longer (every worker down) is dropped rather than run late, and the next night catches up, since every
rule selects whatever is due by then.
"""

from django.db import migrations
from django.utils import timezone

EXPIRE_SECONDS = 12 * 3600
JOBS = [
    {
        "name": "Data governance",  # no time in the name: an edit would make it false (0010)
        "task": "checktick_app.governance.tasks.run_data_governance",
        "hour": "2",
        "description": "Deletion warnings, soft and hard deletions, legal holds reported (SPEC R4-R14). "
                       "Opens tonight's run row; a second dispatch the same day is refused.",
    },
    {
        "name": "Progress cleanup",
        "task": "checktick_app.governance.tasks.cleanup_survey_progress",
        "hour": "3",
        "description": "Deletes expired survey drafts in time-bounded batches (SPEC R15-R16).",
    },
]


def create_schedules(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    for job in JOBS:
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute="0", hour=job["hour"], day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC")
        PeriodicTask.objects.update_or_create(name=job["name"], defaults={
            "task": job["task"], "crontab": crontab, "interval": None, "args": "[]", "kwargs": "{}",
            "expire_seconds": EXPIRE_SECONDS, "enabled": True, "description": job["description"],
        })
    # Historical models send no signals: tell a running beat that its schedule changed.
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_schedules(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.filter(name__in=[job["name"] for job in JOBS]).delete()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0003_run_details"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]
    operations = [migrations.RunPython(create_schedules, remove_schedules)]
