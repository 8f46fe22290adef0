"""The two scheduled jobs' entry points for a run in this process (the cron commands), the progress
cleanup's batches, and the forecast.

A data-governance run is planned, executed and finished by the run engine (engine.py), whatever
starts it; here it is only opened and handed to the engine's inline transport.
"""

import logging
import time
from collections import Counter
from dataclasses import dataclass
import traceback
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from checktick_app.surveys.models import Survey, SurveyProgress

from . import engine
from .reports import CleanupReport
from .models import GovernanceRun, RunItem
from .runs import Job, RunStatus, Trigger, close_run, open_run, record_item

logger = logging.getLogger(__name__)
Kind = RunItem.Kind

# Drafts per batch (one DELETE statement, its own transaction). `make bench` (bench/RESULTS.md), 200k expired
# of 300k drafts: 0.52-0.71 s at 2,000 and 0.47-0.66 s at 10,000; a batch of 10,000 holds its row locks for
# 17-50 ms, far below the second a batch may lock drafts that a respondent could be saving.
CLEANUP_BATCH_SIZE = 10_000


def run_data_governance(*, now=None, dry_run=False, trigger=Trigger.COMMAND, user=None, scheduled_for=None,
                        batch_size=engine.BATCH_SIZE):
    """The nightly job in this process: open the run, then the engine plans, executes and finishes it."""
    engine.check_governance_config()
    run = open_run(Job.DATA_GOVERNANCE, trigger=trigger, dry_run=dry_run, user=user, scheduled_for=scheduled_for,
                   now=now)
    return engine.run_inline(run, batch_size=batch_size)


# --- Progress cleanup (R15, R16) -------------------------------------------------------------

def delete_expired_drafts(*, now=None, dry_run=False, batch_size=CLEANUP_BATCH_SIZE, time_budget=None,
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
    after = 0  # keyset: each batch starts past the last one, never re-reading the live rows below it
    while True:
        batch = _delete_batch(expired, after, batch_size)
        if not batch.deleted:
            break
        after = batch.last_id
        for kind, count in batch.by_kind.items():
            report.by_kind[kind] += count
        report.deleted += batch.deleted
        if time_budget is not None and time.monotonic() - started > time_budget:
            report.complete = not expired.exists()
            break
    return report


def _delete_batch(expired, after, batch_size):
    """One batch, one statement: delete the next `batch_size` expired drafts past `after`; returns a Batch
    (how many, the last id, how many of each kind).

    The batch is an id range, (after, the id of the batch_size-th expired draft past it], read through the
    primary key in order: its cost grows with the batch, never with the table (`id IN (subquery)` was
    planned as a hash join over the whole table; `id = ANY(array)` as one index probe per draft). The
    DELETE repeats the expiry rule on the rows themselves, so a draft saved meanwhile (its expiry pushed
    out) is re-read under the row lock and left (PostgreSQL re-checks a concurrently updated row against
    the whole WHERE; SQLite has one writer at a time).
    """
    quote = connection.ops.quote_name
    table, pk = quote(SurveyProgress._meta.db_table), quote("id")
    returned = ", ".join(quote(SurveyProgress._meta.get_field(name).column) for name in ("id", "user", "access_token"))
    last_sql, last_params = (expired.filter(pk__gt=after).order_by("pk").values("pk")[batch_size - 1:batch_size]
                             .query.sql_with_params())
    rule_sql, rule_params = expired.query.get_compiler(connection=connection).compile(expired.query.where)
    # Fewer than batch_size left: the range runs to the end of the table.
    delete = (f"DELETE FROM {table} WHERE {table}.{pk} > %s AND {table}.{pk} <= COALESCE(({last_sql}), %s) "
              f"AND ({rule_sql}) RETURNING {returned}")
    params = [after, *last_params, LAST_ID, *rule_params]
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.execute(delete, params)
            rows = cursor.fetchall()
            return Batch(len(rows), max((r[0] for r in rows), default=None), Counter(
                "user" if user_id else "token" if token_id else "session" for _, user_id, token_id in rows))
        # PostgreSQL counts what it deleted itself: one row back, not one per draft.
        cursor.execute(
            f"WITH deleted AS ({delete}) SELECT count(*), max(id), count(*) FILTER (WHERE user_id IS NOT NULL), "
            "count(*) FILTER (WHERE user_id IS NULL AND access_token_id IS NOT NULL) FROM deleted", params)
        deleted, last, users, tokens = cursor.fetchone()
        return Batch(deleted, last, Counter({"user": users, "token": tokens, "session": deleted - users - tokens}))


@dataclass
class Batch:
    deleted: int
    last_id: int | None
    by_kind: Counter


LAST_ID = 2 ** 63 - 1  # beyond any BigAutoField id


def run_progress_cleanup(*, now=None, dry_run=False, trigger=Trigger.COMMAND, user=None, scheduled_for=None,
                         batch_size=CLEANUP_BATCH_SIZE, time_budget=None):
    run = open_run(Job.PROGRESS_CLEANUP, trigger=trigger, dry_run=dry_run, user=user, scheduled_for=scheduled_for)
    report = CleanupReport(run_id=run.pk, dry_run=dry_run)
    try:
        delete_expired_drafts(now=now, dry_run=dry_run, batch_size=batch_size, time_budget=time_budget,
                              report=report)
    except Exception:
        report.status = close_run(run, counts=report.counts(), error=traceback.format_exc(limit=5)).status
        raise
    report.status = close_run(run, counts=report.counts()).status
    return report


def run_cleanup_slice(run_id, *, batch_size=None, time_budget=None):
    """One bounded slice of a cleanup run on Celery (tasks.clean_up_progress re-sends itself until done).
    True when the run is finished; False when it must continue. A run of the other job, or one that is
    not running, is left alone."""
    run = GovernanceRun.objects.filter(pk=run_id, job=Job.PROGRESS_CLEANUP, status=RunStatus.RUNNING).first()
    if run is None:
        logger.info("Cleanup run #%s is not running any more: nothing to do.", run_id)
        return True
    report = CleanupReport.from_run(run)
    continuing = bool(run.counts)
    try:
        # The run's own clock is "now" for every slice, so all slices apply the same expiry rule.
        delete_expired_drafts(now=run.now, dry_run=run.dry_run, batch_size=batch_size or CLEANUP_BATCH_SIZE,
                              time_budget=time_budget, report=report, continuing=continuing)
    except Exception:
        close_run(run, counts=report.counts(), error=traceback.format_exc(limit=5))
        raise
    record_item(run, Kind.CLEANUP_BATCH, RunItem.objects.filter(run=run, kind=Kind.CLEANUP_BATCH).count() + 1,
                RunItem.Outcome.DONE)
    if run.dry_run or report.complete:
        close_run(run, counts=report.counts())
        return True
    GovernanceRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).update(
        counts=report.counts(), heartbeat_at=timezone.now())
    logger.info("Cleanup run #%s: time budget spent after %d deletions; continuing in a new task.",
                run.pk, report.deleted)
    return False


# --- Forecast --------------------------------------------------------------------------------

def forecast(*, days=30, now=None):
    """What each of the next `days` nightly runs will warn, soft-delete and hard-delete, by the same rules."""
    now = now or timezone.now()
    nights = []
    for offset in range(days):
        at = now + timedelta(days=offset)
        nights.append({
            "at": at,
            # The dry run's counts: ledger-aware, so a warning already sent is not forecast again.
            "warnings": {days: len(ids) for days, ids in engine.surveys_a_run_would_warn(at).items()},
            "soft_delete": Survey.objects.due_for_soft_delete(at).count(),
            "hard_delete": Survey.objects.due_for_hard_delete(at).count(),
        })
    return nights
