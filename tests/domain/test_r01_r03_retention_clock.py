"""R1 (closing starts the clock), R2 (retention 1-24 months), R3 (extending retention)."""

from datetime import datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from checktick_app.audit.models import AuditEvent
from checktick_app.surveys.models import RetentionExtension, Survey
from checktick_app.surveys.services import (
    close_survey, extend_retention, remove_legal_hold, reopen_survey, restore_survey,
)
from tests.factories import SurveyFactory, UserFactory, active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db

UTC = timezone.utc


# --- R1 ------------------------------------------------------------------------------------------

def test_closing_a_survey_sets_closed_at_and_a_deletion_date_calendar_months_later():
    survey = SurveyFactory(retention_months=6)
    closed_at = datetime(2026, 1, 1, 9, 30, tzinfo=UTC)

    close_survey(survey, now=closed_at)

    survey.refresh_from_db()
    assert survey.status == Survey.Status.CLOSED
    assert survey.closed_at == closed_at
    assert survey.deletion_date == datetime(2026, 7, 1, 9, 30, tzinfo=UTC)
    assert AuditEvent.objects.filter(survey_id=survey.pk, action=AuditEvent.Action.CLOSED).count() == 1


def test_closing_on_the_last_day_of_a_month_lands_on_the_last_day_of_the_shorter_month():
    survey = SurveyFactory(retention_months=6)
    close_survey(survey, now=datetime(2025, 8, 31, 12, 0, tzinfo=UTC))
    survey.refresh_from_db()
    assert survey.deletion_date == datetime(2026, 2, 28, 12, 0, tzinfo=UTC)


def test_closing_an_already_closed_survey_does_not_move_its_deletion_date():
    survey = SurveyFactory(retention_months=6)
    first = datetime(2026, 1, 1, tzinfo=UTC)
    close_survey(survey, now=first)

    close_survey(survey, now=first + timedelta(days=40))

    survey.refresh_from_db()
    assert survey.closed_at == first
    assert survey.deletion_date == datetime(2026, 7, 1, tzinfo=UTC)
    assert AuditEvent.objects.filter(survey_id=survey.pk, action=AuditEvent.Action.CLOSED).count() == 1


def test_reopening_a_closed_survey_clears_its_clock_and_is_audited():
    user = UserFactory(username="reopener")
    survey = SurveyFactory(retention_months=6)
    close_survey(survey, now=datetime(2026, 1, 1, tzinfo=UTC))

    reopen_survey(survey, by=user, now=datetime(2026, 2, 1, tzinfo=UTC))

    survey.refresh_from_db()
    assert survey.status == Survey.Status.PUBLISHED
    assert survey.closed_at is None and survey.deletion_date is None
    event = AuditEvent.objects.get(survey_id=survey.pk, action=AuditEvent.Action.REOPENED)
    assert event.actor == "reopener"
    assert event.details["previous_deletion_date"] == "2026-07-01T00:00:00+00:00"


def test_a_soft_deleted_survey_cannot_be_reopened(now):
    survey = soft_deleted_survey(now - timedelta(days=1))
    with pytest.raises(ValidationError, match="restore"):
        reopen_survey(survey, now=now)
    survey.refresh_from_db()
    assert survey.deleted_at is not None and survey.deletion_date is not None


def test_drafts_and_live_surveys_have_no_deletion_date():
    draft_survey = SurveyFactory(status=Survey.Status.DRAFT)
    live = SurveyFactory(status=Survey.Status.PUBLISHED)
    assert draft_survey.deletion_date is None and live.deletion_date is None
    assert not Survey.objects.filter(deletion_date__isnull=False).exists()


# --- R2 ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("months", [1, 24])
def test_retention_of_1_and_24_months_is_accepted(months):
    survey = SurveyFactory.build(retention_months=months, owner=None)
    survey.full_clean()
    survey.save()
    assert Survey.objects.get(pk=survey.pk).retention_months == months


@pytest.mark.parametrize("months", [0, 25])
def test_retention_of_0_or_25_months_is_refused_by_validation_and_by_the_database(months):
    survey = SurveyFactory.build(retention_months=months, owner=None)
    with pytest.raises(ValidationError) as info:
        survey.full_clean()
    assert "retention_months" in info.value.message_dict

    with pytest.raises(IntegrityError), transaction.atomic():
        Survey.objects.create(name="Out of range", retention_months=months)
    assert not Survey.objects.filter(name="Out of range").exists()


def test_a_new_survey_gets_the_default_retention_of_six_months():
    assert Survey.objects.create(name="Defaulted").retention_months == 6


# --- R3 ------------------------------------------------------------------------------------------

def test_extending_retention_recomputes_the_date_from_closed_at_and_writes_an_extension_and_audit():
    user = UserFactory(username="curator")
    survey = SurveyFactory(retention_months=6)
    close_survey(survey, now=datetime(2026, 1, 1, tzinfo=UTC))

    extend_retention(survey, months=3, reason="Follow-up study", by=user, now=datetime(2026, 5, 1, tzinfo=UTC))

    survey.refresh_from_db()
    assert survey.retention_months == 9
    assert survey.deletion_date == datetime(2026, 10, 1, tzinfo=UTC)
    extension = RetentionExtension.objects.get(survey_id=survey.pk)
    assert (extension.months_added, extension.reason, extension.extended_by) == (3, "Follow-up study", user)
    assert extension.previous_deletion_date == datetime(2026, 7, 1, tzinfo=UTC)
    assert extension.new_deletion_date == datetime(2026, 10, 1, tzinfo=UTC)
    event = AuditEvent.objects.get(survey_id=survey.pk, action=AuditEvent.Action.RETENTION_EXTENDED)
    assert event.actor == "curator" and event.details["months_added"] == 3


def test_extension_beyond_the_maximum_is_refused_with_a_message_naming_the_maximum(now):
    survey = closed_survey(now + timedelta(days=10), retention_months=20)
    with pytest.raises(ValidationError) as info:
        extend_retention(survey, months=5, reason="Need more time", now=now)
    message = " ".join(info.value.messages)
    assert "25 months" in message and "maximum is 24" in message and "at most 4" in message
    survey.refresh_from_db()
    assert survey.retention_months == 20
    assert not RetentionExtension.objects.exists()


def test_extension_up_to_exactly_the_maximum_is_accepted(now):
    survey = closed_survey(now + timedelta(days=10), retention_months=20)
    extend_retention(survey, months=4, reason="Need more time", now=now)
    survey.refresh_from_db()
    assert survey.retention_months == 24


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_extension_without_a_reason_is_refused(now, reason):
    survey = closed_survey(now + timedelta(days=10))
    with pytest.raises(ValidationError, match="reason"):
        extend_retention(survey, months=1, reason=reason, now=now)
    assert not RetentionExtension.objects.exists()


def test_extension_of_a_survey_that_is_not_closed_is_refused(now):
    survey = SurveyFactory(status=Survey.Status.PUBLISHED)
    with pytest.raises(ValidationError, match="closed"):
        extend_retention(survey, months=1, reason="Keep", now=now)


def test_extension_of_a_soft_deleted_survey_is_refused_and_points_to_restore(now):
    survey = soft_deleted_survey(now - timedelta(days=1))
    with pytest.raises(ValidationError, match="restore"):
        extend_retention(survey, months=3, reason="Keep", now=now)
    with pytest.raises(ValidationError, match="not soft-deleted"):
        restore_survey(closed_survey(now + timedelta(days=1)), months=1, reason="Keep", now=now)


def test_an_extension_never_brings_the_date_earlier_than_the_notice_given_when_a_hold_was_lifted(now):
    # The deletion date passed while the survey was held; lifting the hold gave 7 days' notice (R14).
    survey = closed_survey(now - timedelta(days=70), retention_months=6)
    remove_legal_hold(active_hold(survey), reason="Case closed", now=now)
    survey.refresh_from_db()
    assert survey.deletion_date == now + timedelta(days=7)

    # One more month from closed_at would land 39 days in the past: tonight's run would delete it unwarned.
    with pytest.raises(ValidationError, match="Extend by more months"):
        extend_retention(survey, months=1, reason="Keep a little longer", now=now)
    survey.refresh_from_db()
    assert survey.deletion_date == now + timedelta(days=7) and survey.retention_months == 6
    assert not RetentionExtension.objects.exists()

    extend_retention(survey, months=3, reason="Keep a little longer", now=now)
    survey.refresh_from_db()
    assert survey.deletion_date > now + timedelta(days=7) and survey.retention_months == 9


@pytest.mark.parametrize("months", [12, 13])
def test_the_configured_maximum_is_enforced_by_the_validator_below_the_database_ceiling(settings, months):
    settings.CHECKTICK_MAX_RETENTION_MONTHS = 12
    survey = SurveyFactory.build(retention_months=months, owner=None)
    if months == 12:
        survey.full_clean()
    else:
        with pytest.raises(ValidationError, match="from 1 to 12 months"):
            survey.full_clean()
