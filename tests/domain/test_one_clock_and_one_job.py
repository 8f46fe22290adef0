"""Issue 13, points 3 and 4: a run reads one clock, the database server's, and refuses a host whose clock is
far from it; a run id of one job handed to the other job's task or service does nothing and records nothing."""

from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from checktick_app.governance import dispatch, engine, services
from checktick_app.governance.health import governance_health
from checktick_app.governance.models import GovernanceRun, RunItem
from checktick_app.governance.runs import Job, Trigger, open_run
from checktick_app.surveys.models import Survey, SurveyProgress
from tests.domain.helpers import run_command
from tests.factories import SurveyFactory, closed_survey, draft

pytestmark = pytest.mark.django_db
on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql",
                                   reason="SQLite's clock is this host's clock: there is no second clock to differ")


@on_postgresql
def test_a_host_whose_clock_runs_30_days_fast_refuses_to_run_and_deletes_nothing(settings, smtp_server):
    settings.CHECKTICK_CLOCK = "database"
    real_now = timezone.now()
    due_in_25_days = closed_survey(real_now + timedelta(days=25))

    with time_machine.travel(real_now + timedelta(days=30)):
        result = run_command("process_data_governance")

    assert result.returncode == 2
    assert "CHECKTICK_MAX_CLOCK_SKEW_SECONDS" in str(result.error) and len(str(result.error).splitlines()) == 1
    assert Survey.objects.get(pk=due_in_25_days.pk).deleted_at is None
    run = GovernanceRun.objects.get()
    assert (run.status, run.scheduled_for) == (GovernanceRun.Status.FAILED, None)
    assert "clock" in run.error and not RunItem.objects.exists()
    assert not governance_health(now=real_now).healthy


@on_postgresql
def test_within_the_allowed_skew_a_run_takes_its_time_from_the_database(settings, smtp_server):
    settings.CHECKTICK_CLOCK = "database"
    real_now = timezone.now()

    with time_machine.travel(real_now + timedelta(seconds=120), tick=False):
        report = run_command("process_data_governance")

    assert report.returncode == 0, report.error
    run = GovernanceRun.objects.get()
    assert abs((run.as_of - real_now).total_seconds()) < 60  # the database's clock, not the host's +120 s


def test_a_governance_run_id_given_to_the_cleanup_or_a_cleanup_run_id_to_the_governance_run_does_nothing(now):
    survey = SurveyFactory()
    draft(survey, now - timedelta(days=40))
    closed_survey(now - timedelta(days=1))
    with time_machine.travel(now, tick=False):
        cleanup = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.ADMIN, on_celery=True)
        # The other job's runner handed this run: refused, nothing recorded, the run left as it was.
        assert dispatch.plan_and_send(cleanup.pk) == 0
        cleanup.refresh_from_db()
        assert (cleanup.status, cleanup.counts, cleanup.planned_at) == (GovernanceRun.Status.RUNNING, {}, None)
        assert not RunItem.objects.exists() and Survey.objects.filter(deleted_at__isnull=False).count() == 0
        cleanup.delete()

        governance = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, on_celery=True)
        assert services.run_cleanup_slice(governance.pk, time_budget=0) is True
        governance.refresh_from_db()
        assert (governance.status, governance.counts) == (GovernanceRun.Status.RUNNING, {})
        assert SurveyProgress.objects.count() == 1 and not RunItem.objects.exists()
        # And the engine's finisher never closes a run of the other job.
        other = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.ADMIN, on_celery=True)
        GovernanceRun.objects.filter(pk=other.pk).update(planned_at=now)
        assert engine.finish_if_done(other.pk) is None
        other.refresh_from_db()
        assert other.status == GovernanceRun.Status.RUNNING
