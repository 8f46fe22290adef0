"""Run now asks first: it shows what a real run would do (the preview's counts) and starts nothing
until confirmed. Preview stays one click."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from checktick_app.governance.models import GovernanceRun
from tests.factories import SurveyFactory, active_hold, closed_survey, draft, soft_deleted_survey

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/governance/governancerun/"


def counts_on(html):
    return dict(re.findall(r"<tr><th>([^<]+)</th><td>(\d+)</td></tr>", html))


def test_run_now_shows_the_preview_counts_and_starts_nothing_until_confirmed(client, operator):
    now = timezone.now()
    closed_survey(now + timedelta(days=5), name="In the 7-day window")
    closed_survey(now - timedelta(hours=3), name="Overdue")
    soft_deleted_survey(now - timedelta(days=31), name="Grace over")
    active_hold(closed_survey(now - timedelta(days=2), name="Held"))
    client.force_login(operator)

    changelist = client.get(CHANGELIST).content.decode()
    confirm_url = "/admin/governance/governancerun/start/data_governance/confirm/"
    assert f'<form method="get" action="{confirm_url}">' in changelist
    preview_form = re.search(r'<form method="post" action="/admin/governance/governancerun/start/data_governance/">'
                             r'(.*?)</form>', changelist, re.S)  # Preview stays one click
    assert preview_form and 'name="dry_run" value="1"' in preview_form.group(1)
    page = client.get(confirm_url)

    assert page.status_code == 200
    html = page.content.decode()
    assert counts_on(html) == {
        "30-day warnings to send (surveys)": "0", "7-day warnings to send (surveys)": "1",
        "1-day warnings to send (surveys)": "0", "Warning emails to send": "1", "Surveys to soft delete": "1",
        "Surveys to hard delete (for good)": "1", "Surveys held back by a legal hold": "1",
    }
    assert 'action="/admin/governance/governancerun/start/data_governance/"' in html
    assert 'name="dry_run" value="0"' in html and "Yes, run data governance now" in html
    assert not GovernanceRun.objects.exists()


def test_the_cleanup_confirmation_counts_expired_drafts(client, operator):
    draft(SurveyFactory(), timezone.now() - timedelta(days=31), kind="user")
    client.force_login(operator)

    html = client.get("/admin/governance/governancerun/start/progress_cleanup/confirm/").content.decode()

    assert counts_on(html)["Expired drafts to delete"] == counts_on(html)["of logged-in users"] == "1"


def test_a_viewer_cannot_open_the_confirmation(client, viewer):
    client.force_login(viewer)

    assert client.get("/admin/governance/governancerun/start/data_governance/confirm/").status_code == 403
