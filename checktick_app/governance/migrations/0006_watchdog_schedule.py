"""The watchdog in django-celery-beat's database schedule: every WATCH_EVERY_MINUTES, tasks.watch_runs
abandons dead runs, finalises finished ones and resumes stalled ones (dispatch.watch_runs). A message
older than its interval is dropped: the next one does the same work.
"""

from django.db import migrations
from django.utils import timezone

NAME = "Governance watchdog"  # no interval in the name: an edit would make it false (0010)
TASK = "checktick_app.governance.tasks.watch_runs"
WATCH_EVERY_MINUTES = 5


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    every, _ = IntervalSchedule.objects.get_or_create(every=WATCH_EVERY_MINUTES, period="minutes")
    PeriodicTask.objects.update_or_create(name=NAME, defaults={
        "task": TASK, "interval": every, "crontab": None, "args": "[]", "kwargs": "{}",
        "expire_seconds": WATCH_EVERY_MINUTES * 60, "enabled": True,
        "description": "Releases runs whose process died, closes runs whose outcomes all landed, and re-sends "
                       "the items of a run waiting for messages that are gone (README.md, 'Running with Celery').",
    })
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def remove_schedule(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTask.objects.filter(name=NAME).delete()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


class Migration(migrations.Migration):
    dependencies = [("governance", "0005_run_resume_claim_token")]
    operations = [migrations.RunPython(create_schedule, remove_schedule)]
