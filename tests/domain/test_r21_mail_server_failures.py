"""Issue 13 point 1 (SPEC R21): a failure of the mail server or of our mail settings is not a recipient's
permanent failure. The ledger rows stay pending, the run stops sending after a few, fails with one clear
error (never the password), and the next run, with the settings fixed, sends every warning once."""

from datetime import timedelta

import pytest
import time_machine

from checktick_app.governance import engine
from checktick_app.governance.health import governance_health
from checktick_app.governance.models import DeletionWarning, GovernanceRun, RunItem
from checktick_app.governance.services import run_data_governance
from tests.conftest import SMTP_LOGIN
from tests.factories import UserFactory, closed_survey

pytestmark = pytest.mark.django_db
Status = DeletionWarning.Status


def five_surveys_due_for_a_warning(now):
    return [closed_survey(now + timedelta(days=7), owner=UserFactory(email=f"owner{n}@example.org"))
            for n in range(5)]


def test_a_wrong_smtp_password_leaves_every_warning_pending_stops_after_a_few_and_the_next_run_sends_them(
        smtp_server_with_login, settings, now):
    surveys = five_surveys_due_for_a_warning(now)
    settings.EMAIL_HOST_PASSWORD = "a-wrong-password"

    with time_machine.travel(now, tick=False):
        first = run_data_governance(now=now)

    run = GovernanceRun.objects.get(pk=first.run_id)
    assert first.status == GovernanceRun.Status.FAILED and first.emails_sent == 0
    assert smtp_server_with_login.logins == engine.MAIL_SERVER_STOP  # stopped after a few, not 5 x 6 tries
    assert "refused every email of this run" in run.error and "535" in run.error
    assert "a-wrong-password" not in run.error and all("a-wrong-password" not in e for _, _, e in first.failures)
    assert set(DeletionWarning.objects.values_list("status", flat=True)) == {Status.PENDING}
    assert RunItem.objects.filter(run=run, reason=RunItem.MAIL_SERVER).count() == 5
    assert not governance_health(now=now + timedelta(minutes=1)).healthy

    settings.EMAIL_HOST_PASSWORD = SMTP_LOGIN[1]  # the operator fixes the password
    with time_machine.travel(now + timedelta(days=1), tick=False):
        second = run_data_governance(now=now + timedelta(days=1))

    assert second.status == GovernanceRun.Status.SUCCEEDED and second.emails_sent == 5
    assert sorted(smtp_server_with_login.recipients) == sorted(s.owner.email for s in surveys)  # each once
    assert set(DeletionWarning.objects.values_list("status", flat=True)) == {Status.SENT}


def test_a_sender_the_server_does_not_permit_is_not_the_recipients_fault(smtp_server, now):
    five_surveys_due_for_a_warning(now)
    smtp_server.refuse_sender = "550 5.7.1 Sender not permitted"

    with time_machine.travel(now, tick=False):
        report = run_data_governance(now=now)

    assert report.status == GovernanceRun.Status.FAILED and report.emails_sent == 0
    assert smtp_server.senders == engine.MAIL_SERVER_STOP
    assert set(DeletionWarning.objects.values_list("status", flat=True)) == {Status.PENDING}
    assert "Sender not permitted" in GovernanceRun.objects.get(pk=report.run_id).error


def test_one_recipient_refused_for_good_fails_only_its_row_and_the_others_are_sent(smtp_server, now):
    surveys = five_surveys_due_for_a_warning(now)
    smtp_server.refuse["owner2@example.org"] = "550 5.1.1 No such user"

    with time_machine.travel(now, tick=False):
        report = run_data_governance(now=now)

    assert (report.emails_sent, report.emails_failed) == (4, 1)
    rows = dict(DeletionWarning.objects.values_list("recipient_email", "status"))
    assert rows.pop("owner2@example.org") == Status.FAILED and set(rows.values()) == {Status.SENT}
    assert not GovernanceRun.objects.get(pk=report.run_id).error  # a recipient's failure, not the server's
    assert len(smtp_server.messages) == 4 and surveys


def test_an_address_no_message_can_carry_fails_its_row_once_and_not_every_night(smtp_server, now):
    survey = closed_survey(now + timedelta(days=7), owner=UserFactory(email="evil@example.org\nBcc: x@example.org"))

    with time_machine.travel(now, tick=False):
        first = run_data_governance(now=now)
    with time_machine.travel(now + timedelta(days=1), tick=False):
        second = run_data_governance(now=now + timedelta(days=1))

    row = DeletionWarning.objects.get(survey_id=survey.pk)
    assert row.status == Status.FAILED and "invalid address" in row.last_error.lower()
    assert (first.emails_failed, second.emails_failed, second.status) == (1, 0, GovernanceRun.Status.SUCCEEDED)
    assert smtp_server.messages == []
