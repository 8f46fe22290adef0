"""The Celery configuration, as the app (celery_app.py) reads it from settings.py's "# --- Celery ---"."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from celery_app import app
from checktick_app.governance import tasks  # noqa: F401 - importing tasks registers them

ROOT = Path(__file__).resolve().parents[2]
TASKS = {name: app.tasks[f"checktick_app.governance.tasks.{name}"] for name in (
    "run_data_governance", "cleanup_survey_progress", "execute_deletion_item", "execute_email_item", "watch_runs")}


def test_messages_are_json_only_times_utc_acks_late_and_one_message_at_a_time():
    c = app.conf
    assert (c.accept_content, c.task_serializer, c.result_serializer, c.result_accept_content) == (
        ["json"], "json", "json", ["json"])
    assert (c.timezone, c.enable_utc) == ("UTC", True)
    assert (c.task_acks_late, c.task_reject_on_worker_lost, c.worker_prefetch_multiplier) == (True, True, 1)
    assert c.beat_scheduler == "django_celery_beat.schedulers:DatabaseScheduler"
    assert (c.worker_send_task_events, c.task_send_sent_event) == (True, True)  # Flower sees every task
    assert c.worker_soft_shutdown_timeout > 0


@pytest.mark.parametrize("name, queue", [
    ("run_data_governance", "governance"), ("cleanup_survey_progress", "governance"),
    ("execute_deletion_item", "deletion"), ("execute_email_item", "email"), ("watch_runs", "governance"),
])
def test_routes_send_orchestrators_to_governance_deletions_to_deletion_and_emails_to_email(name, queue):
    assert app.amqp.router.route({}, TASKS[name].name)["queue"].name == queue
    assert getattr(TASKS[name], "queue", None) is None  # routed by the task_routes setting, not a task attribute


def test_every_task_has_a_soft_time_limit_below_its_hard_limit():
    for name, task in TASKS.items():
        assert 0 < task.soft_time_limit < task.time_limit, name


def test_redis_visibility_timeout_outlasts_the_longest_task_plus_the_longest_retry_delay_in_every_place():
    from django.conf import settings

    longest = max(t.time_limit for t in TASKS.values()) + settings.LONGEST_RETRY_DELAY_SECONDS
    timeouts = [app.conf.broker_transport_options["visibility_timeout"],
                app.conf.result_backend_transport_options["visibility_timeout"], settings.VISIBILITY_TIMEOUT_SECONDS]
    assert len(set(timeouts)) == 1 and timeouts[0] > longest


def test_no_setting_invents_a_celery_name():
    """Every CELERY_* setting is one Celery reads: a made-up name would reach Celery's config unread."""
    from celery.app.defaults import flatten, NAMESPACES
    from django.conf import settings

    known = {key.upper() for key, _ in flatten(NAMESPACES)}
    # Read by Celery's Django fixup rather than declared in its defaults (how often it closes connections).
    import inspect

    from celery.fixups import django as django_fixup

    assert "'CELERY_DB_REUSE_MAX'" in inspect.getsource(django_fixup)
    known.add("DB_REUSE_MAX")
    ours = {name[len("CELERY_"):] for name in dir(settings) if name.startswith("CELERY_")}
    assert ours - known == set()


def settings_in_a_fresh_process(**env):
    """Celery's view of the broker and result backend for a given environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "REDIS_URL", "DJANGO_SETTINGS"))}
    clean.update(env)
    code = ("import json, django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'checktick_app.settings');"
            "django.setup(); from celery_app import app;"
            "print(json.dumps([app.conf.broker_url, app.conf.result_backend]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_broker_and_results_come_from_REDIS_URL_and_fall_back_to_the_local_redis_when_unset():
    assert settings_in_a_fresh_process(REDIS_URL="redis://cache.internal:6380/3") == [
        "redis://cache.internal:6380/3"] * 2
    assert settings_in_a_fresh_process() == ["redis://127.0.0.1:6379/0"] * 2


def test_workers_wait_out_a_redis_restart_when_they_publish_but_run_now_reports_a_dead_redis_at_once():
    from django.conf import settings

    from celery_app import app
    from checktick_app.governance import dispatch

    def longest_wait(policy):
        return sum(min(policy["interval_start"] + n * policy["interval_step"], policy["interval_max"])
                   for n in range(policy["max_retries"]))

    # A soft deletion publishes its notices mid-task: lost with a Redis restart, its run waited for them.
    assert app.conf.task_publish_retry_policy == settings.CELERY_TASK_PUBLISH_RETRY_POLICY
    assert 30 <= longest_wait(settings.CELERY_TASK_PUBLISH_RETRY_POLICY) <= 90
    assert longest_wait(dispatch.QUICK_PUBLISH) < 2


def test_no_result_backend_write_stands_between_a_delivered_task_and_its_run():
    from celery_app import app

    # With track_started, a STARTED write to Redis precedes the task body; a Redis blip there made the
    # worker drop the task unrun (the persistent-Redis trial, 1 of 20 repetitions).
    assert app.conf.task_track_started is False


def test_a_worker_that_loses_redis_lets_its_running_tasks_finish_instead_of_acking_them_unfinished():
    from celery_app import app

    # True terminated tasks in flight and, with Redis gone, acked them unfinished: their run waited
    # three hours for outcomes that never came (the Redis trials found it).
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False


@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_its_database_connection_between_tasks_and_drops_one_the_database_lost():
    """Celery's Django fixup would close it around every task; tasks.py applies Django's request rule instead."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite connections are not kept (CONN_MAX_AGE 0): each task opens the file again")
    connection.ensure_connection()
    kept = connection.connection
    tasks._recycle_database_connections()  # after one task
    tasks._recycle_database_connections()  # before the next
    assert connection.connection is kept
    assert app.conf.get("CELERY_DB_REUSE_MAX") >= 100  # the fixup's own closing, rare

    with connection.cursor() as cursor:  # the server drops the connection (a restart, a failover)
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    import psycopg

    settings = connection.settings_dict
    with psycopg.connect(host=settings["HOST"] or "127.0.0.1", port=settings["PORT"] or 5432,
                         user=settings["USER"] or "postgres", dbname="postgres", autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    connection.errors_occurred = True  # as Django marks it when a query fails on the dead connection
    tasks._recycle_database_connections()
    assert connection.connection is None  # the next task connects afresh
