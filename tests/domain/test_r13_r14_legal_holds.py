"""R13 (a hold freezes everything, needs a reason and authority) and R14 (fair notice after release)."""

from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning
from checktick_app.governance.services import run_data_governance
from checktick_app.surveys.models import LegalHold, Survey
from checktick_app.surveys.services import place_legal_hold, remove_legal_hold
from tests.domain.helpers import run_command_ok
from tests.factories import UserFactory, active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db

Action = AuditEvent.Action


# --- R13 -----------------------------------------------------------------------------------------

def test_survey_under_legal_hold_is_never_warned_soft_deleted_or_hard_deleted(smtp_server, now):
    would_warn = closed_survey(now + timedelta(days=1))
    would_soft = closed_survey(now - timedelta(days=3), name="Held live")
    would_hard = soft_deleted_survey(now - timedelta(days=60), name="Held soft-deleted")
    for survey in (would_warn, would_soft, would_hard):
        active_hold(survey)

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance", "--verbose")

    assert smtp_server.messages == [] and not DeletionWarning.objects.exists()
    would_soft.refresh_from_db()
    assert would_soft.deleted_at is None
    assert Survey.objects.filter(pk=would_hard.pk).exists()
    assert "Soft deleted: 0 surveys" in output and "Hard deleted: 0 surveys" in output
    assert "Skipped (legal hold): 2 surveys" in output
    assert f"#{would_soft.pk} Held live" in output and f"#{would_hard.pk} Held soft-deleted" in output
    skipped = set(AuditEvent.objects.filter(action=Action.SKIPPED_FOR_HOLD).values_list("survey_id", flat=True))
    assert skipped == {would_soft.pk, would_hard.pk}


def test_placing_a_hold_needs_a_reason_and_an_authority_and_is_audited_with_the_user(now):
    survey = closed_survey(now + timedelta(days=10))
    lawyer = UserFactory(username="lawyer")
    with pytest.raises(ValidationError, match="reason"):
        place_legal_hold(survey, reason="", authority="Court", by=lawyer, now=now)
    with pytest.raises(ValidationError, match="authority"):
        place_legal_hold(survey, reason="Litigation", authority="  ", by=lawyer, now=now)
    assert not LegalHold.objects.exists() and not AuditEvent.objects.exists()

    hold = place_legal_hold(survey, reason="Litigation", authority="High Court", by=lawyer, now=now)

    assert (hold.reason, hold.authority, hold.placed_by, hold.placed_at) == ("Litigation", "High Court", lawyer, now)
    event = AuditEvent.objects.get(action=Action.HOLD_PLACED)
    assert (event.survey_id, event.actor, event.details["authority"]) == (survey.pk, "lawyer", "High Court")


@pytest.mark.parametrize("field", ["reason", "authority"])
def test_the_database_refuses_a_hold_without_reason_or_authority(now, field):
    survey = closed_survey(now + timedelta(days=10))
    values = {"reason": "Litigation", "authority": "Court", field: ""}
    with pytest.raises(IntegrityError), transaction.atomic():
        LegalHold.objects.create(survey=survey, survey_name=survey.name, **values)


def test_removing_a_hold_needs_a_reason_and_is_audited_with_the_user(now):
    survey = closed_survey(now + timedelta(days=100))
    hold = place_legal_hold(survey, reason="Litigation", authority="Court", now=now)
    with pytest.raises(ValidationError, match="reason"):
        remove_legal_hold(hold, reason="", now=now)
    hold.refresh_from_db()
    assert hold.removed_at is None

    lawyer = UserFactory(username="lawyer")
    remove_legal_hold(hold, reason="Case settled", by=lawyer, now=now + timedelta(days=1))

    hold.refresh_from_db()
    assert (hold.removed_at, hold.removed_by, hold.removal_reason) == (now + timedelta(days=1), lawyer, "Case settled")
    event = AuditEvent.objects.get(action=Action.HOLD_REMOVED)
    assert (event.survey_id, event.actor, event.details["reason"]) == (survey.pk, "lawyer", "Case settled")
    with pytest.raises(ValidationError, match="already been removed"):
        remove_legal_hold(hold, reason="Again", now=now)


def test_a_survey_stays_held_while_any_of_its_holds_is_active(smtp_server, now):
    survey = closed_survey(now - timedelta(days=1))
    first = place_legal_hold(survey, reason="Complaint", authority="PALS", now=now - timedelta(days=30))
    place_legal_hold(survey, reason="Inquest", authority="Coroner", now=now - timedelta(days=20))
    assert LegalHold.objects.filter(survey=survey).count() == 2

    remove_legal_hold(first, reason="Complaint closed", now=now)
    run_data_governance(now=now)

    survey.refresh_from_db()
    assert survey.deleted_at is None
    assert survey.deletion_date == now - timedelta(days=1), "the deadline moves only when the last hold goes"
    assert list(Survey.objects.filter(legal_hold__removed_at__isnull=True)) == [survey]
    assert not AuditEvent.objects.filter(action=Action.DEADLINE_MOVED).exists()


# --- R14 -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("left", [timedelta(days=3), timedelta(days=7) - timedelta(seconds=1), -timedelta(days=10)],
                         ids=["3-days-away", "just-under-7-days", "10-days-past"])
def test_releasing_the_last_hold_near_or_past_the_deletion_date_moves_it_to_removal_plus_seven_days(now, left):
    survey = closed_survey(now + left)
    original = survey.deletion_date
    hold = active_hold(survey)
    officer = UserFactory(username="officer")

    remove_legal_hold(hold, reason="Released", by=officer, now=now)

    survey.refresh_from_db()
    assert survey.deletion_date == now + timedelta(days=7)
    event = AuditEvent.objects.get(survey_id=survey.pk, action=Action.DEADLINE_MOVED)
    assert event.actor == "officer"
    assert event.details == {"field": "deletion_date", "previous": original.isoformat(),
                             "new": (now + timedelta(days=7)).isoformat()}


@pytest.mark.parametrize("left", [timedelta(days=7), timedelta(days=20)], ids=["exactly-7-days", "20-days"])
def test_releasing_a_hold_with_enough_notice_left_does_not_move_the_date(now, left):
    survey = closed_survey(now + left)
    remove_legal_hold(active_hold(survey), reason="Released", now=now)
    survey.refresh_from_db()
    assert survey.deletion_date == now + left
    assert not AuditEvent.objects.filter(action=Action.DEADLINE_MOVED).exists()


def test_after_a_hold_is_released_the_owners_are_warned_before_the_survey_goes(smtp_server, now):
    survey = closed_survey(now - timedelta(days=10))
    # Warned 7 days before the original date, then held before it came.
    assert [line.id for line in run_data_governance(now=now - timedelta(days=17)).warned[7]] == [survey.pk]
    hold = place_legal_hold(survey, reason="Complaint", authority="PALS", now=now - timedelta(days=15))
    assert run_data_governance(now=now - timedelta(days=10)).soft_deleted == []
    remove_legal_hold(hold, reason="Released", now=now)

    tonight = run_data_governance(now=now)
    in_six_days = run_data_governance(now=now + timedelta(days=6))
    in_seven_days = run_data_governance(now=now + timedelta(days=7))

    assert [line.id for line in tonight.warned[7]] == [survey.pk]
    assert tonight.soft_deleted == []
    assert [line.id for line in in_six_days.warned[1]] == [survey.pk]
    assert [line.id for line in in_seven_days.soft_deleted] == [survey.pk]
    subjects = [m["Subject"] for m in smtp_server.to(survey.owner.email)]
    assert len(subjects) == 4, "the 7-day warning for the new date re-armed; nothing else repeated"
    assert "in 7 days (26 December 2025)" in subjects[0]
    assert "in 7 days (12 January 2026)" in subjects[1]
    assert "in 1 day " in subjects[2] and "has been deleted" in subjects[3]


def test_releasing_the_hold_of_a_soft_deleted_survey_past_its_grace_moves_the_hard_deletion_date(smtp_server, now):
    survey = soft_deleted_survey(now - timedelta(days=45))  # hard deletion was due 15 days ago
    deletion_date = survey.deletion_date
    remove_legal_hold(active_hold(survey), reason="Released", now=now)

    survey.refresh_from_db()
    assert survey.hard_deletion_date == now + timedelta(days=7)
    assert survey.deletion_date == deletion_date
    assert AuditEvent.objects.get(action=Action.DEADLINE_MOVED).details["field"] == "hard_deletion_date"
    assert run_data_governance(now=now).hard_deleted == []
    assert [line.id for line in run_data_governance(now=now + timedelta(days=7)).hard_deleted] == [survey.pk]


def test_the_active_hold_snippet_lists_only_surveys_with_a_hold_not_yet_removed(now):
    never_held = closed_survey(now + timedelta(days=10))
    held = closed_survey(now + timedelta(days=10))
    place_legal_hold(held, reason="Inquest", authority="Coroner", now=now)
    released = closed_survey(now + timedelta(days=10))
    remove_legal_hold(place_legal_hold(released, reason="Complaint", authority="PALS", now=now),
                      reason="Closed", now=now)

    assert list(Survey.objects.filter(legal_hold__removed_at__isnull=True)) == [held]
    assert set(Survey.objects.exclude(legal_hold__removed_at__isnull=True)) == {never_held, released}
    assert list(Survey.objects.with_active_hold()) == [held]
    assert set(Survey.objects.without_active_hold()) == {never_held, released}


def test_a_soft_deletion_notice_not_yet_sent_waits_while_a_hold_is_active(smtp_server, now):
    survey = closed_survey(now - timedelta(hours=1))
    smtp_server.refuse[survey.owner.email.lower()] = "451 try later"
    run_data_governance(now=now)
    smtp_server.refuse.clear()
    hold = active_hold(survey)

    run_data_governance(now=now + timedelta(days=1))
    assert smtp_server.messages == []

    remove_legal_hold(hold, reason="Released", now=now + timedelta(days=2))
    run_data_governance(now=now + timedelta(days=2))
    [message] = smtp_server.to(survey.owner.email)
    assert "has been deleted" in message["Subject"]
