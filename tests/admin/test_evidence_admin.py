"""Run history, audit log and warning ledger pages: what they show, search and filter."""

from datetime import timedelta

import pytest
import time_machine

from checktick_app.audit.services import Action, record_audit
from checktick_app.governance.models import DeletionWarning
from checktick_app.governance.runs import Job, Trigger, close_run, open_run, record_item
from checktick_app.governance.services import run_data_governance
from tests.factories import active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db


def test_run_history_lists_runs_with_trigger_duration_status_and_counts(client, operator, now):
    closed_survey(now - timedelta(hours=1), name="Overdue audit")
    with time_machine.travel(now, tick=False) as clock:
        run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, user=operator)
        clock.shift(timedelta(seconds=3.5))
        close_run(run, counts={"warnings": 2, "soft_deleted": 1, "hard_deleted": 0, "skipped_legal_hold": 1})
    client.force_login(operator)

    page = client.get("/admin/governance/governancerun/").content.decode()

    assert f"#{run.pk}" in page
    assert "admin (operator)" in page
    assert "2026-01-05 02:00:00" in page and "02:00:03" in page and "(3.5 s)" in page
    assert "warned\u00a02 · soft\u00a01 · hard\u00a00 · held\u00a01" in page
    assert 'run-status-succeeded">Succeeded' in page


def test_preview_page_lists_what_would_happen(client, operator, now):
    closed_survey(now + timedelta(days=5), name="Warned in 7-day window")
    closed_survey(now - timedelta(hours=1), name="Soft delete <me>")
    soft_deleted_survey(now - timedelta(days=31), name="Hard delete me")
    active_hold(closed_survey(now - timedelta(days=1), name="Held survey"))
    with time_machine.travel(now, tick=False):
        report = run_data_governance(dry_run=True)
    client.force_login(operator)

    page = client.get(f"/admin/governance/governancerun/{report.run_id}/change/").content.decode()

    assert "Preview (dry run)" in page and "changed and sent nothing" in page
    assert "Would send 7-day warnings (1)" in page and "Warned in 7-day window" in page
    assert "Would soft delete (1)" in page and "Soft delete &lt;me&gt;" in page  # escaped
    assert "Would hard delete (1)" in page and "Hard delete me" in page
    assert "Skipped (legal hold) (1)" in page and "Held survey" in page
    assert "Would send 30-day warnings (0)" in page


def test_a_running_run_page_refreshes_itself_and_a_finished_one_does_not(client, operator):
    run = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND)
    client.force_login(operator)

    running = client.get(f"/admin/governance/governancerun/{run.pk}/change/").content.decode()
    close_run(run, counts={"found": 3, "deleted": 3})
    finished = client.get(f"/admin/governance/governancerun/{run.pk}/change/").content.decode()

    assert '<meta http-equiv="refresh" content="2">' in running and "is in progress" in running
    assert "http-equiv" not in finished
    assert "Drafts deleted" in finished


def test_failed_items_are_shown_with_their_error_and_done_items_are_not(client, operator):
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
    record_item(run, "hard_delete", 17, "failed", "OperationalError: could not obtain lock")
    record_item(run, "soft_delete", 18, "done")
    close_run(run, counts={})
    client.force_login(operator)

    page = client.get(f"/admin/governance/governancerun/{run.pk}/change/").content.decode()

    assert "Failed items" in page
    failed = page.split("Failed items", 1)[1]
    assert "OperationalError: could not obtain lock" in failed and "Hard delete" in failed
    assert "Soft delete" not in failed


def test_audit_log_search_by_survey_id_and_name_and_filter_by_action_and_date(client, operator, now):
    first = closed_survey(now + timedelta(days=40), name="Diabetes audit")
    record_audit(Action.RETENTION_EXTENDED, survey=first, actor=operator, at=now - timedelta(days=10), months_added=2)
    record_audit(Action.HOLD_PLACED, survey_id=999, survey_name="Cardiology survey", actor=operator, at=now)
    client.force_login(operator)

    by_name = client.get("/admin/audit/auditevent/", {"q": "diabetes"})
    by_id = client.get("/admin/audit/auditevent/", {"q": "999"})
    by_action = client.get("/admin/audit/auditevent/", {"action__exact": "hold_placed"})
    since = f"{now - timedelta(days=1):%Y-%m-%d %H:%M:%S%z}"
    by_date = client.get("/admin/audit/auditevent/", {"created_at__gte": since})

    assert [e.survey_name for e in by_name.context["cl"].result_list] == ["Diabetes audit"]
    assert [e.survey_id for e in by_id.context["cl"].result_list] == [999]
    assert [e.action for e in by_action.context["cl"].result_list] == ["hold_placed"]
    assert [e.survey_id for e in by_date.context["cl"].result_list] == [999]


def test_warning_ledger_search_and_status_filter(client, operator, now):
    DeletionWarning.objects.create(survey_id=5, survey_name="Stroke audit", deletion_date=now, threshold_days=7,
                                   recipient_id=1, recipient_email="a@example.org", status="sent")
    DeletionWarning.objects.create(survey_id=6, survey_name="Asthma audit", deletion_date=now, threshold_days=30,
                                   recipient_id=1, recipient_email="a@example.org", status="failed")
    client.force_login(operator)

    by_id = client.get("/admin/governance/deletionwarning/", {"q": "6"})
    by_name = client.get("/admin/governance/deletionwarning/", {"q": "stroke"})
    failed = client.get("/admin/governance/deletionwarning/", {"status__exact": "failed"})

    assert [w.survey_id for w in by_id.context["cl"].result_list] == [6]
    assert [w.survey_id for w in by_name.context["cl"].result_list] == [5]
    assert [w.survey_name for w in failed.context["cl"].result_list] == ["Asthma audit"]
    assert "7-day warning" in by_name.content.decode()


def test_run_history_shows_the_health_verdict(client, operator):
    client.force_login(operator)

    page = client.get("/admin/governance/governancerun/").content.decode()

    assert 'id="governance-health"' in page and "unhealthy" in page
    assert "has never completed a real (non-dry-run) run" in page


def test_counts_are_listed_in_a_fixed_order_with_preview_wording(client, operator):
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND, dry_run=True)
    close_run(run, counts={"skipped_legal_hold": 1, "warnings_1d": 0, "soft_deleted": 2, "warnings_30d": 3,
                           "warnings": 3, "warnings_7d": 0, "emails_sent": 4})
    client.force_login(operator)

    page = client.get(f"/admin/governance/governancerun/{run.pk}/change/").content.decode()
    table = page.split('class="run-counts"', 1)[1].split("</table>", 1)[0]
    labels = [label for label in (
        "30-day warnings to send", "7-day warnings to send", "1-day warnings to send", "Surveys to warn",
        "Emails to send", "Would soft delete", "Skipped (legal hold)", "Failed items") if label in table]

    assert len(labels) == 8
    assert sorted(labels, key=table.index) == labels


def test_a_number_typed_into_the_run_history_url_search_does_not_break_it(client, operator):
    client.force_login(operator)

    assert client.get("/admin/governance/governancerun/", {"q": "12"}).status_code == 200


def test_a_preview_shows_what_would_be_sent_or_deleted_never_failures_or_deletions_of_zero(client, operator):
    governance = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND, dry_run=True)
    close_run(governance, counts={"warnings": 1, "emails_sent": 2, "emails_failed": 0, "soft_deleted": 1})
    cleanup = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND, dry_run=True)
    close_run(cleanup, counts={"found": 3, "deleted": 0, "deleted_user": 3, "deleted_token": 0,
                               "deleted_session": 0, "complete": True})
    client.force_login(operator)

    governance_page = client.get(f"/admin/governance/governancerun/{governance.pk}/change/").content.decode()
    cleanup_page = client.get(f"/admin/governance/governancerun/{cleanup.pk}/change/").content.decode()
    history = client.get("/admin/governance/governancerun/").content.decode()

    assert "Emails to send" in governance_page and "Emails failed" not in governance_page
    assert "Expired drafts to delete</th><td>3" in cleanup_page
    assert "Drafts deleted" not in cleanup_page and "of them, drafts of logged-in users</th><td>3" in cleanup_page
    assert "would\u00a0delete\u00a03" in history and "deleted\u00a00" not in history


def test_audit_entries_read_as_sentences_with_links_and_soft_deletion_notices_named(client, operator, now):
    from checktick_app.audit.models import AuditEvent
    from checktick_app.audit.services import record_audit

    run = close_run(open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND), counts={})
    survey = closed_survey(now - timedelta(days=1), name="Falls audit")
    record_audit(AuditEvent.Action.WARNING_SENT, survey=survey, run=run, at=now, threshold_days=0,
                 recipient_id=7, deletion_date=now.isoformat())
    client.force_login(operator)

    listing = client.get("/admin/audit/auditevent/").content.decode()
    event = AuditEvent.objects.get()
    detail = client.get(f"/admin/audit/auditevent/{event.pk}/change/").content.decode()

    assert "Soft-deletion notice sent" in listing and "threshold_days=0" not in listing
    assert "Warning: soft-deletion notice · Recipient (user id): 7 · Deletion date: 2026-01-05 02:00:00 UTC" in listing
    assert f'<a href="/admin/governance/governancerun/{run.pk}/change/">#{run.pk}</a>' in listing
    assert f'<a href="/admin/surveys/survey/{survey.pk}/change/">#{survey.pk} Falls audit</a>' in detail
    assert "2026-01-05 02:00:00" in listing  # the audit's own time, in the one date format


def test_a_survey_without_a_hold_shows_no_red_cross(client, operator, now):
    closed_survey(now + timedelta(days=3), name="Not held")
    client.force_login(operator)

    page = client.get("/admin/surveys/survey/").content.decode()

    assert "icon-no.svg" not in page
