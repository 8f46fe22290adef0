"""R23: nothing irreversible happens unwarned.

Lifting a hold from a soft-deleted survey moves its hard deletion out (R14); its recipients are then warned
of the new date before it, once each. A restore's new deletion date leaves room for a warning (R10).
"""

from datetime import timedelta

import pytest
import time_machine
from django.core.exceptions import ValidationError

from checktick_app.governance.admin import count_rows
from checktick_app.governance.models import DeletionWarning, GovernanceRun
from checktick_app.governance.services import run_data_governance
from checktick_app.surveys.models import RetentionExtension, Survey
from checktick_app.surveys.services import remove_legal_hold, restore_survey
from tests.admin.conftest import make_user
from tests.domain.helpers import run_command_ok, text_and_html
from tests.factories import MembershipFactory, UserFactory, active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db


def soft_deleted_and_held_past_its_hard_deletion(now, name="Held <b>audit</b>"):
    """Soft-deleted 60 days ago (hard deletion 30 days ago), kept by a hold; owner and an organisation admin."""
    admin = MembershipFactory(user=UserFactory(email="admin@example.org"))
    survey = soft_deleted_survey(now - timedelta(days=60), name=name, organisation=admin.organisation,
                                 owner=UserFactory(email="owner@example.org"))
    return survey, active_hold(survey)


def hard_deletion_warnings(mailbox):
    return [(rcpts, m) for rcpts, m in mailbox.messages if "permanently deleted" in str(m["Subject"])]


def test_lifting_a_hold_from_a_soft_deleted_survey_warns_each_recipient_once_before_the_hard_deletion(
    smtp_server, now
):
    survey, hold = soft_deleted_and_held_past_its_hard_deletion(now)
    organisation_owner = survey.organisation.owner.email
    remove_legal_hold(hold, reason="Case closed", now=now)
    survey.refresh_from_db()
    new_date = now + timedelta(days=7)
    assert survey.hard_deletion_date == new_date  # R14 moved it out

    first = run_data_governance(now=now + timedelta(hours=1))

    warned = hard_deletion_warnings(smtp_server)
    assert sorted(r for rcpts, _ in warned for r in rcpts) == sorted(
        ["admin@example.org", "owner@example.org", organisation_owner])
    assert first.hard_warnings_sent == 3 and [line.id for line in first.hard_warned] == [survey.pk]
    _, message = warned[0]
    text, html = text_and_html(message)
    assert "7 January 2026" not in text  # not the old date: the new one, to the minute, in UTC
    assert "12 January 2026, 02:00 UTC" in text and "12 January 2026, 02:00 UTC" in html
    assert "12 January 2026, 02:00 UTC" in str(message["Subject"])
    assert 'Your survey "Held <b>audit</b>"' in text
    assert "Held &lt;b&gt;audit&lt;/b&gt;" in html and "<b>audit</b>" not in html
    assert f"/surveys/{survey.pk}/retention/" in text and f"/surveys/{survey.pk}/export/" in text
    rows = DeletionWarning.objects.filter(survey_id=survey.pk, kind=DeletionWarning.Kind.HARD_WARNING)
    assert rows.count() == 3 and set(rows.values_list("status", flat=True)) == {"sent"}
    assert set(rows.values_list("deletion_date", flat=True)) == {new_date}

    # A second run the same night sends nothing again.
    second = run_data_governance(now=now + timedelta(hours=2))
    assert len(hard_deletion_warnings(smtp_server)) == 3 and second.hard_warnings_sent == 0

    # No hard deletion before the new date; the warning is not repeated on the way.
    just_before = run_data_governance(now=new_date - timedelta(minutes=1))
    assert just_before.hard_deleted == [] and Survey.objects.filter(pk=survey.pk).exists()
    assert len(smtp_server.messages) == 3

    after = run_data_governance(now=new_date + timedelta(hours=1))
    assert [line.id for line in after.hard_deleted] == [survey.pk]
    assert not Survey.objects.filter(pk=survey.pk).exists()


def test_only_a_moved_date_is_warned_of_a_survey_soft_deleted_normally_had_its_date_in_the_notice(
    smtp_server, now
):
    normal = closed_survey(now - timedelta(hours=1), name="Normal", owner=UserFactory(email="normal@example.org"))
    run_data_governance(now=now)  # soft-deletes it and sends the notice naming its hard-deletion date
    normal.refresh_from_db()
    assert normal.deleted_at == now and len(smtp_server.to("normal@example.org")) == 1
    held, hold = soft_deleted_and_held_past_its_hard_deletion(now, name="Held")
    later = normal.hard_deletion_date - timedelta(days=3)  # both hard deletions within the notice period
    remove_legal_hold(hold, reason="Case closed", now=later)

    report = run_data_governance(now=later + timedelta(hours=1))

    assert len(smtp_server.to("normal@example.org")) == 1  # nothing more than the notice
    assert [line.id for line in report.hard_warned] == [held.pk]
    assert len(smtp_server.to("owner@example.org")) == 1
    assert not DeletionWarning.objects.filter(survey_id=normal.pk, kind=DeletionWarning.Kind.HARD_WARNING).exists()


def test_a_dry_run_and_the_command_count_hard_deletion_warnings_the_same_way(smtp_server, now, client):
    survey, hold = soft_deleted_and_held_past_its_hard_deletion(now, name="Held")
    remove_legal_hold(hold, reason="Case closed", now=now)

    preview = run_data_governance(now=now + timedelta(hours=1), dry_run=True)

    assert preview.hard_warnings_sent == 3 and [line.id for line in preview.hard_warned] == [survey.pk]
    assert smtp_server.messages == []
    assert not DeletionWarning.objects.filter(kind=DeletionWarning.Kind.HARD_WARNING).exists()
    preview_run = GovernanceRun.objects.get(pk=preview.run_id)
    assert ("Hard-deletion warnings to send", 3) in count_rows(preview_run.counts, dry_run=True)

    with time_machine.travel(now + timedelta(hours=1), tick=False):
        output = run_command_ok("process_data_governance", "--verbose")

    assert "Sent 3 hard-deletion warnings" in output and f"#{survey.pk} Held" in output
    run = GovernanceRun.objects.filter(dry_run=False).get()
    assert run.counts["hard_deletion_warnings_sent"] == 3
    client.force_login(make_user("operator", group=True))
    page = client.get(f"/admin/governance/governancerun/{run.pk}/change/").content.decode()
    assert "Hard-deletion warnings sent" in page and "Warned of a hard deletion (1)" in page


def too_near_a_restore(now):
    """Deletion date 28 days ago, still in its grace period: one more month puts it only days away."""
    return soft_deleted_survey(now - timedelta(days=28), grace_days=30, retention_months=6, name="Near")


def test_a_restore_whose_new_deletion_date_leaves_no_room_for_a_warning_is_refused(now):
    survey = too_near_a_restore(now)

    with pytest.raises(ValidationError) as refused:
        restore_survey(survey, months=1, reason="Keep", now=now)

    assert refused.value.code == "restore_date_too_soon"
    assert "the earliest allowed is 2026-01-12 02:00 UTC" in refused.value.message
    survey.refresh_from_db()
    assert survey.deleted_at is not None and survey.retention_months == 6
    assert not RetentionExtension.objects.exists()
    restore_survey(survey, months=2, reason="Keep", now=now)  # far enough out: restored
    survey.refresh_from_db()
    assert survey.deleted_at is None


def test_the_admin_says_why_it_refuses_a_restore_too_near(client):
    from django.utils import timezone

    survey = too_near_a_restore(timezone.now())
    client.force_login(make_user("operator", group=True))

    response = client.post(f"/admin/surveys/survey/{survey.pk}/extend-retention/", {"months": "1", "reason": "Keep"})

    assert response.status_code == 200
    [error] = response.context["form"].errors["months"]
    assert "too soon for the owners to be warned first: the earliest allowed is" in error
    survey.refresh_from_db()
    assert survey.deleted_at is not None
