"""/metrics: Prometheus samples computed from the run history at scrape time, for allowed clients only."""

from datetime import timedelta

import pytest
import time_machine
from prometheus_client.parser import text_string_to_metric_families

from checktick_app.governance.runs import Job, Trigger, close_run, open_run, record_item
from checktick_app.governance.services import run_data_governance, run_progress_cleanup
from tests.factories import closed_survey

pytestmark = pytest.mark.django_db

TOKEN = "test-metrics-token-0123456789"


def samples(response):
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    found = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def history(now):
    """Two real governance runs (one failing on an item), a dry run and a cleanup."""
    closed_survey(now - timedelta(hours=1), name="Due tonight")
    with time_machine.travel(now, tick=False):
        run_data_governance(trigger=Trigger.BEAT, scheduled_for=now.date())
    with time_machine.travel(now + timedelta(hours=1), tick=False):
        run_data_governance(dry_run=True)
        run_progress_cleanup()
    with time_machine.travel(now + timedelta(hours=2), tick=False) as clock:
        failed = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
        record_item(failed, "hard_delete", 99, "failed", "IntegrityError: boom")
        record_item(failed, "soft_delete", 98, "done")
        clock.shift(timedelta(seconds=42))
        close_run(failed, counts={})
    return now


def test_metrics_after_some_runs(client, history):
    now = history

    found = samples(client.get("/metrics"))

    runs = "checktick_governance_runs_total"
    assert value(found, runs, job="data_governance", status="succeeded", dry_run="false") == 1
    assert value(found, runs, job="data_governance", status="succeeded", dry_run="true") == 1
    assert value(found, runs, job="data_governance", status="failed", dry_run="false") == 1
    assert value(found, runs, job="progress_cleanup", status="succeeded", dry_run="false") == 1
    assert value(found, runs, job="progress_cleanup", status="abandoned", dry_run="false") == 0
    assert value(found, "checktick_governance_runs_in_progress", job="data_governance") == 0
    items = "checktick_governance_run_items_total"
    assert value(found, items, job="data_governance", kind="hard_delete", outcome="failed") == 1
    # The beat run's soft deletion and the failed run's; the preview's would-be deletion is not counted.
    assert value(found, items, job="data_governance", kind="soft_delete", outcome="done") == 2
    last_success = "checktick_governance_last_success_timestamp_seconds"
    assert value(found, last_success, job="data_governance") == now.timestamp()
    assert value(found, last_success, job="progress_cleanup") == (now + timedelta(hours=1)).timestamp()
    assert value(found, "checktick_governance_last_run_duration_seconds", job="data_governance") == 42
    assert value(found, "checktick_governance_last_run_succeeded", job="data_governance") == 0
    assert value(found, "checktick_governance_last_run_succeeded", job="progress_cleanup") == 1
    assert value(found, "checktick_governance_run_resumes_total", job="data_governance") == 0


def test_runs_the_watchdog_resumed_are_counted_so_lost_messages_can_alert(client):
    from checktick_app.governance.models import GovernanceRun

    resumed = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, on_celery=True)
    GovernanceRun.objects.filter(pk=resumed.pk).update(resumes=2)

    found = samples(client.get("/metrics"))

    assert value(found, "checktick_governance_run_resumes_total", job="data_governance") == 2
    assert value(found, "checktick_governance_run_resumes_total", job="progress_cleanup") == 0


def test_never_run_jobs_report_zero_last_success_so_an_alert_fires(client):
    found = samples(client.get("/metrics"))

    assert value(found, "checktick_governance_last_success_timestamp_seconds", job="data_governance") == 0
    assert value(found, "checktick_governance_runs_total", job="data_governance", status="succeeded",
                 dry_run="false") == 0


def test_a_running_run_is_counted_in_progress(client):
    open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND)

    found = samples(client.get("/metrics"))

    assert value(found, "checktick_governance_runs_in_progress", job="progress_cleanup") == 1


def test_scrape_cost_does_not_grow_with_the_history(client, history, django_assert_num_queries):
    with django_assert_num_queries(4):
        client.get("/metrics")
    with time_machine.travel(history + timedelta(days=1)):
        for _ in range(5):
            run_progress_cleanup()
    with django_assert_num_queries(4):
        client.get("/metrics")


def test_with_a_token_set_a_scrape_without_it_is_refused(client, settings, history):
    settings.METRICS_TOKEN = TOKEN

    refused = client.get("/metrics")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token-at-all"})
    basic = client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    allowed = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, REMOTE_ADDR="203.0.113.9")

    assert refused.status_code == wrong.status_code == basic.status_code == 401
    assert refused["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"checktick_governance" not in refused.content
    assert value(samples(allowed), "checktick_governance_runs_total", job="progress_cleanup",
                 status="succeeded", dry_run="false") == 1


def test_without_a_token_only_loopback_clients_may_scrape(client, settings):
    settings.METRICS_TOKEN = ""

    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.5").status_code == 403
    with_header = client.get("/metrics", REMOTE_ADDR="10.0.0.5", headers={"Authorization": "Bearer anything"})
    assert with_header.status_code == 403


def test_metrics_carry_no_survey_names(client, history):
    body = client.get("/metrics").content.decode()

    assert "Due tonight" not in body
