"""Hard deletions recorded outside the database (issue 12), so a restored backup cannot quietly bring them back.

The record is tied to the database it came from, and to each survey's creation time: a fresh or different
database, or a new survey that is given a recorded id, is never refused nor deleted by a replay.
"""

import json
import os
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from checktick_app.audit.models import AuditEvent, DatabaseIdentity, database_identity
from checktick_app.governance import deletion_record
from checktick_app.governance.deletion import hard_delete_survey
from checktick_app.governance.services import run_data_governance
from checktick_app.surveys.models import Survey, SurveyResponse
from tests.domain.helpers import run_command
from tests.factories import ResponseFactory, soft_deleted_survey

pytestmark = pytest.mark.django_db


def record_lines(folder):
    path = folder / deletion_record.RECORD_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def bring_back(line, name="Restored"):
    """What a restore does: the row is there again, exactly as it was (same id, same creation time)."""
    from datetime import datetime

    return Survey.objects.create(pk=line["survey_id"], name=name, status="closed",
                                 created_at=datetime.fromisoformat(line["survey_created_at"]),
                                 deletion_date=datetime.fromisoformat(line["deleted_at"]) - timedelta(days=60),
                                 closed_at=datetime.fromisoformat(line["deleted_at"]) - timedelta(days=240))


@pytest.fixture
def deleted(now, deletion_record_dir, django_capture_on_commit_callbacks):
    """A survey hard-deleted by a night's run, and its line in the record (written as the deletion commits)."""
    survey = soft_deleted_survey(now - timedelta(days=31), name="Personal survey name")
    ResponseFactory(survey=survey)
    with django_capture_on_commit_callbacks(execute=True):
        run_data_governance(now=now)
    assert not Survey.objects.filter(pk=survey.pk).exists()
    [line] = record_lines(deletion_record_dir)
    return survey, line


def test_each_hard_deletion_is_recorded_outside_the_database_with_nothing_personal(deleted, now):
    survey, line = deleted
    assert line == {"database": database_identity(), "survey_id": survey.pk,
                    "survey_created_at": survey.created_at.isoformat(), "deleted_at": now.isoformat(),
                    "run_id": AuditEvent.objects.get(action="hard_deleted").run_id}
    assert "Personal" not in json.dumps(line)
    assert oct(os.stat(deletion_record.record_path()).st_mode & 0o777) == "0o640"


def test_a_deletion_that_rolls_back_is_not_recorded(now, deletion_record_dir, django_capture_on_commit_callbacks):
    survey = soft_deleted_survey(now - timedelta(days=31))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            assert hard_delete_survey(survey.pk, now=now).deleted
            raise RuntimeError("the surrounding transaction fails after the deletion")
    assert callbacks == []
    assert Survey.objects.filter(pk=survey.pk).exists()
    assert record_lines(deletion_record_dir) == []


def test_a_run_is_refused_while_the_database_holds_a_recorded_deletion_naming_the_command(deleted, now):
    _, line = deleted
    bring_back(line)
    with pytest.raises(ImproperlyConfigured) as refused:
        run_data_governance(now=now + timedelta(days=1))
    assert f"(ids {line['survey_id']})" in str(refused.value)
    assert "Run `python manage.py replay_deletions` first." in str(refused.value)
    result = run_command("process_data_governance")
    assert result.returncode == 2 and "replay_deletions" in str(result.error)


def test_replay_deletes_the_survey_again_through_the_hard_delete_service_audited_as_replayed(deleted, now):
    _, line = deleted
    restored = bring_back(line)
    SurveyResponse.objects.create(survey=restored, answers={"q": "back from the backup"})
    dry = run_command("replay_deletions", "--dry-run")
    assert f"Would delete again: survey {line['survey_id']}" in dry.out
    assert Survey.objects.filter(pk=line["survey_id"]).exists()

    result = run_command("replay_deletions")
    assert result.returncode == 0
    assert f"Deleted again: survey {line['survey_id']} (first hard-deleted {line['deleted_at']}" in result.out
    assert not Survey.objects.filter(pk=line["survey_id"]).exists()
    assert not SurveyResponse.objects.filter(survey_id=line["survey_id"]).exists()
    replayed = AuditEvent.objects.get(action="deletion_replayed")
    assert replayed.details["originally_deleted_at"] == line["deleted_at"]
    assert replayed.details["removed"]["responses"] == 1
    assert run_command("verify_audit_log").returncode == 0
    run_data_governance(now=now + timedelta(days=1))  # no longer refused


def test_a_new_survey_given_a_recorded_id_is_neither_refused_nor_replayed(deleted, now):
    _, line = deleted
    newcomer = Survey.objects.create(pk=line["survey_id"], name="A new survey, same id", status="published")
    assert deletion_record.undone_deletions() == []
    assert "Nothing to replay" in run_command("replay_deletions").out
    run_data_governance(now=now + timedelta(days=1))
    assert Survey.objects.filter(pk=newcomer.pk).exists()


def test_a_different_database_beside_an_old_record_is_neither_refused_nor_replayed(deleted, now):
    _, line = deleted
    DatabaseIdentity.objects.all().delete()
    DatabaseIdentity.objects.create()  # another database (or a fresh one) with the same ids
    bring_back(line, name="Same id, other database")
    assert deletion_record.undone_deletions() == []
    run_data_governance(now=now + timedelta(days=1))
    assert Survey.objects.filter(pk=line["survey_id"]).exists()


def test_the_database_identity_is_written_at_migrate_time():
    with connection.cursor() as cursor:
        cursor.execute("SELECT uuid FROM audit_databaseidentity")
        [(written,)] = cursor.fetchall()
    assert database_identity() == str(DatabaseIdentity.objects.get().uuid)
    assert str(written).replace("-", "") == database_identity().replace("-", "")


def test_a_record_folder_that_cannot_be_written_stops_the_run_naming_the_setting(settings, tmp_path, now):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the folder should be")
    settings.CHECKTICK_DELETION_RECORD_DIR = str(blocked)
    with pytest.raises(ImproperlyConfigured, match="CHECKTICK_DELETION_RECORD_DIR"):
        run_data_governance(now=now)
