"""What a quick-start user meets: email links that open a real page, an admin "View site" that leads
somewhere, a deletion 12 hours away described as 12 hours, and a Date header in UTC (+0000)."""

import re
from datetime import timedelta

import pytest

from checktick_app.governance.services import run_data_governance
from tests.admin.conftest import make_user
from tests.domain.helpers import text_and_html
from tests.factories import closed_survey

pytestmark = pytest.mark.django_db


def test_a_deletion_twelve_hours_away_is_described_in_hours_and_the_date_header_is_utc(smtp_server, now):
    survey = closed_survey(now + timedelta(hours=12), name="Half a day left")

    run_data_governance(now=now)

    [message] = smtp_server.to(survey.owner.email)
    text, html = text_and_html(message)
    for body in (text, html):
        assert "5 January 2026, 14:00 UTC" in body and "(12 hours from now)" in body
        assert "1 day from now" not in body
    assert "will be deleted in 12 hours" in message["Subject"]
    assert message["Date"].endswith("+0000")


def test_every_link_in_a_quick_start_email_opens_a_page_of_this_service(smtp_server, now, settings, client):
    settings.SITE_URL, settings.DEBUG = "http://localhost:8000", True
    survey = closed_survey(now + timedelta(days=7), name="Quick start survey")
    run_data_governance(now=now)
    [message] = smtp_server.to(survey.owner.email)
    text, _ = text_and_html(message)
    client.force_login(make_user("operator", group=True))

    paths = sorted({url.removeprefix("http://localhost:8000") or "/"
                    for url in re.findall(r"http://localhost:8000[^\s\"<>]*", text)})

    assert paths == ["/", f"/surveys/{survey.pk}/export/", f"/surveys/{survey.pk}/retention/"]
    for path in paths:
        page = client.get(path, follow=True)
        assert page.status_code == 200, path
    assert client.get(paths[2], follow=True).redirect_chain[-1][0] == f"/admin/surveys/survey/{survey.pk}/change/"


def test_view_site_in_the_admin_leads_to_the_services_index_of_addresses(client):
    client.force_login(make_user("operator", group=True))

    admin = client.get("/admin/").content.decode()
    index = client.get("/")

    assert '<a href="/">View site</a>' in admin
    assert index.status_code == 200
    for address in ('href="/admin/"', 'href="/health/governance/"', 'href="/metrics"'):
        assert address in index.content.decode()
