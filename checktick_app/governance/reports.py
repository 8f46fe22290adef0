"""What a run did, as one report: for data governance, the aggregate over the run's items.

`run_report` is the only place a data-governance run is counted. The command's summary, the run
row's counts and details (and so the admin and the metrics), `--async --wait` and an abandoned run's
record all come from it.
"""

from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings

from .models import RunItem

Kind, Outcome = RunItem.Kind, RunItem.Outcome


@dataclass
class SurveyLine:
    id: int
    name: str
    date: object


@dataclass
class GovernanceReport:
    run_id: int | None
    dry_run: bool
    now: object
    warned: dict = field(default_factory=dict)  # threshold -> [SurveyLine]
    emails_sent: int = 0
    emails_failed: int = 0
    recipients_skipped: int = 0
    without_recipients: list = field(default_factory=list)
    soft_deleted: list = field(default_factory=list)
    hard_deleted: list = field(default_factory=list)
    held: list = field(default_factory=list)
    notices_sent: int = 0
    hard_warned: list = field(default_factory=list)  # surveys warned of a moved hard-deletion date (R23)
    hard_warnings_sent: int = 0
    pending: int = 0
    failures: list = field(default_factory=list)  # (kind, id, error)
    status: str = ""

    @property
    def ok(self):
        return not self.failures

    def counts(self):
        counts = {
            **{f"warnings_{t}d": len(lines) for t, lines in self.warned.items()},
            "warnings": sum(len(v) for v in self.warned.values()),
            "emails_sent": self.emails_sent, "emails_failed": self.emails_failed,
            "recipients_skipped": self.recipients_skipped, "surveys_without_recipients": len(self.without_recipients),
            "soft_deleted": len(self.soft_deleted), "hard_deleted": len(self.hard_deleted),
            "soft_deletion_notices_sent": self.notices_sent,
            "hard_deletion_warnings_sent": self.hard_warnings_sent, "skipped_legal_hold": len(self.held),
            "failed_items": len(self.failures),
        }
        if self.pending:
            counts["pending_items"] = self.pending  # a run that stopped (abandoned) before every item settled
        return counts

    def details(self):
        def rows(lines):
            return [{"id": line.id, "name": line.name, "date": line.date.isoformat()} for line in lines]

        return {
            "warnings": {str(t): rows(lines) for t, lines in self.warned.items()},
            "without_recipients": rows(self.without_recipients),
            "soft_deleted": rows(self.soft_deleted), "hard_deletion_warnings": rows(self.hard_warned),
            "hard_deleted": rows(self.hard_deleted), "skipped_legal_hold": rows(self.held),
            "failures": [{"kind": k, "id": i, "error": e} for k, i, e in self.failures],
        }

    @classmethod
    def from_run(cls, run):
        """The report saved on a finished run's row (what `--async --wait` prints)."""
        counts, details = run.counts or {}, run.details or {}

        def lines(rows):
            return [SurveyLine(r["id"], r["name"], datetime.fromisoformat(r["date"])) for r in rows or []]

        warnings = sorted((details.get("warnings") or {}).items(), key=lambda kv: -int(kv[0]))
        return cls(
            run_id=run.pk, dry_run=run.dry_run, now=run.now, status=run.status,
            warned={int(days): lines(rows) for days, rows in warnings},
            emails_sent=counts.get("emails_sent", 0), emails_failed=counts.get("emails_failed", 0),
            recipients_skipped=counts.get("recipients_skipped", 0),
            without_recipients=lines(details.get("without_recipients")),
            soft_deleted=lines(details.get("soft_deleted")), hard_deleted=lines(details.get("hard_deleted")),
            held=lines(details.get("skipped_legal_hold")),
            notices_sent=counts.get("soft_deletion_notices_sent", 0),
            hard_warned=lines(details.get("hard_deletion_warnings")),
            hard_warnings_sent=counts.get("hard_deletion_warnings_sent", 0), pending=counts.get("pending_items", 0),
            failures=[(f["kind"], f["id"], f["error"]) for f in details.get("failures") or []],
        )


def run_report(run):
    """The report of a data-governance run, aggregated from its items (in one pass, in item order)."""
    report = GovernanceReport(run_id=run.pk, dry_run=run.dry_run, now=run.now, status=run.status,
                              warned={days: [] for days in sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True)})
    warned, held, hard_warned = {}, {}, {}
    columns = ("kind", "outcome", "object_id", "survey_id", "survey_name", "date", "threshold_days", "reason", "error")
    for item in RunItem.objects.filter(run_id=run.pk).order_by("pk").values(*columns).iterator(chunk_size=2000):
        kind, outcome = item["kind"], item["outcome"]
        line = SurveyLine(item["survey_id"], item["survey_name"], item["date"])
        if outcome == Outcome.PENDING:
            report.pending += 1
        elif outcome == Outcome.FAILED:
            report.failures.append((kind, item["object_id"], item["error"]))
        if kind in (Kind.WARNING, Kind.NOTICE, Kind.HARD_WARNING):
            if outcome == Outcome.FAILED:
                report.emails_failed += 1
            elif kind == Kind.NOTICE and outcome == Outcome.DONE:
                report.notices_sent += 1
            elif kind == Kind.HARD_WARNING and outcome == Outcome.DONE:
                report.hard_warnings_sent += 1
                hard_warned[line.id] = line
            elif outcome == Outcome.DONE:
                report.emails_sent += 1
                warned.setdefault(item["threshold_days"], {})[line.id] = line
            elif outcome == Outcome.SKIPPED and item["reason"] == RunItem.NO_ADDRESS:
                report.recipients_skipped += 1
            elif outcome == Outcome.SKIPPED and item["reason"] == RunItem.NO_RECIPIENT:
                report.without_recipients.append(line)
        elif kind in (Kind.SOFT_DELETE, Kind.HARD_DELETE):
            if outcome == Outcome.DONE:
                (report.soft_deleted if kind == Kind.SOFT_DELETE else report.hard_deleted).append(line)
            elif outcome == Outcome.SKIPPED and item["reason"] == RunItem.ON_HOLD:
                held[line.id] = line  # a hold placed between the plan and the deletion
        elif kind == Kind.HELD:
            held[line.id] = line
    for days, by_survey in warned.items():
        report.warned[days] = sorted(by_survey.values(), key=lambda line: line.id)
    report.held = sorted(held.values(), key=lambda line: line.id)
    report.hard_warned = sorted(hard_warned.values(), key=lambda line: line.id)
    for lines in (report.soft_deleted, report.hard_deleted, report.without_recipients):
        lines.sort(key=lambda line: line.id)
    return report


@dataclass
class CleanupReport:
    run_id: int | None
    dry_run: bool
    found: int = 0
    deleted: int = 0
    by_kind: dict = field(default_factory=lambda: {"user": 0, "token": 0, "session": 0})
    complete: bool = True
    status: str = ""

    def counts(self):
        return {"found": self.found, "deleted": self.deleted, **{f"deleted_{k}": v for k, v in self.by_kind.items()},
                "complete": self.complete}

    @classmethod
    def from_run(cls, run):
        """The report so far of a cleanup run, from its row (each slice carries on from it; --wait prints it)."""
        counts = run.counts or {}
        return cls(
            run_id=run.pk, dry_run=run.dry_run, found=counts.get("found", 0), deleted=counts.get("deleted", 0),
            by_kind={k: counts.get(f"deleted_{k}", 0) for k in ("user", "token", "session")},
            complete=counts.get("complete", True), status=run.status,
        )
