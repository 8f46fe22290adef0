"""The compliance report (issue 12): each survey's retention story, read back as evidence.

GDPR's accountability principle means showing, after the data is gone, that each survey went on time
and that its people were warned. So the report is built from the evidence alone: the audit log
(closures, extensions, holds, deletions), the warning ledger (who was warned, when, with what
outcome) and the run history (which nights ran). It never reads the surveys themselves, and so it
reads the same after they are hard-deleted. It names the audit log's head hash it was built from,
so `verify_audit_log --expect-head HASH` can later show the log still leads to it.

Timeliness: a survey is deleted on time when its soft deletion came within a day of its deletion
date (the next nightly run) and its hard deletion within a day of the end of its grace period. A
late one says why, from the evidence: a legal hold, a failed deletion in a run, or a missed night
(no run finished that night). The summary also lists every night with no successful run (a run
that failed, on a refused email address say, still did that night's deletions). A night is a run's scheduled day (beat) or, failing that, the day it started.
"""

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone

from django.utils import timezone

from checktick_app.audit.models import AuditEvent

from .models import DeletionWarning, GovernanceRun, RunItem

Action = AuditEvent.Action
ON_TIME = timedelta(days=1)
FORMATS = ("md", "csv", "json")


def _dt(value):
    if value in (None, ""):
        return None
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _iso(value):
    return value.astimezone(dt_timezone.utc).isoformat(timespec="seconds") if value else None


@dataclass
class SurveyRecord:
    survey_id: int
    name: str = ""
    organisation: str = ""
    closed_at: datetime | None = None
    retention_months: int | None = None
    deletion_date: datetime | None = None
    deadline_moved_to: datetime | None = None
    hard_deletion_date: datetime | None = None
    soft_deleted_at: datetime | None = None
    hard_deleted_at: datetime | None = None
    replayed_at: datetime | None = None
    extensions: list = field(default_factory=list)
    holds: dict = field(default_factory=dict)
    skipped_for_hold: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    failed_nights: list = field(default_factory=list)
    history: list = field(default_factory=list)
    status: str = ""
    on_time: bool | None = None
    late_reasons: list = field(default_factory=list)
    soft_delay: timedelta | None = None
    hard_delay: timedelta | None = None

    def apply(self, event):
        """One audit entry, in the order they were written: the survey's state as the log tells it."""
        d, at, by = event.details or {}, event.created_at, event.actor or "system"
        self.name = event.survey_name or self.name
        self.history.append({"at": _iso(at), "action": event.action, "by": by, "run_id": event.run_id,
                             "details": d})
        if event.action == Action.CLOSED:
            self.closed_at, self.deletion_date = at, _dt(d.get("deletion_date"))
            self.retention_months = d.get("retention_months", self.retention_months)
            self.organisation = d.get("organisation") or self.organisation
            self.deadline_moved_to = None
        elif event.action == Action.REOPENED:
            self.closed_at = self.deletion_date = self.deadline_moved_to = None
        elif event.action in (Action.RETENTION_EXTENDED, Action.RESTORED):
            self.extensions.append({"at": _iso(at), "by": by, "months_added": d.get("months_added"),
                                    "reason": d.get("reason", ""), "restored": event.action == Action.RESTORED,
                                    "new_deletion_date": d.get("new_deletion_date")})
            self.deletion_date, self.deadline_moved_to = _dt(d.get("new_deletion_date")), None
            if event.action == Action.RESTORED:
                self.soft_deleted_at = self.hard_deletion_date = None
        elif event.action == Action.DEADLINE_MOVED:
            if d.get("field") == "hard_deletion_date":
                self.hard_deletion_date = _dt(d.get("new"))
            else:
                self.deadline_moved_to = _dt(d.get("new"))
        elif event.action == Action.SOFT_DELETED:
            self.soft_deleted_at = at
            self.deletion_date = self.deletion_date or _dt(d.get("deletion_date"))
            self.hard_deletion_date = _dt(d.get("hard_deletion_date"))
        elif event.action == Action.HARD_DELETED:
            self.hard_deleted_at = at
            self.deletion_date = self.deletion_date or _dt(d.get("deletion_date"))
            self.soft_deleted_at = self.soft_deleted_at or _dt(d.get("deleted_at"))
            self.hard_deletion_date = self.hard_deletion_date or _dt(d.get("hard_deletion_date"))
        elif event.action == Action.DELETION_REPLAYED:
            # A restored backup had brought it back: the deletion that counts is the first one.
            self.replayed_at = at
            self.hard_deleted_at = self.hard_deleted_at or _dt(d.get("originally_deleted_at"))
        elif event.action == Action.HOLD_PLACED:
            self.holds[d.get("hold_id")] = {"placed_at": _iso(at), "placed_by": by, "reason": d.get("reason", ""),
                                            "authority": d.get("authority", ""), "removed_at": None,
                                            "removed_by": "", "removal_reason": ""}
        elif event.action == Action.HOLD_REMOVED:
            hold = self.holds.setdefault(d.get("hold_id"), {"placed_at": None, "placed_by": "", "reason": "",
                                                            "authority": ""})
            hold.update(removed_at=_iso(at), removed_by=by, removal_reason=d.get("reason", ""))
        elif event.action == Action.SKIPPED_FOR_HOLD:
            self.skipped_for_hold.append(at)

    # --- Judging it ---------------------------------------------------------------------------

    def judge(self, as_of, nights_run, failure_nights):
        if self.hard_deleted_at:
            self.status = "hard deleted"
        elif self.soft_deleted_at:
            self.status = "soft deleted"
        elif self.deletion_date and self.deletion_date <= as_of:
            self.status = "pending"
        else:
            self.status = "not due"
        if self.deletion_date and self.soft_deleted_at:
            self.soft_delay = max(self.soft_deleted_at - self.deletion_date, timedelta(0))
        if self.hard_deletion_date and self.hard_deleted_at:
            self.hard_delay = max(self.hard_deleted_at - self.hard_deletion_date, timedelta(0))
        late = []
        if self.status != "not due":
            late.append((self.deletion_date, self.soft_deleted_at))
        if self.hard_deletion_date and self.hard_deletion_date <= as_of:
            late.append((self.hard_deletion_date, self.hard_deleted_at))
        late = [(due, done) for due, done in late if (done or as_of) - due >= ON_TIME]
        if self.status in ("hard deleted", "soft deleted"):
            self.on_time = not late
        reasons = []
        for due, done in late:
            end = done or as_of
            if self._held_between(due, end):
                reasons.append("hold")
            if any(due.date() <= night <= end.date() for night in failure_nights.get(self.survey_id, ())):
                reasons.append("failure")
            nights = _nights(due.date() + timedelta(days=1), min(end.date(), as_of.date()))
            if any(night not in nights_run for night in nights):
                reasons.append("missed night")
        self.late_reasons = sorted(set(reasons)) or (["unexplained"] if late else [])
        self.failed_nights = sorted(str(n) for n in failure_nights.get(self.survey_id, ()))

    def _held_between(self, start, end):
        if any(start <= at <= end for at in self.skipped_for_hold):
            return True
        for hold in self.holds.values():
            placed = _dt(hold["placed_at"]) or start
            removed = _dt(hold["removed_at"])
            if placed <= end and (removed is None or removed >= start):
                return True
        return False

    def as_dict(self):
        data = asdict(self)
        for key in ("closed_at", "deletion_date", "deadline_moved_to", "hard_deletion_date", "soft_deleted_at",
                    "hard_deleted_at", "replayed_at"):
            data[key] = _iso(data[key])
        for key in ("soft_delay", "hard_delay"):
            delay = data.pop(key)
            data[key + "_hours"] = round(delay.total_seconds() / 3600, 2) if delay is not None else None
        data["holds"] = list(self.holds.values())
        data.pop("skipped_for_hold")
        data["skipped_for_hold"] = len(self.skipped_for_hold)
        data.pop("history")
        return data


@dataclass
class Report:
    date_from: date
    date_to: date
    as_of: datetime
    audit_head_hash: str
    audit_entries: int
    surveys: list
    nights_without_success: list
    summary: dict


def _nights(first, last):
    return [first + timedelta(days=n) for n in range((last - first).days + 1)] if last >= first else []


def _night_of(run):
    return run["scheduled_for"] or run["started_at"].astimezone(dt_timezone.utc).date()


def build_report(date_from=None, date_to=None, *, survey_id=None, as_of=None):
    """Every survey whose deletion date fell in [date_from, date_to] (or the one survey), judged as of `as_of`."""
    as_of = as_of or timezone.now()
    head = AuditEvent.objects.order_by("-id").values_list("entry_hash", flat=True).first() or ""
    entries = AuditEvent.objects.count()
    events = AuditEvent.objects.filter(survey_id__isnull=False)
    if survey_id is not None:
        events = events.filter(survey_id=survey_id)
    records = {}
    for event in events.order_by("created_at", "id").iterator(chunk_size=2000):
        records.setdefault(event.survey_id, SurveyRecord(event.survey_id)).apply(event)
    ledger = DeletionWarning.objects.order_by("survey_id", "deletion_date", "-threshold_days", "recipient_id")
    if survey_id is not None:
        ledger = ledger.filter(survey_id=survey_id)
    _attach_warnings(records, ledger)

    def in_period(record):
        if survey_id is not None:
            return True
        return record.deletion_date is not None and date_from <= record.deletion_date.date() <= date_to

    chosen = sorted((r for r in records.values() if in_period(r)), key=lambda r: (r.deletion_date or as_of, r.survey_id))

    runs = GovernanceRun.objects.filter(job=GovernanceRun.Job.DATA_GOVERNANCE, dry_run=False)
    successful = {_night_of(r) for r in runs.filter(status=GovernanceRun.Status.SUCCEEDED)
                  .values("scheduled_for", "started_at")}
    # A run that finished with failed items still did the night's deletions: only a night with no run that
    # finished at all (none, or only abandoned ones) makes a survey late by a "missed night".
    finished = {_night_of(r) for r in runs.filter(status__in=(GovernanceRun.Status.SUCCEEDED,
                                                               GovernanceRun.Status.FAILED))
                .values("scheduled_for", "started_at")}
    failure_nights = {}
    failed = (RunItem.objects.filter(outcome=RunItem.Outcome.FAILED, kind__in=("soft_delete", "hard_delete"),
                                     run__job=GovernanceRun.Job.DATA_GOVERNANCE)
              .values("object_id", "run__scheduled_for", "run__started_at"))
    for item in failed:
        night = item["run__scheduled_for"] or item["run__started_at"].astimezone(dt_timezone.utc).date()
        failure_nights.setdefault(item["object_id"], set()).add(night)
    for record in chosen:
        record.judge(as_of, finished, failure_nights)

    period_from = date_from or min((r.deletion_date.date() for r in chosen if r.deletion_date), default=as_of.date())
    period_to = date_to or as_of.date()
    missed = [n for n in _nights(period_from, min(period_to, as_of.date())) if n not in successful]
    return Report(period_from, period_to, as_of, head, entries, chosen, missed, _summary(chosen, missed))


def _attach_warnings(records, ledger):
    sent_at = {}
    for warning_id, at in (AuditEvent.objects.filter(action=Action.WARNING_SENT)
                           .filter(survey_id__in=list(records)).values_list("details__warning_id", "created_at")):
        sent_at[warning_id] = at
    failed_at = {}
    for warning_id, at in (AuditEvent.objects.filter(action=Action.WARNING_FAILED)
                           .filter(survey_id__in=list(records)).order_by("created_at", "id")
                           .values_list("details__warning_id", "created_at")):
        failed_at.setdefault(warning_id, []).append(at)
    for row in ledger.filter(survey_id__in=list(records)):
        record = records[row.survey_id]
        record.name = record.name or row.survey_name
        if record.deletion_date is None:
            record.deletion_date = row.deletion_date
        attempts_failed = failed_at.get(row.pk, [])
        record.warnings.append({
            "threshold_days": row.threshold_days,
            "kind": "soft-deletion notice" if row.threshold_days == DeletionWarning.SOFT_DELETION_NOTICE
            else f"{row.threshold_days}-day warning",
            "recipient_id": row.recipient_id, "recipient": row.recipient_email,
            "for_deletion_date": _iso(row.deletion_date),
            "at": _iso(sent_at.get(row.pk) or (attempts_failed[-1] if attempts_failed else None)),
            "outcome": row.status, "failed_attempts": len(attempts_failed),
            "note": row.skip_reason or row.last_error,
        })


def _summary(records, missed):
    due = [r for r in records if r.status != "not due"]
    late = [r for r in due if r.on_time is False]
    reasons = {}
    for r in late + [r for r in due if r.status == "pending"]:
        for reason in r.late_reasons:
            reasons[reason] = reasons.get(reason, 0) + 1
    warnings = [w for r in records for w in r.warnings]
    return {
        "surveys_in_period": len(records),
        "surveys_due": len(due),
        "deleted_on_time": sum(1 for r in due if r.on_time is True),
        "deleted_late": len(late),
        "late_or_pending_because": dict(sorted(reasons.items())),
        "still_pending": sum(1 for r in due if r.status == "pending"),
        "in_grace_period": sum(1 for r in due if r.status == "soft deleted"),
        "warnings_sent": sum(1 for w in warnings if w["outcome"] == DeletionWarning.Status.SENT),
        "warnings_failed": sum(1 for w in warnings if w["outcome"] == DeletionWarning.Status.FAILED),
        "warnings_not_sent": sum(1 for w in warnings if w["outcome"] not in (DeletionWarning.Status.SENT,
                                                                           DeletionWarning.Status.FAILED)),
        "nights_with_no_successful_run": len(missed),
    }


# --- Rendering ---------------------------------------------------------------------------------

def render(report, fmt, *, single=False):
    return {"md": render_markdown, "csv": render_csv, "json": render_json}[fmt](report, single=single)


def _header(report):
    return {"period_from": str(report.date_from), "period_to": str(report.date_to), "as_of": _iso(report.as_of),
            "audit_entries": report.audit_entries, "audit_head_hash": report.audit_head_hash}


def render_json(report, single=False):
    document = {**_header(report), "summary": report.summary,
                "nights_with_no_successful_run": [str(n) for n in report.nights_without_success],
                "surveys": [r.as_dict() for r in report.surveys]}
    if single:
        document["history"] = [h for r in report.surveys for h in r.history]
    return json.dumps(document, indent=2, sort_keys=False, default=str) + "\n"


CSV_COLUMNS = ("survey_id", "name", "organisation", "closed_at", "retention_months", "extensions", "deletion_date",
               "deadline_moved_to", "warnings", "soft_deleted_at", "hard_deletion_date", "hard_deleted_at",
               "soft_delay_hours", "hard_delay_hours", "status", "on_time", "late_reasons", "legal_holds",
               "replayed_at")


def _extension_text(e):
    what = "restored with" if e["restored"] else "extended by"
    return f"{e['at']} {e['by']} {what} {e['months_added']} months: {e['reason']}"


def _warning_text(w):
    note = f" ({w['note']})" if w["note"] else ""
    retried = f", {w['failed_attempts']} failed attempt(s)" if w["failed_attempts"] else ""
    return f"{w['kind']} to user {w['recipient_id']} <{w['recipient']}> at {w['at'] or '-'}: {w['outcome']}{retried}{note}"


def _hold_text(h):
    removed = (f"; removed {h['removed_at']} by {h['removed_by']}: {h['removal_reason']}" if h.get("removed_at")
               else "; still active")
    return f"placed {h['placed_at']} by {h['placed_by']} ({h['authority']}): {h['reason']}{removed}"


def _flat_row(record):
    data = record.as_dict()
    data["extensions"] = "; ".join(_extension_text(e) for e in record.extensions)
    data["warnings"] = "; ".join(_warning_text(w) for w in record.warnings)
    data["legal_holds"] = "; ".join(_hold_text(h) for h in record.holds.values())
    data["late_reasons"] = ", ".join(record.late_reasons)
    data["on_time"] = "" if record.on_time is None else ("yes" if record.on_time else "no")
    return {column: "" if data.get(column) is None else data[column] for column in CSV_COLUMNS}


def render_csv(report, single=False):
    """The summary as `# key: value` lines (readers take them as comments), then one row per survey."""
    out = io.StringIO()
    for key, value in {**_header(report), **report.summary}.items():
        out.write(f"# {key}: {json.dumps(value) if isinstance(value, dict) else value}\n")
    out.write(f"# nights_without_success: {' '.join(str(n) for n in report.nights_without_success)}\n")
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in report.surveys:
        writer.writerow(_flat_row(record))
    return out.getvalue()


def _md(value):
    return str(value if value not in (None, "") else "-").replace("|", "\\|").replace("\n", " ")


def _hours(delta):
    if delta is None:
        return "-"
    return f"{delta.total_seconds() / 3600:.1f} h"


def render_markdown(report, single=False):
    s = report.summary
    title = (f"# Deletion record: survey {report.surveys[0].survey_id}" if single and report.surveys
             else f"# Data governance report, {report.date_from} to {report.date_to}")
    lines = [title, "",
             f"As of {_iso(report.as_of)}. Built from the audit log ({report.audit_entries} entries, head hash "
             f"`{report.audit_head_hash}`), the warning ledger and the run history.", "",
             "## Summary", "",
             f"- Surveys whose deletion date fell in the period: {s['surveys_in_period']}",
             f"- Due by now: {s['surveys_due']}",
             f"- Deleted on time: {s['deleted_on_time']}",
             f"- Deleted late: {s['deleted_late']}",
             "- Late or pending because: " + (", ".join(f"{k} {v}" for k, v in s["late_or_pending_because"].items())
                                              or "-"),
             f"- Still pending: {s['still_pending']}",
             f"- In the grace period (soft-deleted): {s['in_grace_period']}",
             f"- Warnings sent: {s['warnings_sent']}; failed: {s['warnings_failed']}; not sent: "
             f"{s['warnings_not_sent']}",
             f"- Nights with no successful run: {s['nights_with_no_successful_run']}"
             + (f" ({', '.join(str(n) for n in report.nights_without_success)})"
                if report.nights_without_success else ""),
             "", "## Surveys", "",
             "| Survey | Name | Organisation | Closed | Retention | Deletion date | Soft deleted | Hard deleted "
             "| Delay (soft / hard) | Status | On time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report.surveys:
        on_time = "-" if r.on_time is None else ("yes" if r.on_time else "no: " + ", ".join(r.late_reasons))
        if r.status == "pending" and r.late_reasons:
            on_time = "pending: " + ", ".join(r.late_reasons)
        added = sum(e["months_added"] or 0 for e in r.extensions)
        months = f"{r.retention_months} months" if r.retention_months else "-"
        months += f" (+{added})" if added else ""
        lines.append(" | ".join([
            f"| {r.survey_id}", _md(r.name), _md(r.organisation), _md(_iso(r.closed_at)), months,
            _md(_iso(r.deletion_date)), _md(_iso(r.soft_deleted_at)), _md(_iso(r.hard_deleted_at)),
            f"{_hours(r.soft_delay)} / {_hours(r.hard_delay)}", r.status, on_time]) + " |")
    for r in report.surveys:
        lines += ["", f"### Survey {r.survey_id}: {_md(r.name)}", ""]
        if r.deadline_moved_to:
            lines.append(f"- Deadline moved on hold release to {_iso(r.deadline_moved_to)}")
        if r.replayed_at:
            lines.append(f"- Brought back by a database restore; deleted again at {_iso(r.replayed_at)}")
        lines.append("- Extensions: " + ("none" if not r.extensions else ""))
        lines += [f"  - {_md(_extension_text(e))}" for e in r.extensions]
        lines.append("- Legal holds: " + ("none" if not r.holds else ""))
        lines += [f"  - {_md(_hold_text(h))}" for h in r.holds.values()]
        if r.failed_nights:
            lines.append(f"- Deletion failed in the runs of: {', '.join(r.failed_nights)}")
        lines.append("- Warnings: " + ("none" if not r.warnings else ""))
        lines += [f"  - {_md(_warning_text(w))}" for w in r.warnings]
        if single:
            lines += ["", "#### History (audit log)", "", "| When | What | By | Run | Details |",
                      "| --- | --- | --- | --- | --- |"]
            lines += [f"| {h['at']} | {h['action']} | {_md(h['by'])} | {_md(h['run_id'])} | "
                      f"{_md(json.dumps(h['details'], sort_keys=True))} |" for h in r.history]
    return "\n".join(lines) + "\n"
