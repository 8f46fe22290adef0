"""R9 (soft deletion), R10 (restore), R11 (hard deletion keeps the evidence), R12 (one failure stops nothing)."""

import threading
from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection, connections, transaction

from checktick_app.governance import engine as governance_engine
from checktick_app.governance.deletion import DeletionOutcome, hard_delete_survey, soft_delete_survey
from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning, GovernanceRun, RunItem
from checktick_app.governance.services import run_data_governance
from checktick_app.surveys.models import (
    LegalHold, RetentionExtension, Survey, SurveyAccessToken, SurveyExport, SurveyProgress, SurveyResponse,
)
from checktick_app.surveys.services import (
    extend_retention, place_legal_hold, remove_legal_hold, restore_survey, save_progress, submit_response,
)
from tests.domain.helpers import run_command, run_command_ok
from tests.factories import (
    ExportFactory, MembershipFactory, OrganisationFactory, ResponseFactory, SurveyFactory, TokenFactory,
    UserFactory, active_hold, closed_survey, draft, soft_deleted_survey,
)

pytestmark = pytest.mark.django_db

Action = AuditEvent.Action


# --- R9 ------------------------------------------------------------------------------------------

def test_soft_deletion_is_due_at_the_deletion_date_not_one_second_before(now):
    survey = closed_survey(now)
    assert not Survey.objects.due_for_soft_delete(now - timedelta(seconds=1)).filter(pk=survey.pk).exists()
    assert Survey.objects.due_for_soft_delete(now).filter(pk=survey.pk).exists()
    assert Survey.objects.due_for_soft_delete(now + timedelta(seconds=1)).filter(pk=survey.pk).exists()


@pytest.mark.parametrize("offset, deleted", [(-timedelta(seconds=1), False), (timedelta(0), True),
                                             (timedelta(seconds=1), True)], ids=["1s-before", "at", "1s-after"])
def test_a_run_soft_deletes_exactly_from_the_deletion_date_on(smtp_server, now, offset, deleted):
    survey = closed_survey(now)

    report = run_data_governance(now=now + offset)

    survey.refresh_from_db()
    assert (survey.deleted_at is not None) is deleted
    assert [line.id for line in report.soft_deleted] == ([survey.pk] if deleted else [])


def test_soft_deletion_hides_the_survey_stops_responses_drops_drafts_and_starts_the_grace_period(smtp_server, now):
    # A published survey that carries a deletion date isolates what deleted_at alone changes.
    survey = SurveyFactory(status=Survey.Status.PUBLISHED, deletion_date=now - timedelta(hours=1),
                           closed_at=now - timedelta(days=180))
    other = SurveyFactory(status=Survey.Status.PUBLISHED)
    user_draft = save_progress(survey, {"q1": "half"}, user=UserFactory(), now=now - timedelta(days=2))
    session_draft = save_progress(survey, {"q1": "half"}, session_key="abc", now=now - timedelta(days=2))
    kept = save_progress(other, {"q1": "half"}, session_key="abc", now=now - timedelta(days=2))
    assert survey.accepts_responses and survey in Survey.objects.visible()

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance")

    survey.refresh_from_db()
    assert survey.deleted_at == now
    assert survey.hard_deletion_date == now + timedelta(days=30)
    assert not survey.accepts_responses
    assert survey not in Survey.objects.visible() and other in Survey.objects.visible()
    assert not SurveyProgress.objects.filter(pk__in=[user_draft.pk, session_draft.pk]).exists()
    assert SurveyProgress.objects.filter(pk=kept.pk).exists()
    with pytest.raises(ValidationError, match="not accepting"):
        submit_response(survey, {"q1": "late"}, session_key="late")
    with pytest.raises(ValidationError, match="not accepting"):
        save_progress(survey, {"q1": "late"}, session_key="late")
    event = AuditEvent.objects.get(survey_id=survey.pk, action=Action.SOFT_DELETED)
    assert event.details["drafts_deleted"] == 2 and event.actor == "system"
    assert "Soft deleted: 1 surveys" in output
    assert "⚠️  1 surveys were deleted. Check audit logs for details." in output


def test_soft_deletion_notice_goes_to_every_recipient_once(smtp_server, now):
    org = OrganisationFactory()
    admin = MembershipFactory(organisation=org).user
    survey = closed_survey(now - timedelta(hours=1), organisation=org)

    first = run_data_governance(now=now)
    run_data_governance(now=now + timedelta(hours=1))
    run_data_governance(now=now + timedelta(days=1))

    assert smtp_server.recipients == sorted([survey.owner.email, org.owner.email, admin.email])
    assert first.notices_sent == 3
    rows = DeletionWarning.objects.filter(survey_id=survey.pk)
    assert {(r.threshold_days, r.status) for r in rows} == {(DeletionWarning.SOFT_DELETION_NOTICE, "sent")}
    assert rows.count() == 3
    assert all("has been deleted" in m["Subject"] for _, m in smtp_server.messages)


def test_soft_deletion_of_a_survey_that_is_not_due_does_nothing(now):
    survey = closed_survey(now + timedelta(days=1))
    assert soft_delete_survey(survey.pk, now=now).outcome is DeletionOutcome.NOT_DUE
    survey.refresh_from_db()
    assert survey.deleted_at is None
    assert not AuditEvent.objects.exists()


# --- R10 -----------------------------------------------------------------------------------------

def test_restoring_a_soft_deleted_survey_needs_an_extension_to_a_future_date_and_survives_the_next_run(
    smtp_server, now
):
    user = UserFactory(username="restorer")
    survey = closed_survey(now - timedelta(days=3), retention_months=6)
    run_data_governance(now=now)
    survey.refresh_from_db()
    assert survey.deleted_at == now

    restore_survey(survey, months=2, reason="Ethics board asked to keep it", by=user, now=now + timedelta(days=1))

    survey.refresh_from_db()
    assert survey.deleted_at is None and survey.hard_deletion_date is None
    assert survey.retention_months == 8
    assert survey.deletion_date > now + timedelta(days=1)
    assert RetentionExtension.objects.filter(survey_id=survey.pk, months_added=2).exists()
    event = AuditEvent.objects.get(survey_id=survey.pk, action=Action.RESTORED)
    assert event.actor == "restorer" and event.details["reason"] == "Ethics board asked to keep it"
    # The next nights do not soft-delete it again.
    for night in (1, 2, 3):
        report = run_data_governance(now=now + timedelta(days=night, hours=1))
        assert report.soft_deleted == []
    survey.refresh_from_db()
    assert survey.deleted_at is None and survey in Survey.objects.visible()


def test_restore_with_too_few_months_to_reach_a_future_date_is_refused(now):
    # Soft-deleted 45 days ago with a long grace period: one more month still ends in the past.
    survey = soft_deleted_survey(now - timedelta(days=45), grace_days=90, retention_months=6)
    with pytest.raises(ValidationError, match="Extend by more months"):
        restore_survey(survey, months=1, reason="Keep", now=now)
    survey.refresh_from_db()
    assert survey.deleted_at is not None
    assert not RetentionExtension.objects.exists()
    assert not AuditEvent.objects.filter(action=Action.RESTORED).exists()


def test_restore_after_the_hard_deletion_date_is_refused(now):
    survey = soft_deleted_survey(now - timedelta(days=30))  # hard_deletion_date == now
    with pytest.raises(ValidationError, match="grace period is over"):
        restore_survey(survey, months=6, reason="Keep", now=now)
    survey.refresh_from_db()
    assert survey.deleted_at is not None


def test_restore_without_a_reason_is_refused(now):
    survey = soft_deleted_survey(now - timedelta(days=1))
    with pytest.raises(ValidationError, match="reason"):
        restore_survey(survey, months=3, reason=" ", now=now)


# --- R11 -----------------------------------------------------------------------------------------

def test_hard_deletion_is_due_at_the_hard_deletion_date_not_one_second_before(now):
    survey = soft_deleted_survey(now - timedelta(days=30))
    assert survey.hard_deletion_date == now
    assert not Survey.objects.due_for_hard_delete(now - timedelta(seconds=1)).exists()
    assert list(Survey.objects.due_for_hard_delete(now)) == [survey]
    assert hard_delete_survey(survey.pk, now=now - timedelta(seconds=1)).outcome is DeletionOutcome.NOT_DUE
    assert Survey.objects.filter(pk=survey.pk).exists()


def test_hard_deletion_removes_the_survey_and_its_data_but_keeps_audit_ledger_extensions_and_holds(
    smtp_server, now
):
    survey = closed_survey(now - timedelta(days=40), name="Sepsis audit 2025")
    other = closed_survey(now + timedelta(days=100))
    for s in (survey, other):
        ResponseFactory.create_batch(2, survey=s)
        ExportFactory(survey=s)
        token = TokenFactory(survey=s)
        draft(s, now - timedelta(days=1), access_token=token)
        draft(s, now - timedelta(days=1), kind="user")
    # Evidence written over the survey's life: an extension, a hold placed and lifted, a ledger row.
    extend_retention(survey, months=1, reason="Late data", now=now - timedelta(days=60))
    hold = place_legal_hold(survey, reason="Complaint", authority="Trust legal", now=now - timedelta(days=50))
    remove_legal_hold(hold, reason="Complaint closed", now=now - timedelta(days=45))
    survey.refresh_from_db()
    survey.deleted_at = now - timedelta(days=31)
    survey.hard_deletion_date = now - timedelta(days=1)
    survey.save(update_fields=["deleted_at", "hard_deletion_date"])
    DeletionWarning.objects.create(survey_id=survey.pk, survey_name=survey.name, deletion_date=survey.deletion_date,
                                   threshold_days=7, recipient_id=survey.owner_id, status="sent")
    sid = survey.pk

    report = run_data_governance(now=now)

    assert [line.id for line in report.hard_deleted] == [sid]
    assert not Survey.objects.filter(pk=sid).exists()
    for model in (SurveyResponse, SurveyExport, SurveyAccessToken, SurveyProgress):
        assert not model.objects.filter(survey_id=sid).exists(), model.__name__
    assert SurveyResponse.objects.filter(survey=other).count() == 2
    assert SurveyProgress.objects.filter(survey=other).count() == 2
    assert SurveyAccessToken.objects.filter(survey=other).count() == 1
    assert SurveyExport.objects.filter(survey=other).count() == 1
    # The evidence survives, with the survey's id and name.
    assert LegalHold.objects.filter(survey_id=sid, survey_name="Sepsis audit 2025").count() == 1
    assert RetentionExtension.objects.filter(survey_id=sid, survey_name="Sepsis audit 2025").count() == 1
    assert DeletionWarning.objects.filter(survey_id=sid, survey_name="Sepsis audit 2025").count() == 1
    actions = set(AuditEvent.objects.filter(survey_id=sid).values_list("action", flat=True))
    assert {Action.RETENTION_EXTENDED, Action.HOLD_PLACED, Action.HOLD_REMOVED, Action.HARD_DELETED} <= actions
    event = AuditEvent.objects.get(survey_id=sid, action=Action.HARD_DELETED)
    assert event.survey_name == "Sepsis audit 2025"
    assert event.details["removed"] == {"progress": 2, "responses": 2, "exports": 1, "access_tokens": 1}


def test_hard_deletion_rechecks_under_the_lock_a_hold_placed_after_selection_wins(smtp_server, now, monkeypatch):
    survey = soft_deleted_survey(now - timedelta(days=31))
    ResponseFactory(survey=survey)
    real = governance_engine.hard_delete_survey
    outcomes = []

    def hold_arrives_first(survey_id, **kwargs):
        # The run selected this survey; a legal hold lands before it takes the row lock.
        place_legal_hold(Survey.objects.get(pk=survey_id), reason="Subpoena", authority="Court", now=now)
        result = real(survey_id, **kwargs)
        outcomes.append(result.outcome)
        return result

    monkeypatch.setattr(governance_engine, "hard_delete_survey", hold_arrives_first)
    report = run_data_governance(now=now)

    assert outcomes == [DeletionOutcome.ON_HOLD]
    assert report.hard_deleted == []
    assert SurveyResponse.objects.filter(survey=survey).count() == 1
    assert not AuditEvent.objects.filter(action=Action.HARD_DELETED).exists()


def test_soft_deletion_rechecks_under_the_lock_a_survey_extended_after_selection_is_left_alone(
    smtp_server, now, monkeypatch
):
    survey = closed_survey(now - timedelta(hours=2))
    real = governance_engine.soft_delete_survey
    outcomes = []

    def extended_first(survey_id, **kwargs):
        survey = Survey.objects.get(pk=survey_id)
        survey.deletion_date = now + timedelta(days=20)  # e.g. an admin's change committed meanwhile
        survey.save(update_fields=["deletion_date"])
        result = real(survey_id, **kwargs)
        outcomes.append(result.outcome)
        return result

    monkeypatch.setattr(governance_engine, "soft_delete_survey", extended_first)
    report = run_data_governance(now=now)

    assert outcomes == [DeletionOutcome.NOT_DUE]
    assert report.soft_deleted == []
    survey.refresh_from_db()
    assert survey.deleted_at is None


def test_a_repeated_hard_deletion_finds_nothing_and_says_so(now):
    survey = soft_deleted_survey(now - timedelta(days=31))
    assert hard_delete_survey(survey.pk, now=now).outcome is DeletionOutcome.DELETED
    assert hard_delete_survey(survey.pk, now=now).outcome is DeletionOutcome.MISSING
    assert AuditEvent.objects.filter(action=Action.HARD_DELETED).count() == 1


def test_a_held_survey_is_not_hard_deleted_when_called_directly(now):
    survey = soft_deleted_survey(now - timedelta(days=31))
    active_hold(survey)
    assert hard_delete_survey(survey.pk, now=now).outcome is DeletionOutcome.ON_HOLD
    assert Survey.objects.filter(pk=survey.pk).exists()


# --- R12 -----------------------------------------------------------------------------------------

TRIGGER = "test_injected_response_delete_failure"


def refuse_deleting_responses_of(survey_id):
    """Fault injection in the database itself: deleting this survey's responses raises, nothing else does."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"CREATE FUNCTION {TRIGGER}() RETURNS trigger AS $$ BEGIN "
                f"IF OLD.survey_id = {int(survey_id)} THEN RAISE EXCEPTION 'injected failure for survey %', "
                "OLD.survey_id; END IF; RETURN OLD; END; $$ LANGUAGE plpgsql"
            )
            cursor.execute(f"CREATE TRIGGER {TRIGGER} BEFORE DELETE ON surveys_surveyresponse "
                           f"FOR EACH ROW EXECUTE FUNCTION {TRIGGER}()")
        else:
            cursor.execute(
                f"CREATE TRIGGER {TRIGGER} BEFORE DELETE ON surveys_surveyresponse WHEN OLD.survey_id = {int(survey_id)} "
                f"BEGIN SELECT RAISE(ABORT, 'injected failure for survey {int(survey_id)}'); END"
            )


def test_one_survey_failing_mid_batch_never_stops_the_others_and_fails_the_run(smtp_server, now):
    doomed = [soft_deleted_survey(now - timedelta(days=31 + i), name=f"Expired {i}") for i in range(5)]
    for survey in doomed:
        ResponseFactory(survey=survey)
        draft(survey, now - timedelta(days=40), expires_at=now + timedelta(days=10))
    due = [closed_survey(now - timedelta(hours=1)) for _ in range(2)]
    failing = doomed[2]
    refuse_deleting_responses_of(failing.pk)

    with time_machine.travel(now, tick=False):
        result = run_command("process_data_governance", "--batch-size", "1")

    assert result.returncode == 1
    assert "1 item(s) failed" in str(result.error)
    assert f"FAILED hard_delete {failing.pk}: " in result.err and "injected failure" in result.err
    # The others, before and after it in the batch order, were processed.
    assert "Hard deleted: 4 surveys" in result.out
    assert "Soft deleted: 2 surveys" in result.out
    assert list(Survey.objects.filter(pk__in=[s.pk for s in doomed])) == [failing]
    assert all(Survey.objects.get(pk=s.pk).deleted_at == now for s in due)
    # What failed was rolled back whole: its draft, deleted before the responses, is still there.
    assert SurveyResponse.objects.filter(survey=failing).count() == 1
    assert SurveyProgress.objects.filter(survey=failing).count() == 1
    assert not AuditEvent.objects.filter(survey_id=failing.pk, action=Action.HARD_DELETED).exists()
    run = GovernanceRun.objects.get()
    assert run.status == GovernanceRun.Status.FAILED and run.finished_at is not None
    assert run.counts["hard_deleted"] == 4 and run.counts["failed_items"] == 1
    item = RunItem.objects.get(run=run, outcome=RunItem.Outcome.FAILED)
    assert (item.kind, item.object_id) == ("hard_delete", failing.pk)
    assert "injected failure" in item.error
    assert run.details["failures"][0]["id"] == failing.pk


def test_a_failed_survey_is_retried_by_the_next_run(smtp_server, now, monkeypatch):
    surveys = [closed_survey(now - timedelta(hours=1)) for _ in range(3)]
    real, calls = governance_engine.soft_delete_survey, []

    def fails_once_for_the_middle_one(survey_id, **kwargs):
        calls.append(survey_id)
        if survey_id == surveys[1].pk and calls.count(survey_id) == 1:
            raise RuntimeError("connection reset while deleting drafts")
        return real(survey_id, **kwargs)

    monkeypatch.setattr(governance_engine, "soft_delete_survey", fails_once_for_the_middle_one)
    first = run_data_governance(now=now, batch_size=1)
    second = run_data_governance(now=now + timedelta(hours=1), batch_size=1)

    assert [line.id for line in first.soft_deleted] == [surveys[0].pk, surveys[2].pk]
    assert first.status == GovernanceRun.Status.FAILED
    assert [line.id for line in second.soft_deleted] == [surveys[1].pk]
    assert second.status == GovernanceRun.Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no row locks; PostgreSQL shows the wait")
def test_a_hold_committed_while_the_hard_deletion_waits_for_the_row_lock_wins(now):
    survey = soft_deleted_survey(now - timedelta(days=31))
    ResponseFactory(survey=survey)
    hold_locked, commit_hold, outcome = threading.Event(), threading.Event(), []

    def place_hold_and_wait():
        # place_legal_hold's own steps, held open so the deletion has to queue behind the row lock.
        try:
            with transaction.atomic():
                Survey.objects.select_for_update().get(pk=survey.pk)
                LegalHold.objects.create(survey_id=survey.pk, survey_name=survey.name, reason="Subpoena",
                                         authority="Court")
                hold_locked.set()
                commit_hold.wait(10)
        finally:
            connections.close_all()

    def delete():
        try:
            outcome.append(hard_delete_survey(survey.pk, now=now).outcome)
        finally:
            connections.close_all()

    holder = threading.Thread(target=place_hold_and_wait)
    holder.start()
    assert hold_locked.wait(10)
    deleter = threading.Thread(target=delete)
    deleter.start()
    with connection.cursor() as cursor:
        for _ in range(1000):  # until the deletion is seen waiting for the lock (at most ~10 s)
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND datname = current_database()")
            if cursor.fetchone()[0]:
                break
            commit_hold.wait(0.01)
        else:
            pytest.fail("the hard deletion never waited for the survey's row lock")
    commit_hold.set()
    holder.join(10)
    deleter.join(10)

    assert outcome == [DeletionOutcome.ON_HOLD]
    assert SurveyResponse.objects.filter(survey_id=survey.pk).count() == 1
