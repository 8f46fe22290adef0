from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command

from checktick_app.governance.models import GovernanceRun
from checktick_app.surveys.models import Survey
from tests.factories import active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db


def run_command(name, *args):
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_nightly_run_warns_deletes_and_skips_held_surveys_through_a_real_smtp_server(smtp_server, now):
    warned = closed_survey(now + timedelta(days=20), name="Hand hygiene")
    due = closed_survey(now - timedelta(seconds=1))
    expired = soft_deleted_survey(now - timedelta(days=30))
    held = closed_survey(now - timedelta(days=3))
    active_hold(held)

    with time_machine.travel(now, tick=False):
        output = run_command("process_data_governance")

    assert "Sent 1 deletion warnings:" in output
    assert "  - 30-day warnings: 1" in output
    assert "Soft deleted: 1 surveys" in output
    assert "Hard deleted: 1 surveys" in output
    assert "Skipped (legal hold): 1 surveys" in output
    assert [m["Subject"] for m in smtp_server.to(warned.owner.email)][0].startswith('[CheckTick] "Hand hygiene"')
    assert smtp_server.to(due.owner.email), "the soft-deletion notice reached the owner"
    assert not Survey.objects.filter(pk=expired.pk).exists()
    assert Survey.objects.get(pk=held.pk).deleted_at is None
    run = GovernanceRun.objects.get()
    assert run.status == GovernanceRun.Status.SUCCEEDED
    assert run.counts["soft_deleted"] == 1 and run.counts["hard_deleted"] == 1


def test_running_the_command_twice_sends_and_deletes_nothing_the_second_time(smtp_server, now):
    closed_survey(now + timedelta(days=6))
    closed_survey(now - timedelta(hours=1))
    with time_machine.travel(now, tick=False):
        run_command("process_data_governance")
        first = len(smtp_server.messages)
        output = run_command("process_data_governance")
    assert len(smtp_server.messages) == first == 2
    assert "Sent 0 deletion warnings:" in output
    assert "Soft deleted: 0 surveys" in output
