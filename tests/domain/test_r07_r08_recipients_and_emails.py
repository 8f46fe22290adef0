"""R7 (who is told) and R8 (one email per recipient, what it says, and the configuration it needs).

Every email here goes through Django's SMTP backend to a real aiosmtpd server (`smtp_server`).
"""

from datetime import timedelta

import pytest
import time_machine

from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning, GovernanceRun
from checktick_app.governance.services import run_data_governance
from checktick_app.governance.emails import NO_ADDRESS, recipients_for
from checktick_app.surveys.models import OrganisationMembership
from tests.domain.helpers import everything_readable, run_command, run_command_ok, text_and_html
from tests.factories import (
    MembershipFactory, OrganisationFactory, ResponseFactory, UserFactory, closed_survey, draft,
)

pytestmark = pytest.mark.django_db

Role = OrganisationMembership.Role
SECRET_ANSWER = "ZEBRA-4711 patient has rare condition"


# --- R7 ------------------------------------------------------------------------------------------

@pytest.fixture
def cast():
    """A survey whose organisation has every kind of member, and a few awkward users."""
    owner = UserFactory(username="owner", email="Owner@Example.org")
    org = OrganisationFactory(owner=UserFactory(username="orgowner", email="orgowner@example.org"))
    admin = MembershipFactory(organisation=org, user=UserFactory(username="admin", email="admin@example.org")).user
    # The same person as the owner, by address, in another case: told once.
    MembershipFactory(organisation=org, user=UserFactory(username="owner2", email="OWNER@example.ORG"))
    for role in (Role.CREATOR, Role.VIEWER, Role.DATA_CUSTODIAN):
        MembershipFactory(organisation=org, role=role, user=UserFactory(username=f"{role}", email=f"{role}@example.org"))
    MembershipFactory(organisation=org, user=UserFactory(username="gone", email="gone@example.org", is_active=False))
    no_address = MembershipFactory(organisation=org, user=UserFactory(username="noaddress", email="")).user
    return {"owner": owner, "org": org, "admin": admin, "no_address": no_address}


def test_recipients_are_the_owner_the_org_owner_and_active_admins_deduplicated_by_address(cast, now):
    survey = closed_survey(now + timedelta(days=7), owner=cast["owner"], organisation=cast["org"])

    recipients = recipients_for([survey.pk])[survey.pk]

    addresses = sorted(r.email.lower() for r in recipients)
    assert addresses == ["", "admin@example.org", "orgowner@example.org", "owner@example.org"]
    assert cast["no_address"].pk in {r.user_id for r in recipients}
    # The lowest user id keeps the address: the owner, created first.
    assert cast["owner"].pk in {r.user_id for r in recipients}


def test_one_email_per_recipient_and_a_recipient_without_address_is_a_skipped_ledger_row(smtp_server, cast, now):
    survey = closed_survey(now + timedelta(days=7), owner=cast["owner"], organisation=cast["org"])

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance")

    assert smtp_server.recipients == ["admin@example.org", "orgowner@example.org", "owner@example.org"]
    assert all(len(rcpts) == 1 for rcpts, _ in smtp_server.messages), "one email per recipient"
    assert all(message["To"].lower() == rcpts[0].lower() for rcpts, message in smtp_server.messages)
    skipped = DeletionWarning.objects.get(survey_id=survey.pk, status=DeletionWarning.Status.SKIPPED)
    assert skipped.recipient_id == cast["no_address"].pk
    assert skipped.skip_reason == NO_ADDRESS
    assert DeletionWarning.objects.filter(survey_id=survey.pk, status=DeletionWarning.Status.SENT).count() == 3
    assert "(3 emails sent, 0 failed, 1 recipients skipped without an address)" in output
    assert GovernanceRun.objects.get().counts["recipients_skipped"] == 1


def test_inactive_owner_and_inactive_org_owner_are_not_told(smtp_server, now):
    org = OrganisationFactory(owner=UserFactory(email="retired-orgowner@example.org", is_active=False))
    admin = MembershipFactory(organisation=org).user
    survey = closed_survey(
        now + timedelta(days=7), owner=UserFactory(email="left@example.org", is_active=False), organisation=org
    )

    run_data_governance(now=now)

    assert smtp_server.recipients == [admin.email]
    assert list(DeletionWarning.objects.filter(survey_id=survey.pk).values_list("recipient_id", flat=True)) == [admin.pk]


def test_survey_with_no_recipient_at_all_is_reported_in_the_run_summary(smtp_server, now):
    orphan = closed_survey(now + timedelta(days=7), name="Orphaned audit", owner=None)
    inactive = closed_survey(now + timedelta(days=30), owner=UserFactory(is_active=False))

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance", "--verbose")

    assert smtp_server.messages == []
    assert "2 surveys due for a warning have no recipient at all" in output
    assert f"#{orphan.pk} Orphaned audit (2026-01-12 02:00 UTC)" in output
    run = GovernanceRun.objects.get()
    assert run.counts["surveys_without_recipients"] == 2
    assert {row["id"] for row in run.details["without_recipients"]} == {orphan.pk, inactive.pk}


# --- R8: the email ------------------------------------------------------------------------------

def test_warning_email_has_text_and_html_escaped_name_utc_date_days_left_links_and_no_response_data(
    smtp_server, now
):
    name = '<b>Tom & "Jerry"</b> audit'
    survey = closed_survey(now + timedelta(days=7), name=name)
    ResponseFactory(survey=survey, answers={"diagnosis": SECRET_ANSWER})
    draft(survey, now - timedelta(days=1))

    with time_machine.travel(now, tick=False):
        run_command_ok("process_data_governance")

    [message] = smtp_server.to(survey.owner.email)
    text, html = text_and_html(message)
    assert message["From"] == "governance@checktick.example.org"
    assert name in text
    assert "&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt; audit" in html
    assert "<b>Tom" not in html
    for body in (text, html):
        assert "12 January 2026, 02:00 UTC" in body
        assert "7 days from now" in body
        assert f"https://checktick.example.org/surveys/{survey.pk}/retention/" in body
        assert f"https://checktick.example.org/surveys/{survey.pk}/export/" in body
        assert "soft-deleted" in body and "30 days later it is permanently deleted" in body
    assert "will be deleted in 7 days" in message["Subject"]
    assert "ZEBRA-4711" not in everything_readable(message)
    assert "rare condition" not in everything_readable(message)


def test_soft_deletion_notice_has_text_and_html_with_the_permanent_deletion_date_and_no_response_data(
    smtp_server, now
):
    survey = closed_survey(now - timedelta(minutes=5), name="Falls & fractures")
    ResponseFactory(survey=survey, answers={"q": SECRET_ANSWER})

    run_data_governance(now=now)

    [message] = smtp_server.to(survey.owner.email)
    text, html = text_and_html(message)
    assert "Falls & fractures" in text and "Falls &amp; fractures" in html
    for body in (text, html):
        assert "4 February 2026, 02:00 UTC" in body  # now + 30 days grace
        assert f"https://checktick.example.org/surveys/{survey.pk}/retention/" in body
    assert "ZEBRA-4711" not in everything_readable(message)


def test_links_follow_site_url(smtp_server, settings, now):
    settings.SITE_URL = "https://surveys.nhs.example"
    survey = closed_survey(now + timedelta(days=1))

    run_data_governance(now=now)

    text, html = text_and_html(smtp_server.to(survey.owner.email)[0])
    assert f"https://surveys.nhs.example/surveys/{survey.pk}/retention/" in html
    assert "checktick.example.org/surveys" not in text


# --- R8: configuration checked at the start -----------------------------------------------------

def nothing_changed(smtp_server, due):
    due.refresh_from_db()
    return (
        due.deleted_at is None
        and not DeletionWarning.objects.exists()
        and not AuditEvent.objects.exists()
        and smtp_server.messages == []
    )


@pytest.mark.parametrize(
    "overrides, variable",
    [
        ({"SITE_URL": ""}, "SITE_URL"),
        ({"SITE_URL": "http://localhost:8000"}, "SITE_URL"),
        ({"SITE_URL": "http://127.0.0.1"}, "SITE_URL"),
        ({"SITE_URL": "checktick.example.org"}, "SITE_URL"),
        ({"DEFAULT_FROM_EMAIL": ""}, "DEFAULT_FROM_EMAIL"),
        ({"EMAIL_HOST": ""}, "EMAIL_HOST"),
    ],
    ids=["missing-site-url", "localhost-site-url", "loopback-site-url", "site-url-without-scheme",
         "missing-from", "missing-email-host"],
)
def test_misconfiguration_fails_the_command_at_its_start_naming_the_variable_and_changes_nothing(
    smtp_server, settings, now, overrides, variable
):
    for key, value in overrides.items():
        setattr(settings, key, value)
    assert settings.DEBUG is False
    due = closed_survey(now - timedelta(days=1))
    closed_survey(now + timedelta(days=7))  # would be warned

    with time_machine.travel(now, tick=False):
        result = run_command("process_data_governance")

    assert result.returncode == 2
    assert variable in str(result.error)
    assert "--- Deletion Warnings ---" not in result.out
    assert nothing_changed(smtp_server, due)


def test_a_localhost_site_url_is_accepted_with_debug(smtp_server, settings, now):
    settings.DEBUG = True
    settings.SITE_URL = "http://localhost:8000"
    survey = closed_survey(now + timedelta(days=7))

    run_data_governance(now=now)

    text, _ = text_and_html(smtp_server.to(survey.owner.email)[0])
    assert f"http://localhost:8000/surveys/{survey.pk}/retention/" in text


def test_email_host_is_not_needed_with_a_non_smtp_backend(settings, now, mailoutbox):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.EMAIL_HOST = ""
    survey = closed_survey(now + timedelta(days=7))

    run_data_governance(now=now)

    assert [m.to for m in mailoutbox] == [[survey.owner.email]]


def test_a_recipient_deactivated_after_a_failed_attempt_is_not_emailed_on_the_retry(smtp_server, now):
    org = OrganisationFactory()
    leaver = MembershipFactory(organisation=org, user=UserFactory(email="leaver@example.org")).user
    survey = closed_survey(now + timedelta(days=7), organisation=org)
    smtp_server.refuse["leaver@example.org"] = "451 try later"
    run_data_governance(now=now)
    assert smtp_server.recipients == sorted([survey.owner.email, org.owner.email])
    smtp_server.refuse.clear()
    leaver.is_active = False
    leaver.save(update_fields=["is_active"])

    run_data_governance(now=now + timedelta(days=1))

    assert smtp_server.to("leaver@example.org") == []
    assert DeletionWarning.objects.get(recipient_id=leaver.pk).status != DeletionWarning.Status.SENT


def test_warning_thresholds_follow_the_setting(smtp_server, settings, now):
    settings.CHECKTICK_WARNING_DAYS = (14, 3)
    in_ten_days = closed_survey(now + timedelta(days=10))
    in_two_days = closed_survey(now + timedelta(days=2))

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance")

    assert "  - 14-day warnings: 1" in output and "  - 3-day warnings: 1" in output
    assert "30-day" not in output
    assert set(DeletionWarning.objects.values_list("survey_id", "threshold_days")) == {
        (in_ten_days.pk, 14), (in_two_days.pk, 3)}
