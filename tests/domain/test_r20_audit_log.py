"""R20: what the audit log records, and that its entries are never updated or deleted (model and database)."""

from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction

from checktick_app.audit.services import record_audit
from checktick_app.audit.models import AppendOnlyError, AuditEvent
from checktick_app.governance.services import run_data_governance
from checktick_app.surveys.services import (
    close_survey, extend_retention, place_legal_hold, remove_legal_hold, reopen_survey, restore_survey,
)
from tests.factories import SurveyFactory, active_hold, closed_survey

pytestmark = pytest.mark.django_db

Action = AuditEvent.Action


@pytest.fixture
def entry():
    return record_audit(Action.SOFT_DELETED, survey_id=42, survey_name="Evidence", note="original")


def test_an_audit_entry_cannot_be_updated_or_deleted_through_the_model(entry):
    entry.details = {"note": "rewritten"}
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=entry.pk).update(survey_name="Rewritten")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=entry.pk).delete()
    assert AuditEvent.objects.get(pk=entry.pk).details == {"note": "original"}


@pytest.mark.parametrize("statement", [
    "UPDATE governance_auditevent SET survey_name = 'Rewritten' WHERE id = %s",
    "DELETE FROM governance_auditevent WHERE id = %s",
], ids=["update", "delete"])
def test_the_database_refuses_raw_sql_that_would_update_or_delete_an_audit_entry(entry, statement):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(statement, [entry.pk])
    stored = AuditEvent.objects.get(pk=entry.pk)
    assert stored.survey_name == "Evidence"


def test_every_governance_event_is_audited(smtp_server, now):
    # Warning sent and warning failed.
    warned = closed_survey(now + timedelta(days=7))
    refused = closed_survey(now + timedelta(days=7))
    smtp_server.refuse[refused.owner.email.lower()] = "550 no such user"
    # Soft deletion, then (in the same run, for another survey) hard deletion, and a skip for a hold.
    soft = closed_survey(now - timedelta(days=1))
    hard = closed_survey(now - timedelta(days=60))
    hard.deleted_at, hard.hard_deletion_date = now - timedelta(days=31), now - timedelta(days=1)
    hard.save(update_fields=["deleted_at", "hard_deletion_date"])
    held = closed_survey(now - timedelta(days=1))
    active_hold(held)
    run = run_data_governance(now=now)
    # Hold placed and removed (with the deadline moved), extension, reopen and restore.
    hold = place_legal_hold(warned, reason="Audit", authority="Board", now=now)
    remove_legal_hold(hold, reason="Done", now=now + timedelta(days=4))
    extend_retention(warned, months=1, reason="More", now=now + timedelta(days=4))
    reopen_survey(warned, now=now + timedelta(days=5))
    close_survey(warned, now=now + timedelta(days=5))
    restore_survey(soft, months=3, reason="Ethics", now=now + timedelta(days=1))

    by_survey = {}
    for survey_id, action in AuditEvent.objects.values_list("survey_id", "action"):
        by_survey.setdefault(survey_id, set()).add(action)

    assert Action.WARNING_SENT in by_survey[warned.pk]
    assert Action.WARNING_FAILED in by_survey[refused.pk]
    assert {Action.SOFT_DELETED, Action.RESTORED} <= by_survey[soft.pk]
    assert Action.HARD_DELETED in by_survey[hard.pk]
    assert Action.SKIPPED_FOR_HOLD in by_survey[held.pk]
    assert {Action.HOLD_PLACED, Action.HOLD_REMOVED, Action.DEADLINE_MOVED, Action.RETENTION_EXTENDED,
            Action.REOPENED, Action.CLOSED} <= by_survey[warned.pk]
    hard_entry = AuditEvent.objects.get(action=Action.HARD_DELETED)
    assert hard_entry.run_id == run.run_id and set(hard_entry.details["removed"]) == {
        "progress", "responses", "exports", "access_tokens"}


def test_audit_entries_keep_the_survey_id_and_name_not_a_foreign_key():
    survey = SurveyFactory(name="Short-lived")
    entry = record_audit(Action.CLOSED, survey=survey)
    survey_id = survey.pk
    survey.delete()
    entry = AuditEvent.objects.get(pk=entry.pk)
    assert (entry.survey_id, entry.survey_name) == (survey_id, "Short-lived")
