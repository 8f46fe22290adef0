"""R4 (what can be warned), R5 (only the applicable threshold), R6 (the ledger: once, catch-up, re-arm)."""

from datetime import timedelta

import pytest
import time_machine

from checktick_app.audit.models import AuditEvent
from checktick_app.governance import engine
from checktick_app.governance.models import DeletionWarning, GovernanceRun
from checktick_app.governance.services import run_data_governance
from checktick_app.governance.emails import recipients_for, write_ledger_rows
from checktick_app.surveys.models import Survey
from checktick_app.surveys.querysets import applicable_threshold
from checktick_app.surveys.services import extend_retention
from tests.domain.helpers import run_command_ok
from tests.factories import MembershipFactory, OrganisationFactory, SurveyFactory, active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db

Status = DeletionWarning.Status


def due_thresholds(survey, now):
    return {days for days in (30, 7, 1) if Survey.objects.due_for_warning(now, days).filter(pk=survey.pk).exists()}


def ledger(survey):
    return sorted(
        DeletionWarning.objects.filter(survey_id=survey.pk)
        .values_list("deletion_date", "threshold_days", "status")
    )


# --- R4 ------------------------------------------------------------------------------------------

def test_only_a_live_survey_with_a_future_date_and_no_hold_is_warnable(now):
    warnable = closed_survey(now + timedelta(days=3))
    past = closed_survey(now - timedelta(seconds=1))
    soft_deleted = soft_deleted_survey(now - timedelta(days=2))
    soft_deleted.deletion_date = now + timedelta(days=3)  # even with a future date, a soft-deleted survey is not warned
    soft_deleted.save(update_fields=["deletion_date"])
    held = closed_survey(now + timedelta(days=3))
    active_hold(held)
    SurveyFactory(status=Survey.Status.PUBLISHED)  # no deletion date at all

    assert list(Survey.objects.warnable(now)) == [warnable]


def test_survey_under_legal_hold_gets_no_warning(smtp_server, now):
    held = closed_survey(now + timedelta(days=7))
    active_hold(held)

    report = run_data_governance(now=now)

    assert smtp_server.messages == []
    assert not DeletionWarning.objects.exists()
    assert sum(len(v) for v in report.warned.values()) == 0


# --- R5 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "left, expected",
    [
        (timedelta(days=30, seconds=1), None),
        (timedelta(days=30), 30),
        (timedelta(days=7, seconds=1), 30),
        (timedelta(days=7), 7),
        (timedelta(days=5), 7),
        (timedelta(days=1, seconds=1), 7),
        (timedelta(days=1), 1),
        (timedelta(seconds=1), 1),
        (timedelta(0), None),
        (-timedelta(seconds=1), None),
    ],
    ids=["30d+1s", "30d", "7d+1s", "7d", "5d", "1d+1s", "1d", "1s", "0s", "-1s"],
)
def test_only_the_smallest_applicable_threshold_is_due(now, left, expected):
    survey = closed_survey(now + left)
    assert due_thresholds(survey, now) == ({expected} if expected else set())
    assert applicable_threshold(left) == expected


@pytest.mark.parametrize("days", [30, 7, 1])
def test_warning_exactly_n_days_out_is_sent_for_that_threshold(smtp_server, now, days):
    survey = closed_survey(now + timedelta(days=days))

    report = run_data_governance(now=now)

    assert [line.id for line in report.warned[days]] == [survey.pk]
    assert ledger(survey) == [(survey.deletion_date, days, Status.SENT)]
    [message] = smtp_server.to(survey.owner.email)
    assert f"will be deleted in {days} day" in message["Subject"]


def test_survey_with_five_days_left_gets_only_the_seven_day_warning(smtp_server, now):
    survey = closed_survey(now + timedelta(days=5))

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance")

    assert "  - 30-day warnings: 0" in output
    assert "  - 7-day warnings: 1" in output
    assert "  - 1-day warnings: 0" in output
    assert ledger(survey) == [(survey.deletion_date, 7, Status.SENT)]
    [message] = smtp_server.to(survey.owner.email)
    assert len(smtp_server.messages) == 1
    assert "will be deleted in 5 days" in message["Subject"]


def test_one_second_before_the_deletion_date_the_survey_gets_its_last_warning_and_is_not_deleted(smtp_server, now):
    survey = closed_survey(now + timedelta(seconds=1))

    report = run_data_governance(now=now)

    survey.refresh_from_db()
    assert survey.deleted_at is None
    assert [line.id for line in report.warned[1]] == [survey.pk]
    assert report.soft_deleted == []


# --- R6 ------------------------------------------------------------------------------------------

def test_running_the_command_twice_in_a_row_sends_and_deletes_nothing_the_second_time(smtp_server, now):
    org = OrganisationFactory()
    MembershipFactory(organisation=org)
    warned = closed_survey(now + timedelta(days=30), organisation=org)
    due = closed_survey(now - timedelta(hours=1), organisation=org)
    expired = soft_deleted_survey(now - timedelta(days=31))

    with time_machine.travel(now, tick=False):
        first = run_command_ok("process_data_governance")
        sent_first = len(smtp_server.messages)
        ledger_first = DeletionWarning.objects.count()
        audit_first = AuditEvent.objects.count()
        second = run_command_ok("process_data_governance")

    assert "Sent 1 deletion warnings:" in first and "Soft deleted: 1 surveys" in first
    assert "Hard deleted: 1 surveys" in first
    # 3 recipients (owner, org owner, admin) for the 30-day warning, the same 3 for the soft-deletion notice.
    assert sent_first == 6
    assert len(smtp_server.messages) == sent_first
    assert DeletionWarning.objects.count() == ledger_first
    assert AuditEvent.objects.count() == audit_first
    assert "Sent 0 deletion warnings:" in second
    assert "Soft deleted: 0 surveys" in second and "Hard deleted: 0 surveys" in second
    assert not Survey.objects.filter(pk=expired.pk).exists()
    assert Survey.objects.get(pk=due.pk).deleted_at == now
    assert DeletionWarning.objects.filter(survey_id=warned.pk, status=Status.SENT).count() == 3
    assert GovernanceRun.objects.count() == 2


def test_a_skipped_night_is_caught_up_by_the_next_run_once(smtp_server, now):
    night1, night2, night3 = now, now + timedelta(days=1), now + timedelta(days=2)
    # On night 1 the 7-day warning is due; nobody runs. Night 2 still falls in the 7-day window.
    warned = closed_survey(night1 + timedelta(days=7))
    # Its deletion date passes between night 1 and night 2.
    due = closed_survey(night1 + timedelta(hours=12))
    # Its grace period ends between night 1 and night 2.
    expired = soft_deleted_survey(night1 - timedelta(days=30) + timedelta(hours=12))

    report2 = run_data_governance(now=night2)
    report3 = run_data_governance(now=night3)

    assert [line.id for line in report2.warned[7]] == [warned.pk]
    assert [line.id for line in report2.soft_deleted] == [due.pk]
    assert [line.id for line in report2.hard_deleted] == [expired.pk]
    assert len(smtp_server.to(warned.owner.email)) == 1
    assert sum(len(v) for v in report3.warned.values()) == 0
    assert report3.soft_deleted == [] and report3.hard_deleted == []
    assert len(smtp_server.to(warned.owner.email)) == 1
    assert ledger(warned) == [(warned.deletion_date, 7, Status.SENT)]


def test_a_warning_refused_for_now_stays_pending_and_is_sent_once_by_the_next_run(smtp_server, now):
    survey = closed_survey(now + timedelta(days=7))
    smtp_server.refuse[survey.owner.email.lower()] = "451 4.3.0 mailbox busy, try later"

    first = run_data_governance(now=now)

    row = DeletionWarning.objects.get(survey_id=survey.pk)
    # Offered once and then once per retry of the one retry policy, as a Celery task would.
    assert (row.status, row.attempts) == (Status.PENDING, 1 + engine.RETRY_POLICIES["smtp"].retries)
    assert "451" in row.last_error
    assert first.emails_failed == 1 and first.status == GovernanceRun.Status.FAILED
    # Each refused attempt is audited with its error (R20).
    assert AuditEvent.objects.filter(survey_id=survey.pk, action=AuditEvent.Action.WARNING_FAILED).count() == row.attempts

    smtp_server.refuse.clear()
    second = run_data_governance(now=now + timedelta(days=1))
    third = run_data_governance(now=now + timedelta(days=1, hours=1))

    row.refresh_from_db()
    assert (row.status, row.attempts) == (Status.SENT, 2 + engine.RETRY_POLICIES["smtp"].retries)
    assert second.emails_sent == 1 and third.emails_sent == 0
    assert len(smtp_server.to(survey.owner.email)) == 1
    assert AuditEvent.objects.filter(survey_id=survey.pk, action=AuditEvent.Action.WARNING_SENT).count() == 1


def test_a_permanently_refused_warning_is_failed_in_the_ledger_and_not_retried(smtp_server, now):
    survey = closed_survey(now + timedelta(days=7))
    smtp_server.refuse[survey.owner.email.lower()] = "550 5.1.1 no such user"

    first = run_data_governance(now=now)
    smtp_server.refuse.clear()
    second = run_data_governance(now=now + timedelta(hours=1))

    row = DeletionWarning.objects.get(survey_id=survey.pk)
    assert (row.status, row.attempts) == (Status.FAILED, 1)
    assert "550" in row.last_error
    assert first.status == GovernanceRun.Status.FAILED
    assert second.emails_sent == 0 and smtp_server.messages == []


def test_retention_extended_after_a_warning_rearms_warnings_for_the_new_date_only(smtp_server, now):
    # Deletion on 12 January 2026 02:00; closed 12 July 2025 with 6 months.
    survey = closed_survey(now + timedelta(days=7))
    old_date = survey.deletion_date
    run_data_governance(now=now)
    assert ledger(survey) == [(old_date, 7, Status.SENT)]

    extend_retention(survey, months=1, reason="Late returns", now=now + timedelta(hours=1))
    survey.refresh_from_db()
    new_date = survey.deletion_date
    assert new_date == old_date + timedelta(days=31)

    # The night the old 1-day warning would have gone: nothing (the new date is 32 days away).
    quiet = run_data_governance(now=old_date - timedelta(days=1))
    # Thirty days before the new date: the 30-day warning for the new date.
    rearmed = run_data_governance(now=new_date - timedelta(days=30))
    again = run_data_governance(now=new_date - timedelta(days=30) + timedelta(hours=2))

    assert sum(len(v) for v in quiet.warned.values()) == 0
    assert [line.id for line in rearmed.warned[30]] == [survey.pk]
    assert sum(len(v) for v in again.warned.values()) == 0
    assert ledger(survey) == [(old_date, 7, Status.SENT), (new_date, 30, Status.SENT)]
    assert len(smtp_server.to(survey.owner.email)) == 2
    survey.refresh_from_db()
    assert survey.deleted_at is None


def test_a_pending_warning_for_an_old_date_is_never_sent_after_the_date_changed(smtp_server, now):
    survey = closed_survey(now + timedelta(days=7))
    smtp_server.refuse[survey.owner.email.lower()] = "451 try later"
    run_data_governance(now=now)
    smtp_server.refuse.clear()
    extend_retention(survey, months=1, reason="Late returns", now=now)

    run_data_governance(now=now + timedelta(hours=1))

    assert smtp_server.messages == []
    assert DeletionWarning.objects.get(survey_id=survey.pk).status == Status.PENDING


def test_a_30_day_warning_still_pending_when_the_survey_enters_the_7_day_window_is_never_sent(smtp_server, now):
    survey = closed_survey(now + timedelta(days=8))
    smtp_server.refuse[survey.owner.email.lower()] = "451 try later"
    run_data_governance(now=now)
    smtp_server.refuse.clear()

    report = run_data_governance(now=now + timedelta(days=1))

    [message] = smtp_server.to(survey.owner.email)
    assert "will be deleted in 7 days" in message["Subject"]
    assert [line.id for line in report.warned[7]] == [survey.pk] and report.warned[30] == []
    assert ledger(survey) == [(survey.deletion_date, 7, Status.SENT), (survey.deletion_date, 30, Status.PENDING)]


def test_a_claimed_warning_whose_sender_died_is_offered_again_after_the_lease_not_before(smtp_server, now):
    survey = closed_survey(now + timedelta(days=7))
    # A worker claimed the row, then died before confirming (the one at-least-once window).
    row = {"pk": survey.pk, "name": survey.name, "deletion_date": survey.deletion_date}
    write_ledger_rows([row], 7, recipients_for([survey.pk]), now=now)
    DeletionWarning.objects.filter(survey_id=survey.pk).update(status=Status.SENDING, claimed_at=now, attempts=1)

    within_lease = run_data_governance(now=now + timedelta(minutes=14))
    after_lease = run_data_governance(now=now + timedelta(minutes=16))

    assert within_lease.emails_sent == 0 and after_lease.emails_sent == 1
    assert len(smtp_server.to(survey.owner.email)) == 1
    warning = DeletionWarning.objects.get(survey_id=survey.pk)
    assert (warning.status, warning.attempts) == (Status.SENT, 2)


# --- R6: a delivery that loses the database keeps its claim -------------------------------------

def pending_warning(now, email="owner@example.org"):
    from tests.factories import UserFactory

    survey = closed_survey(now + timedelta(days=7), owner=UserFactory(email=email))
    return DeletionWarning.objects.create(
        survey_id=survey.pk, survey_name=survey.name, deletion_date=survey.deletion_date, threshold_days=7,
        recipient_id=survey.owner_id, recipient_email=email)


def database_goes_away_in(monkeypatch, module, name, times=None):
    """The connection drops at this step, for the first `times` calls or for good (the trials drop it
    for real: tests/reliability). Returns the calls made, as a list of the step's name."""
    from django.db import OperationalError

    real, calls = getattr(module, name), []

    def flaky(*args, **kwargs):
        calls.append(name)
        if times is None or len(calls) <= times:
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)
    return calls


def test_an_email_the_server_took_before_the_database_went_away_is_recorded_on_retry_not_sent_again(
        smtp_server, now, monkeypatch):
    from checktick_app.governance import emails

    warning = pending_warning(now)
    with time_machine.travel(now, tick=False):
        with monkeypatch.context() as m:
            database_goes_away_in(m, emails, "_record_sent")
            with pytest.raises(emails.SendInterrupted) as interrupted:
                emails.send_warning_email(warning.pk)
        token, accepted = interrupted.value.claim_token, interrupted.value.accepted
        warning.refresh_from_db()
        assert (warning.status, warning.claim_token, accepted) == (Status.SENDING, token, True)
        # Another delivery of the same message has no token: the claim is not its to take.
        assert emails.send_warning_email(warning.pk).outcome is emails.SendOutcome.NOT_CLAIMED

        retried = emails.send_warning_email(warning.pk, claim_token=token, accepted=accepted)

    assert retried.outcome is emails.SendOutcome.SENT
    warning.refresh_from_db()
    assert warning.status == Status.SENT
    assert len(smtp_server.to("owner@example.org")) == 1  # once, although the ledger update failed once
    assert AuditEvent.objects.filter(action=AuditEvent.Action.WARNING_SENT).count() == 1


def test_a_delivery_that_lost_the_database_before_sending_takes_its_own_claim_back_at_once(
        smtp_server, now, monkeypatch):
    from django.db import OperationalError

    from checktick_app.governance import emails

    warning = pending_warning(now)
    with time_machine.travel(now, tick=False):
        with monkeypatch.context() as m:
            real_claim = emails._claim

            def claim_then_lose_the_reply(*args, **kwargs):
                real_claim(*args, **kwargs)  # the claim commits, then the connection drops before its reply
                raise OperationalError("server closed the connection unexpectedly")

            m.setattr(emails, "_claim", claim_then_lose_the_reply)
            with pytest.raises(emails.SendInterrupted) as interrupted:
                emails.send_warning_email(warning.pk)
        warning.refresh_from_db()
        assert (warning.status, warning.attempts) == (Status.SENDING, 1)  # claimed, under this delivery's token
        assert interrupted.value.accepted is False and smtp_server.messages == []

        # Well inside the claim's lease: without the token the row would wait 15 minutes.
        with time_machine.travel(now + timedelta(seconds=30), tick=False):
            retried = emails.send_warning_email(warning.pk, claim_token=interrupted.value.claim_token)

    assert retried.outcome is emails.SendOutcome.SENT
    assert len(smtp_server.to("owner@example.org")) == 1
    warning.refresh_from_db()
    assert (warning.status, warning.attempts) == (Status.SENT, 2)


def test_the_cron_command_waits_out_a_short_database_outage_and_records_the_email_it_already_sent(
        smtp_server, now, monkeypatch):
    from checktick_app.governance import emails

    survey = closed_survey(now + timedelta(days=7))
    # Two retries without waiting: the waits' length is not what is tested.
    monkeypatch.setitem(engine.RETRY_POLICIES, "database", engine.RetryPolicy(first=0, longest=0, retries=2))
    calls = database_goes_away_in(monkeypatch, emails, "_record_sent", times=1)

    with time_machine.travel(now, tick=False):
        report = run_data_governance(now=now)

    assert calls == ["_record_sent", "_record_sent"]
    assert (report.emails_sent, report.emails_failed, report.status) == (1, 0, "succeeded")
    assert len(smtp_server.to(survey.owner.email)) == 1  # recorded on the second try, not sent again
    assert ledger(survey) == [(survey.deletion_date, 7, Status.SENT)]
    assert AuditEvent.objects.filter(action=AuditEvent.Action.WARNING_SENT).count() == 1


def test_an_outage_longer_than_the_retries_fails_the_item_and_keeps_the_claim(smtp_server, now, monkeypatch):
    """The cron command retries as a Celery task does; after the last retry the item is recorded as failed
    (R12) and the email, already with the SMTP server, is left to the claim's lease (the named window)."""
    from checktick_app.governance import emails

    survey = closed_survey(now + timedelta(days=7))
    monkeypatch.setitem(engine.RETRY_POLICIES, "database", engine.RetryPolicy(first=0, longest=0, retries=2))
    calls = database_goes_away_in(monkeypatch, emails, "_record_sent", times=3)

    with time_machine.travel(now, tick=False):
        report = run_data_governance(now=now)

    assert len(calls) == 3  # the first try and one per retry
    assert (report.emails_sent, report.emails_failed, report.status) == (0, 1, "failed")
    assert "OperationalError" in report.failures[0][2]
    assert len(smtp_server.to(survey.owner.email)) == 1
    # Left to the lease, like a crash: the next run after it offers the email again (the named window).
    assert DeletionWarning.objects.get(survey_id=survey.pk).status == Status.SENDING
    assert GovernanceRun.objects.get().status == "failed"
