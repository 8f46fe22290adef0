"""One SMTP session carries many emails (an inline run's, a worker process's), and a session the
server dropped is opened again rather than failing the email."""

from datetime import timedelta

import pytest
import time_machine
from aiosmtpd.controller import Controller

from checktick_app.governance.emails import SendOutcome, SmtpSession, send_warning_email
from checktick_app.governance.models import DeletionWarning
from checktick_app.governance.services import run_data_governance
from tests.factories import UserFactory, closed_survey

pytestmark = pytest.mark.django_db


def test_an_inline_run_sends_all_its_emails_over_one_smtp_session(smtp_server, now):
    for n in range(4):
        closed_survey(now + timedelta(days=7), owner=UserFactory(email=f"owner{n}@example.org"))
    for n in range(2):
        closed_survey(now - timedelta(hours=1), owner=UserFactory(email=f"gone{n}@example.org"))

    report = run_data_governance(now=now)

    assert report.emails_sent == 4 and report.notices_sent == 2
    assert len(smtp_server.messages) == 6
    assert len(smtp_server.sessions) == 1


def pending_warning(now, email):
    survey = closed_survey(now + timedelta(days=7), owner=UserFactory(email=email))
    return DeletionWarning.objects.create(
        survey_id=survey.pk, survey_name=survey.name, deletion_date=survey.deletion_date, threshold_days=7,
        recipient_id=survey.owner_id, recipient_email=email)


def test_a_kept_session_the_server_dropped_is_reopened_and_the_email_sent_once(smtp_server, settings, now):
    first, second = pending_warning(now, "first@example.org"), pending_warning(now, "second@example.org")
    session = SmtpSession()
    with time_machine.travel(now, tick=False):
        assert send_warning_email(first.pk, connection=session.connection()).outcome is SendOutcome.SENT

    # The server restarts (its idle timeout, a deploy): the kept session is dead, the port the same.
    smtp_server.controller.stop()
    smtp_server.controller = Controller(smtp_server, hostname="127.0.0.1", port=settings.EMAIL_PORT)
    smtp_server.controller.start()
    try:
        with time_machine.travel(now, tick=False):
            result = send_warning_email(second.pk, connection=session.connection())
    finally:
        session.close()

    assert result.outcome is SendOutcome.SENT
    assert [rcpts for rcpts, _ in smtp_server.messages] == [["first@example.org"], ["second@example.org"]]
    second.refresh_from_db()
    assert (second.status, second.attempts) == (DeletionWarning.Status.SENT, 1)
