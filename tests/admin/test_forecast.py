"""The forecast (command and admin page) counts what the rules make due on each of the next nights.

The expectations are worked out by hand from each seeded survey's dates (thresholds 30, 7, 1 days),
so they check the rules rather than repeat them.
"""

import re
from datetime import timedelta

import pytest
import time_machine

from tests.domain.helpers import run_command
from tests.factories import SurveyFactory, active_hold, closed_survey, soft_deleted_survey

pytestmark = pytest.mark.django_db
URL = "/admin/governance/governancerun/forecast/"


@pytest.fixture
def seeded(now):
    closed_survey(now + timedelta(days=25), name="A: 25 days left")
    closed_survey(now + timedelta(days=3, hours=12), name="B: 3.5 days left")
    active_hold(closed_survey(now + timedelta(days=2), name="C: held"))
    soft_deleted_survey(now - timedelta(days=27), name="D: soft-deleted 27 days ago")  # hard deletion in 3 days
    closed_survey(now - timedelta(hours=1), name="E: overdue")
    SurveyFactory(name="F: live, no clock")
    closed_survey(now + timedelta(days=40), name="G: 40 days left")
    return now


def expected(night):
    """[30-day, 7-day, 1-day, soft, hard] due on night `night` (0 = now), from the seeds' dates."""
    d = night
    return [
        (d <= 17) + (d >= 10),             # A until 8 days are left; G from 30 days left
        (18 <= d <= 23) + (d <= 2),        # A from 7 days left; B while more than 1 day is left
        (d == 24) + (d == 3),              # A and B on their last day
        1 + (d >= 4) + (d >= 25),          # E already, B and A once their date has passed
        int(d >= 3),                       # D when its 30-day grace period ends
    ]


def test_forecast_command_counts_match_the_rules_night_by_night(seeded):
    with time_machine.travel(seeded, tick=False):
        result = run_command("governance_forecast", "--days", "30")

    assert result.returncode == 0, result.error
    lines = result.out.splitlines()
    assert lines[0].startswith("Governance forecast for 30 nights from 2026-01-05 02:00 UTC")
    assert lines[1].split() == ["Date", "(UTC)", "30-day", "warn", "7-day", "warn", "1-day", "warn", "Soft",
                                "delete", "Hard", "delete"]
    rows = lines[2:]
    assert len(rows) == 30
    for night, row in enumerate(rows):
        date, _weekday, *counts = row.split()
        assert date == f"{seeded + timedelta(days=night):%Y-%m-%d}"
        assert [int(c) for c in counts] == expected(night), f"night {night}"


def test_forecast_changes_nothing(seeded, django_assert_max_num_queries):
    from checktick_app.audit.models import AuditEvent
    from checktick_app.governance.models import GovernanceRun
    from checktick_app.surveys.models import Survey

    before = list(Survey.objects.order_by("pk").values())
    with time_machine.travel(seeded, tick=False):
        run_command("governance_forecast", "--days", "5")

    assert list(Survey.objects.order_by("pk").values()) == before
    assert not GovernanceRun.objects.exists() and not AuditEvent.objects.exists()


@pytest.mark.parametrize("days, message", [
    ("0", "--days 0 is out of range; give a number of nights from 1 to 365."),
    ("366", "--days 366 is out of range; give a number of nights from 1 to 365."),
    ("ten", "--days 'ten' is not a whole number; give a number of nights from 1 to 365."),
])
def test_forecast_command_rejects_bad_days(days, message):
    result = run_command("governance_forecast", "--days", days)

    assert result.returncode == 2
    assert str(result.error) == message


def test_forecast_page_shows_the_same_counts(client, operator, seeded):
    client.force_login(operator)

    with time_machine.travel(seeded, tick=False):
        response = client.get(URL, {"days": "30"})

    assert response.status_code == 200
    nights = response.context["nights"]
    assert len(nights) == 30
    for night, row in enumerate(nights):
        assert [count for count, _rise in row["cells"]] == expected(night), f"night {night}"
    html = response.content.decode()
    # Night 4: B is soft-deleted (the count rises from 1 to 2, highlighted).
    row = re.search(r"<tr class=\"row\d\">\s*<td>Fri 2026-01-09</td>(.*?)</tr>", html, re.S).group(1)
    assert re.findall(r"<td[^>]*>(\d+)</td>", row) == ["1", "0", "0", "2", "1"]
    assert '<td class="rise">2</td>' in row


def test_forecast_page_defaults_to_30_nights(client, operator, seeded):
    client.force_login(operator)

    with time_machine.travel(seeded, tick=False):
        response = client.get(URL)

    assert len(response.context["nights"]) == 30


@pytest.mark.parametrize("days", ["0", "366", "abc", "-3"])
def test_forecast_page_rejects_bad_days(client, operator, days):
    client.force_login(operator)

    response = client.get(URL, {"days": days})

    assert response.status_code == 400
    assert 'id="forecast-error"' in response.content.decode()
    assert response.context["nights"] == []


def test_forecast_page_needs_the_governance_permission(client, staff_without_permission, viewer):
    client.force_login(staff_without_permission)
    assert client.get(URL).status_code == 403

    client.force_login(viewer)
    assert client.get(URL).status_code == 200


def test_tonights_forecast_is_what_a_dry_run_counts_after_warnings_went_out(smtp_server, now):
    """Warnings the ledger holds as sent are not work for tonight: the forecast's first night and the
    dry run agree, column by column."""
    from checktick_app.governance.services import forecast, run_data_governance

    closed_survey(now + timedelta(days=25), name="Warned at 30 days last night")
    closed_survey(now + timedelta(days=6), name="Warned at 7 days last night")
    closed_survey(now + timedelta(days=30, minutes=30), name="Comes into the 30-day window tonight")
    closed_survey(now - timedelta(hours=1), name="Overdue, soft-deleted last night")
    soft_deleted_survey(now - timedelta(days=31), name="Grace over, hard-deleted last night")
    with time_machine.travel(now, tick=False):
        run_data_governance()
    tonight = now + timedelta(days=1)
    closed_survey(tonight - timedelta(hours=2), name="Due since this afternoon")

    with time_machine.travel(tonight, tick=False):
        counts = run_data_governance(dry_run=True).counts()
        [night] = forecast(days=1, now=tonight)

    assert night["warnings"] == {30: counts["warnings_30d"], 7: counts["warnings_7d"], 1: counts["warnings_1d"]}
    assert [night["soft_delete"], night["hard_delete"]] == [counts["soft_deleted"], counts["hard_deleted"]]
    assert night["warnings"] == {30: 1, 7: 0, 1: 0} and (night["soft_delete"], night["hard_delete"]) == (1, 0)
