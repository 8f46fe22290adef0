"""The seed's shell snippets (SPEC "Data model"), bad command input (R8/R19 commands), and query counts.

The query-count tests pin the SPEC's "one query per survey" weak point: selecting who and what is
due is a fixed number of queries per batch, whatever the number of surveys in it.
"""

from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from checktick_app.governance.deletion import hard_delete_survey, soft_delete_survey
from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.services import run_data_governance
from checktick_app.governance.emails import recipients_for
from checktick_app.surveys.models import LegalHold, Survey, SurveyProgress
from tests.domain.helpers import run_command
from tests.factories import (
    ExportFactory, MembershipFactory, OrganisationFactory, ResponseFactory, SurveyFactory, active_hold, closed_survey,
    draft, soft_deleted_survey,
)

pytestmark = pytest.mark.django_db


# --- The seed's snippets -------------------------------------------------------------------------

def test_the_seed_shell_snippets_return_the_expected_rows(now):
    live = SurveyFactory()
    due = closed_survey(now - timedelta(days=1))
    future = closed_survey(now + timedelta(days=10))
    soft = soft_deleted_survey(now - timedelta(days=5))
    held = closed_survey(now - timedelta(days=2))
    active_hold(held)
    released = closed_survey(now + timedelta(days=50))
    hold = active_hold(released)
    hold.removed_at = now - timedelta(days=1)
    hold.removal_reason = "Closed"
    hold.save()
    old_draft = draft(live, now - timedelta(days=40))
    draft(live, now - timedelta(days=1))

    with time_machine.travel(now, tick=False):
        assert list(Survey.objects.filter(deleted_at__isnull=False)) == [soft]
        assert list(Survey.objects.filter(legal_hold__removed_at__isnull=True)) == [held]
        assert list(SurveyProgress.objects.filter(expires_at__lt=timezone.now())) == [old_draft]
        assert set(Survey.objects.filter(deletion_date__lte=timezone.now(), deleted_at__isnull=True)) == {due, held}
        assert set(Survey.objects.filter(deletion_date__isnull=False, retention_months=6)) == {
            due, future, soft, held, released}
        assert set(LegalHold.objects.filter(removed_at__isnull=True).values_list("survey_id", flat=True)) == {held.pk}
    assert set(SurveyProgress.objects.values_list("user", "session_key", "access_token", "expires_at").filter(
        pk=old_draft.pk)) == {(None, old_draft.session_key, None, old_draft.expires_at)}


# --- Bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["process_data_governance", "cleanup_survey_progress"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--dry-rn"], "unrecognized arguments: --dry-rn"),
        (["--verbose", "--verbosity", "0"], "--verbose and --verbosity 0 contradict each other"),
        (["--batch-size", "0"], "--batch-size 0 is out of range"),
        (["--batch-size", "10001"], "--batch-size 10001 is out of range"),
        (["--batch-size", "lots"], "invalid int value: 'lots'"),
    ],
    ids=["unknown-flag", "verbose-and-silent", "zero-batch", "huge-batch", "non-numeric-batch"],
)
def test_bad_flags_are_a_clear_command_error_and_start_no_run(smtp_server, now, command, args, message):
    due = closed_survey(now - timedelta(days=1))
    with time_machine.travel(now, tick=False):
        result = run_command(command, *args)
    assert result.error is not None and result.returncode != 0
    assert message in str(result.error)
    assert not GovernanceRun.objects.exists()
    due.refresh_from_db()
    assert due.deleted_at is None


# --- Query counts --------------------------------------------------------------------------------

def make_world(n, now):
    """n surveys of every kind a run acts on, each with an organisation, an owner and two admins."""
    for _ in range(n):
        org = OrganisationFactory()
        MembershipFactory.create_batch(2, organisation=org)
        closed_survey(now + timedelta(days=20), organisation=org)
        closed_survey(now + timedelta(days=5), organisation=org)
        closed_survey(now - timedelta(hours=1), organisation=org)
        soft_deleted_survey(now - timedelta(days=31), organisation=org)
        active_hold(closed_survey(now - timedelta(days=1), organisation=org))


def count_queries(fn):
    with CaptureQueriesContext(connection) as queries:
        fn()
    return len(queries.captured_queries)


@pytest.mark.parametrize("size", [1, 5, 40])
def test_recipients_for_a_batch_take_exactly_three_queries_whatever_its_size(now, size, django_assert_num_queries):
    make_world(size, now)
    ids = list(Survey.objects.values_list("pk", flat=True))
    with django_assert_num_queries(3):
        found = recipients_for(ids)
    assert all(len(found[i]) == 4 for i in ids), "owner, org owner and two admins for every survey"


def test_each_due_rule_is_one_query(now, django_assert_num_queries):
    make_world(3, now)
    with django_assert_num_queries(6):
        assert len(list(Survey.objects.due_for_warning(now, 30))) == 3
        assert len(list(Survey.objects.due_for_warning(now, 7))) == 3
        assert len(list(Survey.objects.due_for_soft_delete(now))) == 3
        assert len(list(Survey.objects.due_for_hard_delete(now))) == 3
        assert len(list(Survey.objects.held_back(now))) == 3
        assert len(list(SurveyProgress.objects.expired(now))) == 0


def test_a_dry_run_takes_the_same_number_of_queries_for_2_or_12_surveys_per_kind(now):
    make_world(2, now)
    small = count_queries(lambda: run_data_governance(now=now, dry_run=True))
    make_world(10, now)
    report = None

    def large_run():
        nonlocal report
        report = run_data_governance(now=now, dry_run=True)

    large = count_queries(large_run)

    assert len(report.soft_deleted) == len(report.hard_deleted) == len(report.held) == 12
    assert large == small


def test_a_real_run_costs_a_fixed_number_of_queries_per_email_and_per_survey(smtp_server, now):
    """Linear in the work (emails, deletions): each extra survey of each kind adds the same cost."""

    def run_with(n):
        Survey.objects.all().delete()  # a fresh set of n surveys per kind (the evidence has no foreign key)
        make_world(n, now)
        return count_queries(lambda: run_data_governance(now=now))

    q2, q4, q6 = run_with(2), run_with(4), run_with(6)
    # 4 recipients for each 30-day warning, 7-day warning and soft-deletion notice.
    assert len(smtp_server.messages) == (2 + 4 + 6) * 3 * 4
    assert q4 - q2 == q6 - q4 > 0


@pytest.mark.parametrize("deletion", ["soft", "hard"])
def test_deleting_a_survey_is_set_based_whatever_the_number_of_rows_hanging_off_it(now, deletion):
    def survey_with(rows):
        survey = soft_deleted_survey(now - timedelta(days=31)) if deletion == "hard" else closed_survey(now)
        ResponseFactory.create_batch(rows, survey=survey)
        ExportFactory.create_batch(rows, survey=survey)
        for _ in range(rows):
            draft(survey, now - timedelta(days=1), kind="token")
            draft(survey, now - timedelta(days=1), kind="session")
        return survey

    few, many = survey_with(1), survey_with(25)
    act = hard_delete_survey if deletion == "hard" else soft_delete_survey
    with CaptureQueriesContext(connection) as few_queries:
        assert act(few.pk, now=now).deleted
    with CaptureQueriesContext(connection) as many_queries:
        result = act(many.pk, now=now)
    assert result.deleted
    assert result.removed["progress"] == 50
    assert len(many_queries.captured_queries) == len(few_queries.captured_queries)
