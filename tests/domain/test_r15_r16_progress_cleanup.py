"""R15 (a draft's expiry follows its last write; one owner; submit removes it) and R16 (the cleanup)."""

from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.test.utils import CaptureQueriesContext
from django.db import connection

from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.services import delete_expired_drafts, run_progress_cleanup
from checktick_app.surveys.models import SurveyProgress, SurveyResponse
from checktick_app.surveys.services import save_progress, submit_response
from tests.domain.helpers import run_command, run_command_ok
from tests.factories import SurveyFactory, TokenFactory, UserFactory, draft

pytestmark = pytest.mark.django_db


# --- R15 -----------------------------------------------------------------------------------------

def test_every_write_of_a_draft_pushes_its_expiry_thirty_days_past_that_write(now):
    survey = SurveyFactory()
    user = UserFactory()

    first = save_progress(survey, {"q1": "a"}, user=user, now=now - timedelta(days=20))
    assert (first.updated_at, first.expires_at) == (now - timedelta(days=20), now + timedelta(days=10))

    again = save_progress(survey, {"q1": "a", "q2": "b"}, user=user, now=now)

    assert again.pk == first.pk
    again.refresh_from_db()
    assert again.data == {"q1": "a", "q2": "b"}
    assert (again.updated_at, again.expires_at) == (now, now + timedelta(days=30))
    assert not SurveyProgress.objects.expired(now + timedelta(days=29)).exists()
    assert SurveyProgress.objects.expired(now + timedelta(days=30, seconds=1)).exists()


@pytest.mark.parametrize("kind", ["user", "session", "token"])
def test_submitting_a_response_deletes_its_draft_and_no_other(now, kind):
    survey = SurveyFactory()
    owner = {"user": {"user": UserFactory()}, "session": {"session_key": "sess-1"},
             "token": {"access_token": TokenFactory(survey=survey)}}[kind]
    save_progress(survey, {"q1": "half"}, **owner, now=now - timedelta(hours=1))
    other = save_progress(survey, {"q1": "half"}, session_key="someone-else", now=now - timedelta(hours=1))

    response = submit_response(survey, {"q1": "done"}, **owner, now=now)

    assert SurveyResponse.objects.get() == response
    assert list(SurveyProgress.objects.all()) == [other]


@pytest.mark.parametrize(
    "owner",
    [{}, {"both": ("user", "session_key")}, {"both": ("session_key", "access_token")}],
    ids=["no-owner", "user-and-session", "session-and-token"],
)
def test_a_draft_belongs_to_exactly_one_owner_in_the_database_and_in_save_progress(now, owner):
    survey = SurveyFactory()
    available = {"user": UserFactory(), "session_key": "sess", "access_token": TokenFactory(survey=survey)}
    given = {name: available[name] for name in owner.get("both", ())}

    with pytest.raises(IntegrityError), transaction.atomic():
        SurveyProgress.objects.create(survey=survey, expires_at=now, **given)
    with pytest.raises(ValidationError, match="exactly one"):
        save_progress(survey, {"q1": "a"}, now=now, **given)
    assert not SurveyProgress.objects.exists()


# --- R16 -----------------------------------------------------------------------------------------

def test_expired_drafts_are_those_past_expiry_or_untouched_for_ninety_days(now):
    survey = SurveyFactory()
    past_expiry = draft(survey, now - timedelta(days=31))                                  # expired 1 day ago
    at_expiry = draft(survey, now - timedelta(days=31), expires_at=now)                    # expires right now
    fresh = draft(survey, now - timedelta(days=29))
    stale = draft(survey, now - timedelta(days=91), expires_at=now + timedelta(days=300))  # safety net
    not_quite_stale = draft(survey, now - timedelta(days=90), expires_at=now + timedelta(days=300))

    expired = set(SurveyProgress.objects.expired(now))

    assert expired == {past_expiry, stale}
    assert {at_expiry, fresh, not_quite_stale}.isdisjoint(expired)
    assert set(SurveyProgress.objects.filter(expires_at__lt=now)) == {past_expiry}


def test_cleanup_deletes_expired_drafts_in_small_batches_and_counts_each_once_by_kind(now):
    survey = SurveyFactory()
    expired = [draft(survey, now - timedelta(days=40), kind=k) for k in ("user", "user", "token", "session", "session")]
    expired.append(draft(survey, now - timedelta(days=100), kind="token", expires_at=now + timedelta(days=5)))
    kept = [draft(survey, now - timedelta(days=2), kind=k) for k in ("user", "token", "session")]

    with CaptureQueriesContext(connection) as queries:
        report = delete_expired_drafts(now=now, batch_size=2)

    assert (report.found, report.deleted) == (6, 6)
    assert report.by_kind == {"user": 2, "token": 2, "session": 2}
    assert sum(report.by_kind.values()) == report.deleted
    assert set(SurveyProgress.objects.all()) == set(kept)
    deletes = [q["sql"] for q in queries.captured_queries if "DELETE FROM" in q["sql"].upper()]
    # Each batch is one DELETE ... RETURNING: three full batches of two, then one that finds none left.
    assert len(deletes) == 4, "six drafts in batches of two"


def test_dry_run_cleanup_counts_the_same_drafts_by_kind_and_deletes_nothing(now):
    survey = SurveyFactory()
    for kind in ("user", "token", "token", "session"):
        draft(survey, now - timedelta(days=40), kind=kind)
    draft(survey, now - timedelta(days=1))

    dry = run_progress_cleanup(now=now, dry_run=True)
    assert SurveyProgress.objects.count() == 5
    real = run_progress_cleanup(now=now)

    assert dry.found == real.deleted == 4
    assert dry.by_kind == real.by_kind == {"user": 1, "token": 2, "session": 1}
    assert SurveyProgress.objects.count() == 1


def test_cleanup_command_prints_the_seed_lines_with_real_counts(now):
    survey = SurveyFactory()
    for _ in range(3):
        draft(survey, now - timedelta(days=31))
    draft(survey, now - timedelta(days=3))

    with time_machine.travel(now, tick=False):
        output = run_command_ok("cleanup_survey_progress", "--batch-size", "1")

    assert output.splitlines() == [
        "Starting survey progress cleanup...",
        "Found 3 expired progress records (older than 30 days)",
        "Deleted 3 expired survey progress records",
        "Cleanup completed successfully",
    ]
    assert SurveyProgress.objects.count() == 1
    run = GovernanceRun.objects.get()
    assert run.job == GovernanceRun.Job.PROGRESS_CLEANUP and run.status == GovernanceRun.Status.SUCCEEDED
    assert run.counts["deleted"] == 3 and run.counts["deleted_session"] == 3


def test_cleanup_command_dry_run_reports_and_keeps_everything(now):
    survey = SurveyFactory()
    draft(survey, now - timedelta(days=31), kind="user")
    draft(survey, now - timedelta(days=31), kind="session")

    with time_machine.travel(now, tick=False):
        output = run_command_ok("cleanup_survey_progress", "--dry-run")

    assert "Found 2 expired progress records (older than 30 days)" in output
    assert "Would delete 2 expired survey progress records" in output
    assert "  - user: 1" in output and "  - session: 1" in output and "  - token: 0" in output
    assert SurveyProgress.objects.count() == 2
    assert GovernanceRun.objects.get().dry_run is True


def test_cleanup_command_refuses_a_zero_batch_size(now):
    result = run_command("cleanup_survey_progress", "--batch-size", "0")
    assert result.returncode == 2 and "--batch-size 0" in str(result.error)
    assert not GovernanceRun.objects.exists()
