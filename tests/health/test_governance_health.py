"""A missed night is caught: `governance_health` and /health/governance/ share one verdict.

Runs are real (the two job functions); time moves with time_machine, never with sleep.
"""

import json
from datetime import timedelta

import pytest
import time_machine

from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.runs import Job, Trigger, close_run, open_run, record_item
from checktick_app.governance.services import run_data_governance, run_progress_cleanup
from tests.domain.helpers import run_command
from tests.factories import UserFactory, closed_survey

pytestmark = pytest.mark.django_db


def both_jobs_succeed_at(at):
    with time_machine.travel(at, tick=False):
        run_data_governance(trigger=Trigger.BEAT, scheduled_for=at.date())
        run_progress_cleanup(trigger=Trigger.BEAT, scheduled_for=at.date())


def health_at(client, at):
    with time_machine.travel(at, tick=False):
        result = run_command("governance_health")
        response = client.get("/health/governance/")
    return result, response


def test_fresh_success_of_both_jobs_is_healthy(client, now):
    both_jobs_succeed_at(now)

    result, response = health_at(client, now + timedelta(hours=1))

    assert result.returncode == 0
    assert result.out.count("\n") == 1 and result.out.startswith("healthy: ")
    assert "data governance: last success run #" in result.out and "1.0 hours ago" in result.out
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["jobs"]["data_governance"]["last_run_status"] == "succeeded"
    assert body["jobs"]["progress_cleanup"]["healthy"] is True


def test_success_27_hours_ago_is_unhealthy_and_says_why(client, now):
    both_jobs_succeed_at(now)

    result, response = health_at(client, now + timedelta(hours=27))

    assert result.returncode == 1
    reason = str(result.error)
    assert "\n" not in reason
    assert reason.startswith("unhealthy: data governance: last success run #")
    assert "finished 27.0 hours ago, more than 26 (CHECKTICK_HEALTH_MAX_AGE_HOURS)" in reason
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert response.json()["summary"] == reason


def test_25_hours_is_still_within_the_default_26(client, now):
    both_jobs_succeed_at(now)

    result, response = health_at(client, now + timedelta(hours=25))

    assert result.returncode == 0 and response.status_code == 200


def test_max_age_follows_the_setting(client, now, settings):
    settings.CHECKTICK_HEALTH_MAX_AGE_HOURS = 48
    both_jobs_succeed_at(now)

    result, response = health_at(client, now + timedelta(hours=27))

    assert result.returncode == 0 and response.status_code == 200


def test_last_real_run_failed_is_unhealthy_even_right_after_a_success(client, now):
    both_jobs_succeed_at(now)
    with time_machine.travel(now + timedelta(hours=1), tick=False):
        run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
        record_item(run, "soft_delete", 42, "failed", "OperationalError: disk full")
        close_run(run, counts={})

    result, response = health_at(client, now + timedelta(hours=2))

    assert result.returncode == 1
    assert str(result.error) == (f"unhealthy: data governance: last run #{run.pk} failed at "
                                 f"{(now + timedelta(hours=1)):%Y-%m-%d %H:%M} UTC")
    assert response.status_code == 503
    assert response.json()["jobs"]["data_governance"]["last_run_status"] == "failed"
    assert response.json()["jobs"]["progress_cleanup"]["healthy"] is True


def test_abandoned_run_is_unhealthy(client, now, settings):
    both_jobs_succeed_at(now)
    with time_machine.travel(now + timedelta(hours=1), tick=False):
        open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND)
    # The next run (an hour after the stale period) finds it dead and marks it abandoned.
    later = now + timedelta(hours=1, minutes=settings.CHECKTICK_RUN_STALE_AFTER_MINUTES + 1)
    with time_machine.travel(later, tick=False):
        open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND, dry_run=True)

    result, _ = health_at(client, later)

    assert result.returncode == 1
    assert "progress cleanup: last run #" in str(result.error) and " abandoned at " in str(result.error)


def test_run_without_heartbeat_is_reported_before_anyone_abandons_it(client, now, settings):
    both_jobs_succeed_at(now)
    with time_machine.travel(now + timedelta(hours=1), tick=False):
        stuck = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=(now + timedelta(days=1)).date())

    result, _ = health_at(client, now + timedelta(hours=5))

    assert result.returncode == 1
    assert f"run #{stuck.pk} started" in str(result.error) and "no heartbeat" in str(result.error)


def test_never_ran_is_unhealthy(client):
    result, response = health_at(client, "2026-01-05T02:00:00Z")

    assert result.returncode == 1
    assert str(result.error) == ("unhealthy: data governance: has never completed a real (non-dry-run) run; "
                                 "progress cleanup: has never completed a real (non-dry-run) run")
    assert response.status_code == 503


def test_a_dry_run_is_not_a_success(client, now):
    with time_machine.travel(now, tick=False):
        run_data_governance(dry_run=True)
        run_progress_cleanup(dry_run=True)

    result, response = health_at(client, now + timedelta(minutes=5))

    assert result.returncode == 1 and "has never completed a real" in str(result.error)
    assert response.status_code == 503


def test_health_endpoint_shows_no_names_or_settings(client, now, settings):
    settings.GOVERNANCE_PING_URL = "https://hc-ping.example/secret-ping-key-{job}"
    operator = UserFactory(username="operator.alice", email="alice@nhs.example")
    closed_survey(now + timedelta(days=3), name="Confidential cancer audit")
    with time_machine.travel(now, tick=False):
        run_data_governance(trigger=Trigger.ADMIN, user=operator)
        run_progress_cleanup(trigger=Trigger.ADMIN, user=operator)

    body = health_at(client, now + timedelta(hours=1))[1].content.decode()

    for secret in ("operator.alice", "alice@", "Confidential cancer audit", "secret-ping-key", "example.org"):
        assert secret not in body
    assert json.loads(body)["status"] == "healthy"


def test_health_command_rejects_a_silly_max_age():
    result = run_command("governance_health", "--max-age-hours", "0")

    assert result.returncode == 2 and "--max-age-hours 0 is out of range" in str(result.error)


def test_live_endpoint_answers_without_the_database(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/health/live/")

    assert response.status_code == 200 and response.json() == {"status": "live"}


def test_health_endpoints_accept_only_get(client):
    assert client.post("/health/governance/").status_code == 405
    assert client.post("/health/live/").status_code == 405


def test_only_real_runs_reach_the_verdict_not_other_jobs_runs(now):
    """A recent progress cleanup never stands in for a missing data-governance run."""
    with time_machine.travel(now, tick=False):
        run_progress_cleanup(trigger=Trigger.COMMAND)
        result = run_command("governance_health")

    assert result.returncode == 1
    assert str(result.error) == "unhealthy: data governance: has never completed a real (non-dry-run) run"
    assert GovernanceRun.objects.count() == 1


def test_a_success_minutes_ago_is_said_in_minutes(client, now):
    both_jobs_succeed_at(now)

    result, _ = health_at(client, now + timedelta(minutes=12))

    assert "finished 12 minutes ago" in result.out
