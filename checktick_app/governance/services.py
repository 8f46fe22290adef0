"""The two scheduled jobs as plain functions, shared by the management commands, Celery and the admin.

`run_data_governance` and `run_progress_cleanup` each own a run-history row for their whole life.
They select with the queryset rules, act through the one-survey functions in `deletion` and
`warnings`, and record every failure without stopping (R12).
"""

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import get_connection
from django.db import transaction
from django.utils import timezone

from checktick_app.config_checks import site_url_problems
from checktick_app.surveys.models import Survey, SurveyProgress

from checktick_app.audit.services import Action, actor_fields
from .deletion import DeletionOutcome, hard_delete_survey, soft_delete_survey
from checktick_app.audit.models import AuditEvent
from .models import DeletionWarning, RunItem
from .runs import Job, Trigger, close_run, heartbeat, open_run, record_item
from .warnings import (
    SendOutcome, due_ledger_rows, pending_soft_deletion_notices, recipients_for, rows_already_done,
    send_deletion_warning_inline, write_ledger_rows,
)

# Surveys per query and per ledger insert. `make bench` (bench/RESULTS.md, run B), 50k-survey dry run:
# 224 / 56 / 36 statements at 100 / 500 / 2000, no clear time gain past 500 (0.66 vs 0.79 s), 3.3-3.6 MiB at
# each; a real run is ~97% per-item work whatever the batch. 500 also keeps IN (...) lists under SQLite's limit.
BATCH_SIZE = 500
# Drafts per locked SELECT + DELETE. `make bench` (bench/RESULTS.md, run B), 100k expired of 150k drafts:
# 25k / 49k / 55k / 58k rows/s at 500 / 2000 / 5000 / 10000; past 2000 only +11-18%, for 2-4x longer
# row-locking transactions (40 -> 87-156 ms) and 2-4x the memory (1.2 -> 2.5-4.9 MiB).
CLEANUP_BATCH_SIZE = 2000


class GovernanceConfigError(ImproperlyConfigured):
    pass


def check_governance_config():
    """R8: refuse to start, naming each variable, rather than fail half-way or send broken links."""
    problems = site_url_problems(settings.SITE_URL, debug=settings.DEBUG)
    if settings.EMAIL_BACKEND == "django.core.mail.backends.smtp.EmailBackend" and not settings.EMAIL_HOST:
        problems.append("EMAIL_HOST is not set: warnings cannot be sent. Set EMAIL_HOST (and EMAIL_PORT).")
    if not settings.DEFAULT_FROM_EMAIL:
        problems.append("DEFAULT_FROM_EMAIL is not set: set the sender, e.g. DEFAULT_FROM_EMAIL=noreply@example.org")
    if problems:
        raise GovernanceConfigError("Governance run not started. " + " ".join(problems))


def id_chunks(queryset, size, *fields):
    """Keyset pagination over a due-query: each chunk re-asks the rule, so rows acted on drop out."""
    last = 0
    while True:
        chunk = list(queryset.filter(pk__gt=last).order_by("pk").values("pk", *fields)[:size])
        if not chunk:
            return
        yield chunk
        last = chunk[-1]["pk"]


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
    failures: list = field(default_factory=list)  # (kind, id, error)
    status: str = ""

    @property
    def ok(self):
        return not self.failures

    def counts(self):
        return {
            **{f"warnings_{t}d": len(lines) for t, lines in self.warned.items()},
            "warnings": sum(len(v) for v in self.warned.values()),
            "emails_sent": self.emails_sent, "emails_failed": self.emails_failed,
            "recipients_skipped": self.recipients_skipped, "surveys_without_recipients": len(self.without_recipients),
            "soft_deleted": len(self.soft_deleted), "hard_deleted": len(self.hard_deleted),
            "soft_deletion_notices_sent": self.notices_sent, "skipped_legal_hold": len(self.held),
        }

    @classmethod
    def from_run(cls, run):
        """The report of a finished run, rebuilt from its row (a Celery run's summary, printed by --wait)."""
        counts, details = run.counts or {}, run.details or {}

        def lines(rows):
            return [SurveyLine(r["id"], r["name"], datetime.fromisoformat(r["date"])) for r in rows or []]

        warnings = sorted((details.get("warnings") or {}).items(), key=lambda kv: -int(kv[0]))
        return cls(
            run_id=run.pk, dry_run=run.dry_run, now=run.started_at, status=run.status,
            warned={int(days): lines(rows) for days, rows in warnings},
            emails_sent=counts.get("emails_sent", 0), emails_failed=counts.get("emails_failed", 0),
            recipients_skipped=counts.get("recipients_skipped", 0),
            without_recipients=lines(details.get("without_recipients")),
            soft_deleted=lines(details.get("soft_deleted")), hard_deleted=lines(details.get("hard_deleted")),
            held=lines(details.get("skipped_legal_hold")),
            notices_sent=counts.get("soft_deletion_notices_sent", 0),
            failures=[(f["kind"], f["id"], f["error"]) for f in details.get("failures") or []],
        )

    def details(self):
        def rows(lines):
            return [{"id": line.id, "name": line.name, "date": line.date.isoformat()} for line in lines]

        return {
            "warnings": {str(t): rows(lines) for t, lines in self.warned.items()},
            "without_recipients": rows(self.without_recipients),
            "soft_deleted": rows(self.soft_deleted), "hard_deleted": rows(self.hard_deleted),
            "skipped_legal_hold": rows(self.held),
            "failures": [{"kind": k, "id": i, "error": e} for k, i, e in self.failures],
        }


def run_data_governance(*, now=None, dry_run=False, trigger=Trigger.COMMAND, user=None, scheduled_for=None,
                        batch_size=BATCH_SIZE):
    """The nightly job, inline: warnings, soft deletions, notices, hard deletions, holds reported."""
    check_governance_config()
    now = now or timezone.now()
    run = open_run(Job.DATA_GOVERNANCE, trigger=trigger, dry_run=dry_run, user=user, scheduled_for=scheduled_for)
    return process_data_governance(run, now=now, batch_size=batch_size)


def process_data_governance(run, *, now=None, batch_size=BATCH_SIZE):
    """The nightly job's work for a run row already opened, then closed (inline runs, Celery dry runs)."""
    now = now or timezone.now()
    dry_run = run.dry_run
    report = GovernanceReport(run_id=run.pk, dry_run=dry_run, now=now)
    try:
        connection = None if dry_run else get_connection()
        _warn(report, run, now, batch_size, connection)
        _delete(report, run, now, batch_size, "soft_delete", Survey.objects.due_for_soft_delete(now),
                soft_delete_survey, report.soft_deleted, "deletion_date")
        if dry_run:
            report.notices_sent = notices_a_run_would_send(report.soft_deleted, now, batch_size)
        else:
            for warning_id in pending_soft_deletion_notices(now).order_by("pk").values_list("pk", flat=True):
                _count_send(report, run, send_deletion_warning_inline(warning_id, now=now, connection=connection, run_id=run.pk),
                            notice=True)
        _delete(report, run, now, batch_size, "hard_delete", Survey.objects.due_for_hard_delete(now),
                hard_delete_survey, report.hard_deleted, "hard_deletion_date")
        _report_holds(report, run, now, batch_size, dry_run)
    except Exception:
        closed = close_run(run, counts=report.counts(), details=report.details(),
                           error=traceback.format_exc(limit=5))
        report.status = closed.status
        raise
    closed = close_run(run, counts=report.counts(), details=report.details())
    report.status = closed.status
    return report


def notices_a_run_would_send(soft_deleted, now, batch_size):
    """A preview's soft-deletion notices (R9): one per recipient with an address of each survey it would
    soft-delete (R7), and those an earlier run left pending."""
    ids = [line.id for line in soft_deleted]
    new = sum(
        1
        for start in range(0, len(ids), batch_size)
        for found in recipients_for(ids[start:start + batch_size]).values()
        for recipient in found if recipient.email
    )
    return new + pending_soft_deletion_notices(now).count()


def _warn(report, run, now, batch_size, connection):
    for days, chunk, warning_ids in select_warnings(report, run, now, batch_size):
        sent_to = set()
        for warning_id in warning_ids:
            result = send_deletion_warning_inline(warning_id, now=now, connection=connection, run_id=run.pk)
            if _count_send(report, run, result):
                sent_to.add(result.survey_id)
        report.warned[days] += [SurveyLine(s["pk"], s["name"], s["deletion_date"]) for s in chunk
                                if s["pk"] in sent_to]
        heartbeat(run)


def select_warnings(report, run, now, batch_size):
    """The producer's half of the warnings (STYLE 4), shared by the inline run and the Celery orchestrator.

    Per threshold and chunk of due surveys: finds the recipients (R7), notes surveys without any, and
    writes the ledger rows (R6). Yields (days, chunk, ids of the ledger rows to send now). A dry run
    only counts what would be sent and yields nothing.
    """
    for days in sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True):
        report.warned[days] = []
        for chunk in id_chunks(Survey.objects.due_for_warning(now, days), batch_size, "name", "deletion_date"):
            ids = [s["pk"] for s in chunk]
            recipients = recipients_for(ids)
            report.without_recipients += [SurveyLine(s["pk"], s["name"], s["deletion_date"])
                                          for s in chunk if not recipients[s["pk"]]]
            if report.dry_run:
                done = rows_already_done(ids, days)
                for s in chunk:
                    todo = [r for r in recipients[s["pk"]] if (s["pk"], r.user_id) not in done and r.email]
                    report.recipients_skipped += sum(1 for r in recipients[s["pk"]] if not r.email)
                    if todo:
                        report.warned[days].append(SurveyLine(s["pk"], s["name"], s["deletion_date"]))
                        report.emails_sent += len(todo)
                continue
            write_ledger_rows(chunk, days, recipients, run.pk, now)
            report.recipients_skipped += DeletionWarning.objects.filter(
                run_id=run.pk, survey_id__in=ids, threshold_days=days, status=DeletionWarning.Status.SKIPPED
            ).count()
            yield days, chunk, list(due_ledger_rows(ids, days, now).order_by("pk").values_list("pk", flat=True))


def _count_send(report, run, result, notice=False):
    if result.outcome is SendOutcome.SENT:
        if notice:
            report.notices_sent += 1
        else:
            report.emails_sent += 1
        return True
    if result.outcome in (SendOutcome.TRANSIENT_FAILURE, SendOutcome.PERMANENT_FAILURE):
        report.emails_failed += 1
        report.failures.append(("warning", result.warning_id, result.error))
        record_item(run, "warning", result.warning_id, RunItem.Outcome.FAILED, result.error)
    return False


def _delete(report, run, now, batch_size, kind, due, delete_one, lines, date_field):
    for chunk in id_chunks(due, batch_size, "name", date_field):
        for s in chunk:
            line = SurveyLine(s["pk"], s["name"], s[date_field])
            if report.dry_run:
                lines.append(line)
                continue
            try:
                result = delete_one(s["pk"], now=now, run_id=run.pk)
            except Exception as exc:  # noqa: BLE001 - one survey failing never stops the others (R12)
                error = f"{type(exc).__name__}: {exc}"
                report.failures.append((kind, s["pk"], error))
                record_item(run, kind, s["pk"], RunItem.Outcome.FAILED, error)
                continue
            if result.outcome is DeletionOutcome.DELETED:
                lines.append(line)
        heartbeat(run)


def _report_holds(report, run, now, batch_size, dry_run):
    """R13, R20: each night a held survey would have been deleted, the audit says why it was not."""
    for chunk in id_chunks(Survey.objects.held_back(now), batch_size, "name", "deletion_date"):
        report.held += [SurveyLine(s["pk"], s["name"], s["deletion_date"]) for s in chunk]
        if not dry_run:
            AuditEvent.objects.bulk_create([
                AuditEvent(action=Action.SKIPPED_FOR_HOLD, survey_id=s["pk"], survey_name=s["name"], run_id=run.pk,
                           created_at=now, details={"deletion_date": s["deletion_date"].isoformat()},
                           **actor_fields(None))
                for s in chunk
            ])


# --- Progress cleanup (R15, R16) -------------------------------------------------------------

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
        """The report so far of a run, from its row (a Celery cleanup continues from it; --wait prints it)."""
        counts = run.counts or {}
        return cls(
            run_id=run.pk, dry_run=run.dry_run, found=counts.get("found", 0), deleted=counts.get("deleted", 0),
            by_kind={k: counts.get(f"deleted_{k}", 0) for k in ("user", "token", "session")},
            complete=counts.get("complete", True), status=run.status,
        )


def cleanup_survey_progress(*, now=None, dry_run=False, batch_size=CLEANUP_BATCH_SIZE, time_budget=None,
                            report=None, continuing=False):
    """Delete expired drafts in batches; stop early (complete=False) when the time budget is spent.

    `continuing`: this call carries on a run that stopped at its time budget (a re-enqueued Celery
    task with the same `now`); its drafts were counted as found when the run started.
    """
    now = now or timezone.now()
    report = report or CleanupReport(run_id=None, dry_run=dry_run)
    expired = SurveyProgress.objects.expired(now)
    if dry_run:
        counts = expired.count_by_kind()
        report.found = sum(counts.values())
        report.by_kind = counts
        return report
    if not continuing:
        report.found += expired.count()
    report.complete = True
    started = time.monotonic()
    while True:
        with transaction.atomic():
            # Lock the batch, so a draft saved meanwhile (its expiry pushed out) is never deleted.
            batch = list(expired.select_for_update().order_by("pk").values_list("pk", "user_id", "access_token_id")[:batch_size])
            if not batch:
                break
            SurveyProgress.objects.filter(pk__in=[pk for pk, _, _ in batch]).delete()
        for _, user_id, token_id in batch:
            report.by_kind["user" if user_id else "token" if token_id else "session"] += 1
        report.deleted += len(batch)
        if time_budget is not None and time.monotonic() - started > time_budget:
            report.complete = not expired.exists()
            break
    return report


def run_progress_cleanup(*, now=None, dry_run=False, trigger=Trigger.COMMAND, user=None, scheduled_for=None,
                         batch_size=CLEANUP_BATCH_SIZE, time_budget=None):
    run = open_run(Job.PROGRESS_CLEANUP, trigger=trigger, dry_run=dry_run, user=user, scheduled_for=scheduled_for)
    report = CleanupReport(run_id=run.pk, dry_run=dry_run)
    try:
        cleanup_survey_progress(now=now, dry_run=dry_run, batch_size=batch_size, time_budget=time_budget,
                                report=report)
    except Exception:
        report.status = close_run(run, counts=report.counts(), error=traceback.format_exc(limit=5)).status
        raise
    report.status = close_run(run, counts=report.counts()).status
    return report


# --- Forecast --------------------------------------------------------------------------------

def forecast(*, days=30, now=None):
    """What each of the next `days` nightly runs will warn, soft-delete and hard-delete, by the same rules."""
    now = now or timezone.now()
    nights = []
    for offset in range(days):
        at = now + timedelta(days=offset)
        nights.append({
            "at": at,
            "warnings": {t: Survey.objects.due_for_warning(at, t).count() for t in settings.CHECKTICK_WARNING_DAYS},
            "soft_delete": Survey.objects.due_for_soft_delete(at).count(),
            "hard_delete": Survey.objects.due_for_hard_delete(at).count(),
        })
    return nights
