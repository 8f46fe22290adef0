"""Beat: the nightly schedule lives in the database, and an edit reaches a running beat.

The beat test runs `celery -A celery_app beat` as a process of its own with the DatabaseScheduler,
reading the test database itself (on SQLite a file, as in every deployment); the test edits the
schedule in its own process.
"""

import base64
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django_celery_beat.models import PeriodicTask

from tests.celery.conftest import TEST_REDIS_URL
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))

SCHEDULES = importlib.import_module("checktick_app.governance.migrations.0004_beat_schedules")
WATCHDOG = importlib.import_module("checktick_app.governance.migrations.0006_watchdog_schedule")


@pytest.mark.django_db
def test_migration_schedules_both_jobs_nightly_in_utc_with_messages_that_expire_within_a_day():
    assert ("governance", "0004_beat_schedules") in MigrationRecorder(connection).applied_migrations()
    # Transactional tests flush every table, the beat rows included: run the migration's step again
    # (it is idempotent: a second run leaves the same two jobs).
    SCHEDULES.create_schedules(django_apps, None)
    SCHEDULES.create_schedules(django_apps, None)
    WATCHDOG.create_schedule(django_apps, None)
    WATCHDOG.create_schedule(django_apps, None)
    jobs = {t.task.rsplit(".", 1)[1]: t for t in PeriodicTask.objects.select_related("crontab", "interval")}
    assert len(jobs) == PeriodicTask.objects.count() == 3

    governance, cleanup = jobs["run_data_governance"], jobs["cleanup_survey_progress"]
    for task, hour in ((governance, "2"), (cleanup, "3")):
        c = task.crontab
        assert (c.minute, c.hour, c.day_of_week, c.day_of_month, c.month_of_year) == ("0", hour, "*", "*", "*")
        assert str(c.timezone) == "UTC"
        assert task.enabled and task.interval is None
        assert 0 < task.expire_seconds < 24 * 3600
        assert json.loads(task.kwargs) == {} and task.queue in (None, "")  # queues come from CELERY_TASK_ROUTES


@pytest.mark.django_db
def test_migration_schedules_the_watchdog_every_five_minutes_with_messages_that_expire_before_the_next():
    WATCHDOG.create_schedule(django_apps, None)
    watchdog = PeriodicTask.objects.select_related("interval").get(task="checktick_app.governance.tasks.watch_runs")
    assert (watchdog.interval.every, watchdog.interval.period) == (5, "minutes")
    assert watchdog.enabled and watchdog.crontab is None
    assert 0 < watchdog.expire_seconds <= 5 * 60


PROBE = "checktick_app.governance.tasks.cleanup_survey_progress"
# A queue of this test's own (no worker reads it, no other test run writes it), read straight from Redis.
PROBE_QUEUE = f"beat-probe-{os.getpid()}"
SETUP = f"""
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks
PeriodicTask.objects.update(enabled=False)  # tonight's 02:00 and 03:00 must not fire during the test
PeriodicTasks.update_changed()
hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period="hours")
PeriodicTask.objects.update_or_create(name="beat probe", defaults=dict(
    task="{PROBE}", interval=hourly, kwargs='{{"dry_run": true}}', queue="{PROBE_QUEUE}", enabled=True))
"""
# What an operator does in the admin: pick another schedule for the job and save.
EDIT = """
from django_celery_beat.models import IntervalSchedule, PeriodicTask
every_two_seconds, _ = IntervalSchedule.objects.get_or_create(every=2, period="seconds")
probe = PeriodicTask.objects.get(name="beat probe")
probe.interval = every_two_seconds
probe.save()
"""


class BeatDatabase:
    """The test database, which the beat process reads too (on SQLite the test database is a file)."""

    def __init__(self):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_SETTINGS"))}
        self.env.update(REDIS_URL=TEST_REDIS_URL, CELERY_BROKER_URL=TEST_REDIS_URL,
                        CELERY_RESULT_BACKEND=TEST_REDIS_URL, PYTHONUNBUFFERED="1")
        s = connection.settings_dict
        if connection.vendor == "postgresql":
            auth = s["USER"] + (f":{s['PASSWORD']}" if s["PASSWORD"] else "")
            self.env["DATABASE_URL"] = f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
        else:
            self.env["DATABASE_URL"] = f"sqlite:///{s['NAME']}"

    def run(self, code):
        exec(code, {})  # in this process, on the database the beat process reads


def queued_tasks(client, queue=PROBE_QUEUE):
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        found.append((message["headers"]["task"], kwargs))
    return found


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
def test_beat_sends_the_task_on_a_schedule_edited_while_it_runs(celery_on_test_redis, tmp_path):
    redis_db = celery_on_test_redis  # the beat process writes without this test process's key prefix
    redis_db.delete(PROBE_QUEUE)
    db = BeatDatabase()
    db.run(SETUP)
    log = tmp_path / "beat.log"
    with open(log, "w") as out:
        beat = subprocess.Popen(
            [CELERY, "-A", "celery_app", "beat", "--loglevel", "DEBUG", "-S",
             "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1", "--pidfile=",
             "--schedule", str(tmp_path / "sched")],
            cwd=ROOT, env=db.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Given a running beat that has read its schedule (the probe: hourly, so not due for an hour)...
        wait_until(lambda: "beat: Waking up" in log.read_text() or beat.poll() is not None, 30,
                   what="beat to read its schedule")
        assert beat.poll() is None, log.read_text()
        assert "beat probe" in log.read_text()
        assert queued_tasks(redis_db) == []

        # ...when the schedule is edited in the database, with no restart...
        db.run(EDIT)
        arrivals = []

        def two_sent():
            count = len(queued_tasks(redis_db))
            if count > len(arrivals):
                arrivals.extend([time.monotonic()] * (count - len(arrivals)))
            return count >= 2

        wait_until(two_sent, 30, what="beat to send the probe on its new schedule (every 2 s)")

        # ...beat sends the task on the new schedule.
        assert queued_tasks(redis_db)[:2] == [(PROBE, {"dry_run": True})] * 2
        assert arrivals[1] - arrivals[0] > 1.0, "two sends of an every-2-seconds schedule, not a burst"
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        try:
            beat.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(beat.pid, signal.SIGKILL)
            beat.wait(5)
        redis_db.delete(*redis_db.keys(f"*{PROBE_QUEUE}*") or [PROBE_QUEUE])


OWN_SCHEDULES = importlib.import_module("checktick_app.governance.migrations.0010_schedule_names_without_times")


@pytest.mark.django_db
def test_schedule_names_carry_no_time_and_editing_one_jobs_time_never_moves_another():
    from django_celery_beat.models import CrontabSchedule

    SCHEDULES.create_schedules(django_apps, None)
    WATCHDOG.create_schedule(django_apps, None)
    governance = PeriodicTask.objects.get(task="checktick_app.governance.tasks.run_data_governance")
    cleanup = PeriodicTask.objects.get(task="checktick_app.governance.tasks.cleanup_survey_progress")
    cleanup.crontab = governance.crontab  # an operator picked the same crontab row for both, say
    cleanup.save()

    OWN_SCHEDULES.own_schedules_and_timeless_names(django_apps, None)

    names = sorted(PeriodicTask.objects.values_list("name", flat=True))
    assert names == ["Data governance", "Governance watchdog", "Progress cleanup"]
    governance.refresh_from_db()
    cleanup.refresh_from_db()
    assert governance.crontab_id != cleanup.crontab_id
    assert (cleanup.crontab.minute, cleanup.crontab.hour) == ("0", "2")  # the same time, in a row of its own
    CrontabSchedule.objects.filter(pk=governance.crontab_id).update(hour="4")  # edited in the Crontabs admin
    cleanup.refresh_from_db()
    assert cleanup.crontab.hour == "2"
