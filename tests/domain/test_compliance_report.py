"""The compliance report (issue 12): a scripted year, then the report read back row by row in all three formats.

Time is passed, never mocked: each nightly run gets its night as `now` and as its scheduled day, and the
report is judged as of a given moment. The year has surveys closing, an extension, a legal hold placed and
lifted, a missed night, an SMTP outage and a recipient whose address is refused.
"""

import csv
import io
import json
from datetime import date, datetime, timedelta, timezone

import pytest

from checktick_app.audit.models import AuditEvent
from checktick_app.governance import evidence
from checktick_app.governance.runs import Trigger
from checktick_app.governance.services import run_data_governance
from checktick_app.surveys.models import Survey
from checktick_app.surveys.services import close_survey, extend_retention, place_legal_hold, remove_legal_hold
from tests.domain.helpers import run_command
from tests.factories import OrganisationFactory, SurveyFactory, UserFactory

pytestmark = pytest.mark.django_db


def at(month, day, hour=2, minute=0):
    return datetime(2025, month, day, hour, minute, tzinfo=timezone.utc)


FIRST_NIGHT, LAST_NIGHT = at(3, 10), at(7, 25)
MISSED_NIGHT = date(2025, 6, 6)
OUTAGE_NIGHT = date(2025, 4, 9)
AS_OF = at(7, 25, 3)


@pytest.fixture
def year(smtp_server):
    """Five surveys through a year; returns them by letter, with the mailbox."""
    alice = UserFactory(username="alice", email="alice@example.org")
    bob = UserFactory(username="bob", email="bob@example.org")
    eve = UserFactory(username="eve", email="eve@unreachable.example.org")
    dpo = UserFactory(username="dpo", email="dpo@example.org", is_staff=True)
    org = OrganisationFactory(name="Cardiology audit", owner=bob)
    smtp_server.refuse["eve@unreachable.example.org"] = "550 no such user"

    def survey(name, owner=alice, months=3):
        return SurveyFactory(name=name, owner=owner, organisation=org, retention_months=months)

    s = {"A": survey("Ward audit"), "B": survey("Extended study"), "C": survey("Held survey"),
         "D": survey("Missed night survey"), "E": survey("Refused recipient survey", owner=eve)}
    close_survey(s["A"], by=alice, now=at(1, 15, 10))   # deletion date 15 April 10:00
    close_survey(s["B"], by=alice, now=at(1, 20, 9))    # 20 April, then extended to 20 June
    close_survey(s["C"], by=alice, now=at(2, 1, 12))    # 1 May, but held until 20 May
    close_survey(s["E"], by=alice, now=at(2, 10, 12))   # 10 May
    close_survey(s["D"], by=alice, now=at(3, 5, 15))    # 5 June; the night after it is missed
    extend_retention(s["B"], months=2, reason="Follow-up visits", by=bob, now=at(3, 1, 11))
    events = {
        at(4, 20, 9): lambda: place_legal_hold(s["C"], reason="Subject access dispute",
                                               authority="Trust legal team", by=dpo, now=at(4, 20, 9)),
        at(5, 20, 9): lambda: remove_legal_hold(s["C"].legal_holds.get(), reason="Dispute settled", by=dpo,
                                                now=at(5, 20, 9)),
    }
    night = FIRST_NIGHT
    while night <= LAST_NIGHT:
        for moment in sorted(m for m in events if m < night):
            events.pop(moment)()
        smtp_server.refuse.update({a: "451 try again later" for a in ("alice@example.org", "bob@example.org")}
                                  if night.date() == OUTAGE_NIGHT else {})
        if night.date() == OUTAGE_NIGHT + timedelta(days=1):
            for address in ("alice@example.org", "bob@example.org"):
                smtp_server.refuse.pop(address)
        if night.date() != MISSED_NIGHT:
            run_data_governance(now=night, trigger=Trigger.BEAT, scheduled_for=night.date())
        night += timedelta(days=1)
    return {letter: survey.pk for letter, survey in s.items()}


def report_in(fmt, **kwargs):
    return evidence.render(evidence.build_report(date(2025, 4, 1), date(2025, 6, 30), as_of=AS_OF, **kwargs), fmt)


def iso(moment):
    return moment.isoformat()


def expected_rows(ids):
    """What happened, survey by survey, as the script above made it happen."""
    return {
        ids["A"]: dict(name="Ward audit", deletion_date=iso(at(4, 15, 10)), soft=iso(at(4, 16)), hard=iso(at(5, 16)),
                       status="hard deleted", on_time=True, reasons=[], extensions=0, holds=0, retention=3),
        ids["C"]: dict(name="Held survey", deletion_date=iso(at(5, 1, 12)), soft=iso(at(5, 28)), hard=iso(at(6, 27)),
                       status="hard deleted", on_time=False, reasons=["hold"], extensions=0, holds=1, retention=3),
        ids["E"]: dict(name="Refused recipient survey", deletion_date=iso(at(5, 10, 12)), soft=iso(at(5, 11)),
                       hard=iso(at(6, 10)), status="hard deleted", on_time=True, reasons=[], extensions=0, holds=0,
                       retention=3),
        ids["D"]: dict(name="Missed night survey", deletion_date=iso(at(6, 5, 15)), soft=iso(at(6, 7)),
                       hard=iso(at(7, 7)), status="hard deleted", on_time=False, reasons=["missed night"],
                       extensions=0, holds=0, retention=3),
        ids["B"]: dict(name="Extended study", deletion_date=iso(at(6, 20, 9)), soft=iso(at(6, 21)), hard=iso(at(7, 21)),
                       status="hard deleted", on_time=True, reasons=[], extensions=1, holds=0, retention=3),
    }


def test_the_json_report_tells_each_surveys_story_and_sums_it_up(year, tmp_path):
    report = json.loads(report_in("json"))
    expected = expected_rows(year)
    assert [row["survey_id"] for row in report["surveys"]] == list(expected)  # by deletion date
    for row in report["surveys"]:
        want = expected[row["survey_id"]]
        assert (row["name"], row["organisation"], row["retention_months"]) == (want["name"], "Cardiology audit",
                                                                                 want["retention"])
        assert (row["deletion_date"], row["soft_deleted_at"], row["hard_deleted_at"]) == (
            want["deletion_date"], want["soft"], want["hard"])
        assert (row["status"], row["on_time"], row["late_reasons"]) == (want["status"], want["on_time"], want["reasons"])
        assert (len(row["extensions"]), len(row["holds"])) == (want["extensions"], want["holds"])
    assert report["summary"] == {
        "surveys_in_period": 5, "surveys_due": 5, "deleted_on_time": 3, "deleted_late": 2,
        "late_or_pending_because": {"hold": 1, "missed night": 1}, "still_pending": 0, "in_grace_period": 0,
        "warnings_sent": 36, "warnings_failed": 4, "warnings_not_sent": 0, "nights_with_no_successful_run": 6,
    }
    assert report["nights_with_no_successful_run"] == [
        "2025-04-09",  # the SMTP outage: the 7-day warnings of survey A failed for the night
        "2025-04-11", "2025-05-04", "2025-05-10", "2025-05-11",  # eve's address refused (30, 7, 1 days, notice)
        str(MISSED_NIGHT),  # no run at all
    ]
    assert report["audit_head_hash"] == AuditEvent.objects.order_by("-id").first().entry_hash


def test_the_report_names_who_extended_held_and_was_warned_and_how_late(year):
    rows = {row["survey_id"]: row for row in json.loads(report_in("json"))["surveys"]}
    extended = rows[year["B"]]
    assert extended["extensions"] == [{"at": iso(at(3, 1, 11)), "by": "bob", "months_added": 2,
                                       "reason": "Follow-up visits", "restored": False,
                                       "new_deletion_date": iso(at(6, 20, 9))}]
    held = rows[year["C"]]
    assert held["holds"] == [{"placed_at": iso(at(4, 20, 9)), "placed_by": "dpo", "reason": "Subject access dispute",
                              "authority": "Trust legal team", "removed_at": iso(at(5, 20, 9)), "removed_by": "dpo",
                              "removal_reason": "Dispute settled"}]
    assert held["deadline_moved_to"] == iso(at(5, 27, 9))  # a week's notice after the release (R14)
    assert held["soft_delay_hours"] == round((at(5, 28) - at(5, 1, 12)).total_seconds() / 3600, 2)
    assert rows[year["D"]]["soft_delay_hours"] == 35.0  # 5 June 15:00 to 7 June 02:00: one night missed
    warned = rows[year["A"]]["warnings"]
    assert [(w["kind"], w["recipient"], w["outcome"], w["failed_attempts"]) for w in warned] == [
        ("30-day warning", "alice@example.org", "sent", 0), ("30-day warning", "bob@example.org", "sent", 0),
        ("7-day warning", "alice@example.org", "sent", 1), ("7-day warning", "bob@example.org", "sent", 1),
        ("1-day warning", "alice@example.org", "sent", 0), ("1-day warning", "bob@example.org", "sent", 0),
        ("soft-deletion notice", "alice@example.org", "sent", 0), ("soft-deletion notice", "bob@example.org", "sent", 0),
    ]
    assert warned[2]["at"] == iso(at(4, 10))  # the outage night failed; the next night sent it
    refused = [w for w in rows[year["E"]]["warnings"] if w["recipient"] == "eve@unreachable.example.org"]
    assert [(w["kind"], w["outcome"]) for w in refused] == [
        ("30-day warning", "failed"), ("7-day warning", "failed"), ("1-day warning", "failed"),
        ("soft-deletion notice", "failed")]
    assert all("550" in w["note"] for w in refused)


def test_the_csv_report_has_one_row_per_survey_under_the_summary(year):
    text = report_in("csv")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert "# deleted_on_time: 3" in comments and "# warnings_failed: 4" in comments
    assert "# nights_without_success: 2025-04-09 2025-04-11 2025-05-04 2025-05-10 2025-05-11 2025-06-06" in comments
    rows = list(csv.DictReader(io.StringIO("\n".join(l for l in text.splitlines() if not l.startswith("#")))))
    expected = expected_rows(year)
    assert [int(row["survey_id"]) for row in rows] == list(expected)
    for row in rows:
        want = expected[int(row["survey_id"])]
        assert (row["name"], row["deletion_date"], row["soft_deleted_at"], row["hard_deleted_at"], row["status"]) == (
            want["name"], want["deletion_date"], want["soft"], want["hard"], want["status"])
        assert row["on_time"] == ("yes" if want["on_time"] else "no")
        assert row["late_reasons"] == ", ".join(want["reasons"])
    by_id = {int(row["survey_id"]): row for row in rows}
    assert "bob extended by 2 months: Follow-up visits" in by_id[year["B"]]["extensions"]
    assert "(Trust legal team): Subject access dispute; removed 2025-05-20T09:00:00+00:00 by dpo: Dispute settled" \
        in by_id[year["C"]]["legal_holds"]


def test_the_markdown_report_reads_as_evidence(year, tmp_path):
    text = report_in("md")
    (tmp_path / "scripted-year-report.md").write_text(text)
    head = AuditEvent.objects.order_by("-id").first().entry_hash
    assert text.startswith("# Data governance report, 2025-04-01 to 2025-06-30\n")
    assert f"head hash `{head}`" in text
    for line in ("- Deleted on time: 3", "- Deleted late: 2", "- Late or pending because: hold 1, missed night 1",
                 "- Warnings sent: 36; failed: 4; not sent: 0", "- Nights with no successful run: 6 (2025-04-09, 2025-04-11, 2025-05-04, 2025-05-10, 2025-05-11, 2025-06-06)"):
        assert line in text
    table = [line for line in text.splitlines() if line.startswith(f"| {year['C']} |")]
    assert table == [f"| {year['C']} | Held survey | Cardiology audit | 2025-02-01T12:00:00+00:00 | 3 months | "
                     "2025-05-01T12:00:00+00:00 | 2025-05-28T02:00:00+00:00 | 2025-06-27T02:00:00+00:00 | "
                     "638.0 h / 0.0 h | hard deleted | no: hold |"]


def test_the_report_is_the_same_after_the_surveys_are_gone(year):
    assert not Survey.objects.filter(pk__in=year.values()).exists()  # all five hard-deleted by the script
    before = report_in("json")
    SurveyFactory(name="Unrelated new survey")
    assert json.loads(report_in("json"))["surveys"] == json.loads(before)["surveys"]


def test_one_surveys_deletion_record_lists_its_whole_history(year):
    result = run_command("governance_report", "--survey", str(year["C"]))
    assert result.returncode == 0
    assert result.out.startswith(f"# Deletion record: survey {year['C']}\n")
    for action in ("closed", "hold_placed", "skipped_for_hold", "hold_removed", "deadline_moved", "soft_deleted",
                   "hard_deleted"):
        assert f"| {action} |" in result.out


def test_the_command_prints_each_format_and_refuses_bad_dates(year):
    for fmt in ("md", "csv", "json"):
        result = run_command("governance_report", "--from", "2025-04-01", "--to", "2025-06-30", "--format", fmt)
        assert result.returncode == 0 and str(year["A"]) in result.out
    bad = run_command("governance_report", "--from", "2025-13-01", "--to", "2025-06-30")
    assert bad.returncode == 2 and "--from '2025-13-01' is not a date" in str(bad.error)
