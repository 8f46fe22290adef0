"""A refused run is a row in the run history (status "refused", who asked, the run it deferred to),
counted in /metrics, and never mistaken for the night's run by the health check."""

from datetime import timedelta

import pytest
import time_machine
from prometheus_client.parser import text_string_to_metric_families

from checktick_app.governance.health import governance_health
from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.runs import Job, RunRefused, Trigger, close_run, open_run
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
RunStatus = GovernanceRun.Status


def test_a_second_beat_dispatch_the_same_night_is_recorded_as_refused_and_deferred_to_the_nights_run(now):
    with time_machine.travel(now, tick=False):
        tonight = close_run(open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=now.date()), counts={})
    with time_machine.travel(now + timedelta(hours=3), tick=False):
        with pytest.raises(RunRefused) as refused:
            open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=now.date(), on_celery=True)
        with pytest.raises(RunRefused):  # a third one is recorded too: refusals never collide
            open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=now.date(), on_celery=True)

    refusal = refused.value.refusal
    assert refusal.status == RunStatus.REFUSED and refusal.deferred_to == tonight
    assert (refusal.trigger, refusal.scheduled_for, refusal.dry_run) == (Trigger.BEAT, now.date(), False)
    assert refusal.finished_at == refusal.started_at == now + timedelta(hours=3)
    assert f"already happened: run #{tonight.pk}" in refusal.error
    assert GovernanceRun.objects.filter(status=RunStatus.REFUSED, deferred_to=tonight).count() == 2


def test_a_run_asked_for_while_one_is_in_progress_records_who_asked(now):
    running = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND)
    dpo = UserFactory(username="dpo")

    with pytest.raises(RunRefused) as refused:
        open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.ADMIN, user=dpo, dry_run=True)

    refusal = GovernanceRun.objects.get(status=RunStatus.REFUSED)
    assert refusal == refused.value.refusal
    assert (refusal.triggered_by, refusal.triggered_by_id, refusal.trigger) == ("dpo", dpo.pk, Trigger.ADMIN)
    assert refusal.deferred_to == running and "is still in progress" in refusal.error
    running.refresh_from_db()
    assert running.status == RunStatus.RUNNING  # the lock holder is untouched


def test_refused_runs_are_counted_in_metrics_but_are_never_the_last_run(client, now):
    with time_machine.travel(now, tick=False):
        close_run(open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=now.date()), counts={})
    with time_machine.travel(now + timedelta(hours=1), tick=False):
        with pytest.raises(RunRefused):
            open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=now.date())

    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(client.get("/metrics").content.decode())
             for s in family.samples}

    refused = (("dry_run", "false"), ("job", "data_governance"), ("status", "refused"))
    assert found[("checktick_governance_runs_total", refused)] == 1
    assert found[("checktick_governance_last_run_succeeded", (("job", "data_governance"),))] == 1
    with time_machine.travel(now + timedelta(hours=2), tick=False):
        health = governance_health()
    assert [job.healthy for job in health.jobs if job.job == Job.DATA_GOVERNANCE] == [True]
