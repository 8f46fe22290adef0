"""Surveys in the admin: retention visible, changed only through the audited services, answers never shown."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from checktick_app.audit.models import AuditEvent
from checktick_app.surveys.models import LegalHold, RetentionExtension, Survey
from tests.factories import ResponseFactory, active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db


def change_url(survey, suffix="change"):
    return f"/admin/surveys/survey/{survey.pk}/{suffix}/"


@pytest.fixture
def survey():
    return closed_survey(timezone.now() + timedelta(days=20), name="Sepsis audit", retention_months=6)


def test_list_shows_retention_fields_hold_and_response_count_but_no_answers(client, operator, survey):
    active_hold(survey)
    ResponseFactory(survey=survey, answers={"q1": "patient said something private"})
    ResponseFactory(survey=survey)
    client.force_login(operator)

    page = client.get("/admin/surveys/survey/").content.decode()

    for heading in ("Status", "Closed", "Months", "Deletion", "Soft-deleted", "Hard deletion", "Hold",
                    "Responses"):
        assert heading in page
    row = client.get("/admin/surveys/survey/").context["cl"].result_list[0]
    assert row._active_hold is True and row._responses == 2
    assert "private" not in page
    assert "private" not in client.get(change_url(survey)).content.decode()
    assert client.get("/admin/surveys/surveyresponse/").status_code == 404


def test_soft_deleted_filter_and_hold_filter(client, operator, survey):
    gone = soft_deleted_survey(timezone.now() - timedelta(days=2), name="Old audit")
    active_hold(survey)
    client.force_login(operator)

    soft = client.get("/admin/surveys/survey/", {"soft_deleted": "yes"}).context["cl"].result_list
    live = client.get("/admin/surveys/survey/", {"soft_deleted": "no"}).context["cl"].result_list
    held = client.get("/admin/surveys/survey/", {"hold": "active"}).context["cl"].result_list
    by_id = client.get("/admin/surveys/survey/", {"q": str(gone.pk)}).context["cl"].result_list

    assert [s.name for s in soft] == ["Old audit"]
    assert [s.name for s in live] == ["Sepsis audit"]
    assert [s.name for s in held] == ["Sepsis audit"]
    assert [s.name for s in by_id] == ["Old audit"]


def test_retention_dates_cannot_be_edited_directly(client, survey):
    admin = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    client.force_login(admin)
    before = Survey.objects.get(pk=survey.pk)

    response = client.post(change_url(survey), {
        "name": "Sepsis audit (renamed)", "owner": survey.owner_id, "organisation": "",
        "deletion_date_0": "2030-01-01", "deletion_date_1": "00:00:00", "deleted_at_0": "2020-01-01",
        "deleted_at_1": "00:00:00", "retention_months": "24", "status": "published",
        "legal_holds-TOTAL_FORMS": "0", "legal_holds-INITIAL_FORMS": "0",
        "retention_extensions-TOTAL_FORMS": "0", "retention_extensions-INITIAL_FORMS": "0",
    })

    assert response.status_code == 302, response.content.decode()[:2000]
    after = Survey.objects.get(pk=survey.pk)
    assert after.name == "Sepsis audit (renamed)"
    assert (after.deletion_date, after.deleted_at, after.retention_months, after.status) == (
        before.deletion_date, None, 6, "closed")


def test_surveys_cannot_be_added_or_deleted_in_the_admin(client, survey):
    admin = get_user_model().objects.create_superuser("root", "root@example.org", "pw")
    client.force_login(admin)

    assert client.get("/admin/surveys/survey/add/").status_code == 403
    assert client.post(change_url(survey, "delete"), {"post": "yes"}).status_code == 403
    assert Survey.objects.filter(pk=survey.pk).exists()


def test_extend_retention_over_the_maximum_shows_the_service_error(client, operator, survey):
    client.force_login(operator)

    response = client.post(change_url(survey, "extend-retention"), {"months": "30", "reason": "Research"})

    assert response.status_code == 200
    assert "Retention would become 36 months; the maximum is 24" in response.content.decode()
    assert response.context["form"].errors["months"]
    survey.refresh_from_db()
    assert survey.retention_months == 6 and not RetentionExtension.objects.exists()


def test_extend_retention_needs_a_reason(client, operator, survey):
    client.force_login(operator)

    response = client.post(change_url(survey, "extend-retention"), {"months": "2", "reason": "  "})

    assert response.context["form"].errors["reason"] == ["This field is required."]
    assert not RetentionExtension.objects.exists()


def test_extend_retention_calls_the_service_and_audits_the_operator(client, operator, survey):
    client.force_login(operator)
    old = survey.deletion_date

    response = client.post(change_url(survey, "extend-retention"), {"months": "2", "reason": "Follow-up study"})

    assert response.status_code == 302 and response["Location"] == change_url(survey)
    survey.refresh_from_db()
    assert survey.retention_months == 8 and survey.deletion_date > old
    extension = RetentionExtension.objects.get()
    assert (extension.extended_by, extension.months_added, extension.reason) == (operator, 2, "Follow-up study")
    event = AuditEvent.objects.get(action="retention_extended")
    assert (event.actor, event.survey_id) == ("operator", survey.pk)


def test_extending_a_live_survey_shows_the_reason_it_is_refused(client, operator):
    live = Survey.objects.create(name="Live one", status=Survey.Status.PUBLISHED)
    client.force_login(operator)

    response = client.post(change_url(live, "extend-retention"), {"months": "2", "reason": "x"})

    assert "Only a closed survey has a retention period to extend." in response.content.decode()


def test_a_soft_deleted_survey_is_restored_with_an_extension(client, operator):
    gone = soft_deleted_survey(timezone.now() - timedelta(days=2), name="Old audit")
    client.force_login(operator)

    page = client.get(change_url(gone)).content.decode()
    response = client.post(change_url(gone, "extend-retention"), {"months": "3", "reason": "Audit reopened"})

    assert "Restore (with extension)" in page
    assert response.status_code == 302
    gone.refresh_from_db()
    assert gone.deleted_at is None and gone.deletion_date > timezone.now()
    assert AuditEvent.objects.get(action="restored").actor == "operator"


def test_place_a_legal_hold_needs_reason_and_authority(client, operator, survey):
    client.force_login(operator)

    response = client.post(change_url(survey, "place-legal-hold"), {"reason": "Litigation", "authority": ""})

    assert response.context["form"].errors["authority"] == ["This field is required."]
    assert not LegalHold.objects.exists()


def test_place_and_remove_a_legal_hold_are_audited_with_the_operator(client, operator, survey):
    client.force_login(operator)

    placed = client.post(change_url(survey, "place-legal-hold"),
                         {"reason": "Coroner's inquest", "authority": "HM Coroner"})
    page = client.get(change_url(survey)).content.decode()
    hold = LegalHold.objects.get()
    no_reason = client.post(change_url(survey, "remove-legal-hold"), {"hold": hold.pk, "reason": ""})
    removed = client.post(change_url(survey, "remove-legal-hold"), {"hold": hold.pk, "reason": "Inquest closed"})

    assert placed.status_code == 302 and removed.status_code == 302
    assert "Remove legal hold" in page and "Coroner&#x27;s inquest" in page  # listed in the hold history
    assert no_reason.context["form"].errors["reason"]
    hold.refresh_from_db()
    assert (hold.placed_by, hold.removed_by, hold.removal_reason) == (operator, operator, "Inquest closed")
    assert [(e.action, e.actor) for e in AuditEvent.objects.order_by("pk")] == [
        ("hold_placed", "operator"), ("hold_removed", "operator")]


def test_removing_when_no_hold_is_active_says_so(client, operator, survey):
    client.force_login(operator)

    response = client.get(change_url(survey, "remove-legal-hold"), follow=True)

    assert "has no active legal hold" in response.content.decode()


def test_hold_and_extension_history_is_read_only(client, operator, survey):
    hold = active_hold(survey)
    client.force_login(operator)

    assert client.get("/admin/surveys/legalhold/").status_code == 200
    assert client.get("/admin/surveys/legalhold/add/").status_code == 403
    assert client.post(f"/admin/surveys/legalhold/{hold.pk}/change/", {"reason": "edited"}).status_code == 403
    assert client.post(f"/admin/surveys/legalhold/{hold.pk}/delete/", {"post": "yes"}).status_code == 403
    assert client.get("/admin/surveys/retentionextension/add/").status_code == 403


def test_retention_forms_need_their_permissions(client, viewer, staff_without_permission, survey):
    client.force_login(staff_without_permission)  # may view surveys, may not change retention
    assert client.get(change_url(survey, "extend-retention")).status_code == 403
    assert client.get(change_url(survey, "place-legal-hold")).status_code == 403
    assert "Extend retention" not in client.get(change_url(survey)).content.decode()


def test_changelist_action_leads_to_the_form_for_one_survey(client, operator, survey):
    client.force_login(operator)

    response = client.post("/admin/surveys/survey/", {"action": "place_hold_action", "_selected_action": [survey.pk]})

    assert response.status_code == 302 and response["Location"] == change_url(survey, "place-legal-hold")


def test_organisations_list_counts_members_and_surveys(client, operator):
    from tests.factories import MembershipFactory, SurveyFactory

    membership = MembershipFactory()
    SurveyFactory(organisation=membership.organisation)
    client.force_login(operator)

    row = client.get("/admin/surveys/organisation/").context["cl"].result_list[0]

    assert (row._members, row._surveys) == (1, 1)
