"""The five bench scenarios. Each returns plain dicts (JSON-ready) and can run at any size, so the
smoke test (tests/bench) runs the very same functions at a tiny size.

Passes. Time, statements and peak RSS come from an untraced pass that commits, as in production.
The Python heap peak (tracemalloc) comes from a second pass: the dry run changes nothing and is
simply run again; a destructive job is traced inside a transaction that is rolled back (then
VACUUM ANALYZE), before its timed pass on the same rows. Tracing the real governance run triples
its time, so it is traced only up to `trace_real_max` surveys; the larger sizes give peak RSS.
"""

import math
import time
from contextlib import ExitStack, contextmanager
from unittest import mock

from django.conf import settings
from django.core import mail
from django.db import connection, transaction

from checktick_app.governance import engine, services
from checktick_app.surveys.models import Survey, SurveyProgress

from .measure import SELECTION, Meter, measure
from .seed import analyze, drop_snapshot, reset, restore, seed_drafts, seed_governance, snapshot

# The per-item work of a governance run: one engine.execute_item call (one email, one soft deletion, one
# hard deletion), everything it does included (reading the item, settling it, looking whether the run is
# done). Queries made inside it are per-item work by design (R8 one email per recipient, R11 one
# transaction per survey); everything else is planning and bookkeeping and must not grow with the
# number of surveys.
ITEM_SCOPES = {"warning": "email", "notice": "email", "soft_delete": "soft_delete", "hard_delete": "hard_delete"}


def _log(progress, message):
    if progress:
        progress(message)


@contextmanager
def _item_scopes(meter):
    """Each execute_item call counted under its item's kind, which only the call itself reads: the wrapped
    _delete/_send note the kind, and the call's statements are filed under it once it returns."""
    kind = {}

    def noting(function):
        def noted(item, *args, **kwargs):
            kind["last"] = item.kind
            return function(item, *args, **kwargs)
        return noted

    def scope_of_the_call():
        return ITEM_SCOPES.get(kind.pop("last", None), "item_not_executed")

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(engine, "_delete", noting(engine._delete)))
        stack.enter_context(mock.patch.object(engine, "_send", noting(engine._send)))
        stack.enter_context(mock.patch.object(engine, "execute_item",
                                              meter.wrap_deferred(scope_of_the_call, engine.execute_item)))
        yield


def _selections(states, batch_size):
    """How many survey ids each planning step of a run walks (engine.plan_steps), and how many chunks that
    makes. The notice step walks only notices earlier runs left unsent: none in a fresh seed."""
    walked = {
        "warn_30": states["warned_30_already"] + states["warn_30"], "warn_7": states["warn_7"],
        "warn_1": states["warn_1"], "soft": states["soft_due"], "hard": states["hard_due"],
        "held": states["held_soft"] + states["held_hard"],
    }
    return walked, sum(math.ceil(n / batch_size) for n in walked.values())


def governance_pass(now, *, dry_run, batch_size, memory=False, rollback=False):
    """One run_data_governance call (inline) under the meter; emails go to Django's locmem outbox."""
    meter = Meter()
    mail.outbox = []
    with _item_scopes(meter):
        m = measure(lambda: services.run_data_governance(now=now, dry_run=dry_run, batch_size=batch_size),
                    memory=memory, rollback=rollback, meter=meter)
    m.delivered = len(mail.outbox)
    mail.outbox = []
    return m


def median_of(measurements):
    """The median pass by wall time (the lower one of an even count), with every pass's wall time attached."""
    runs = sorted(measurements, key=lambda m: m.wall_s)
    median = runs[(len(runs) - 1) // 2]
    median.runs_s = [round(m.wall_s, 3) for m in runs]
    return median


def repeated(pass_function, repeat):
    return median_of([pass_function() for _ in range(repeat)])


def _figures(timed, traced, batch_size, chunks):
    report, meter = timed.result, timed.meter
    warned = {str(t): len(lines) for t, lines in sorted(report.warned.items(), reverse=True)}
    acted = sum(warned.values()) + len(report.soft_deleted) + len(report.hard_deleted)
    per_item = {
        scope: {"calls": meter.calls[scope], "queries": meter.statements[scope],
                "queries_per_call": round(meter.statements[scope] / meter.calls[scope], 2),
                "ms_per_call": round(meter.seconds[scope] * 1000 / meter.calls[scope], 3)}
        for scope in sorted(set(ITEM_SCOPES.values())) if meter.calls[scope]
    }
    item_seconds = sum(meter.seconds[s] for s in set(ITEM_SCOPES.values()))
    return {
        "batch_size": batch_size, "dry_run": report.dry_run, "status": report.status, "failures": len(report.failures),
        "warned": warned, "soft_deleted": len(report.soft_deleted), "hard_deleted": len(report.hard_deleted),
        "held": len(report.held), "acted_on": acted, "emails_sent": report.emails_sent,
        "notices_sent": report.notices_sent, "emails_delivered": timed.delivered,
        "wall_s": round(timed.wall_s, 3), "selection_s": round(timed.wall_s - item_seconds, 3),
        "queries": meter.total, "selection_queries": meter.statements[SELECTION], "chunks": chunks,
        "selection_queries_per_chunk": round(meter.statements[SELECTION] / chunks, 2) if chunks else None,
        "queries_by_kind": dict(meter.by_kind), "per_item": per_item,
        "ms_per_acted": round(timed.wall_s * 1000 / acted, 3) if acted else None,
        "queries_per_acted": round(meter.total / acted, 2) if acted else None,
        "peak_mib": round(traced.peak_mib, 2) if traced else None,
        "retained_mib": round(traced.retained_mib, 2) if traced else None,
        "peak_rss_mib": _round(timed.peak_rss_mib), "runs_s": getattr(timed, "runs_s", [round(timed.wall_s, 3)]),
    }


def _round(value, digits=2):
    return None if value is None else round(value, digits)


def matches_expected(figures, expected):
    """What the run did against what the seed says it must do (R5-R7, R9, R11, R13)."""
    got = {"warned": {int(k): v for k, v in figures["warned"].items()}, "soft_deleted": figures["soft_deleted"],
           "hard_deleted": figures["hard_deleted"], "held": figures["held"]}
    want = {"warned": expected["warned"], "soft_deleted": expected["soft_deleted"],
            "hard_deleted": expected["hard_deleted"], "held": expected["held"]}
    if not figures["dry_run"]:
        got |= {"emails": figures["emails_sent"], "notices": figures["notices_sent"]}
        want |= {"emails": expected["warning_emails"], "notices": expected["notice_emails"]}
    return {key: (got[key], want[key]) for key in want if got[key] != want[key]}


def governance_at(n, now, *, batch_size, memory=True, trace_real=True, dry=True, real=True, repeat=3, progress=None):
    """Scenarios 1 and 2 at one size: seed, dry run (median of `repeat` timed, traced), real run (traced and
    rolled back, then timed once: it is destructive and dominated by per-item work)."""
    reset()
    started = time.perf_counter()
    seeded = seed_governance(n, now)
    analyze()
    seed_s = time.perf_counter() - started
    _, chunks = _selections(seeded["states"], batch_size)
    row = {"surveys": n, "seed_s": round(seed_s, 2), "seed": seeded}
    if dry:
        timed = repeated(lambda: governance_pass(now, dry_run=True, batch_size=batch_size), repeat)
        traced = governance_pass(now, dry_run=True, batch_size=batch_size, memory=True) if memory else None
        row["dry_run"] = _figures(timed, traced, batch_size, chunks)
        row["dry_run"]["mismatch"] = matches_expected(row["dry_run"], seeded["expected"])
        _log(progress, f"  dry run  {n:>7} surveys: {timed.wall_s:7.2f} s, {timed.meter.total} queries")
    if real:
        traced = None
        if memory and trace_real:
            traced = governance_pass(now, dry_run=False, batch_size=batch_size, memory=True, rollback=True)
            analyze()
        timed = governance_pass(now, dry_run=False, batch_size=batch_size)
        row["real"] = _figures(timed, traced, batch_size, chunks)
        row["real"]["mismatch"] = matches_expected(row["real"], seeded["expected"])
        _log(progress, f"  real run {n:>7} surveys: {timed.wall_s:7.2f} s, {timed.meter.total} queries")
    return row


def scenario_governance(sizes, now, *, batch_size=None, memory=True, trace_real_max=1_000, repeat=3, progress=None):
    """Scenarios 1 (real run) and 2 (dry run) over each size."""
    batch_size = batch_size or engine.BATCH_SIZE
    return [governance_at(n, now, batch_size=batch_size, memory=memory, trace_real=n <= trace_real_max,
                          repeat=repeat, progress=progress) for n in sizes]


def scenario_batch_size(now, *, batch_sizes, real_surveys, dry_surveys, memory=True, repeat=3, progress=None):
    """Scenario 4: engine.BATCH_SIZE candidates: a real run (reseeded for each; peak RSS, not traced)
    and a dry run (seeded once; traced), which is the selection alone."""
    rows = []
    for b in batch_sizes:
        row = governance_at(real_surveys, now, batch_size=b, memory=memory, trace_real=False, dry=False,
                            progress=progress)
        rows.append({"mode": "real", "surveys": real_surveys, **_batch_row(row["real"])})
    reset()
    seeded = seed_governance(dry_surveys, now)
    analyze()
    timed = {b: [] for b in batch_sizes}
    for _ in range(repeat):  # round-robin, so a change in the machine's load touches every batch size alike
        for b in batch_sizes:
            timed[b].append(governance_pass(now, dry_run=True, batch_size=b))
    for b in batch_sizes:
        _, chunks = _selections(seeded["states"], b)
        median = median_of(timed[b])
        traced = governance_pass(now, dry_run=True, batch_size=b, memory=True) if memory else None
        rows.append({"mode": "dry run", "surveys": dry_surveys, **_batch_row(_figures(median, traced, b, chunks))})
        _log(progress, f"  dry run  {dry_surveys:>7} surveys, batch {b:>5}: {median.wall_s:7.2f} s {median.runs_s}")
    return rows


def _batch_row(f):
    keys = ("batch_size", "wall_s", "selection_s", "queries", "selection_queries", "chunks", "acted_on",
            "peak_mib", "retained_mib", "peak_rss_mib", "ms_per_acted", "runs_s")
    return {k: f[k] for k in keys}


def _cleanup_row(m, seeded, batch_size, timed, traced, seed_s=None):
    report = timed.result
    batches = math.ceil(seeded["expired"] / batch_size)
    return {
        "drafts": m, "expired": seeded["expired"], "fresh": seeded["fresh"], "batch_size": batch_size,
        "seed_s": _round(seed_s), "deleted": report.deleted, "found": report.found, "by_kind": report.by_kind,
        "correct": report.deleted == seeded["expired"] and report.by_kind == seeded["expired_by_kind"]
        and timed.remaining == seeded["fresh"],
        "wall_s": round(timed.wall_s, 3), "runs_s": getattr(timed, "runs_s", [round(timed.wall_s, 3)]),
        "rows_per_s": round(report.deleted / timed.wall_s) if timed.wall_s else None,
        "ms_per_batch": round(timed.wall_s * 1000 / batches, 2) if batches else None,
        "queries": timed.meter.total, "batches": batches,
        "queries_per_batch": round(timed.meter.total / batches, 2) if batches else None,
        "queries_by_kind": dict(timed.meter.by_kind),
        "peak_mib": _round(traced.peak_mib) if traced else None,
        "retained_mib": _round(traced.retained_mib) if traced else None,
        "peak_rss_mib": _round(timed.peak_rss_mib),
    }


def cleanup_pass(now, *, batch_size, memory=False, rollback=False):
    m = measure(lambda: services.delete_expired_drafts(now=now, batch_size=batch_size),
                memory=memory, rollback=rollback)
    m.remaining = SurveyProgress.objects.count()
    return m


def cleanup_at(m, now, *, batch_size, memory=True, progress=None):
    reset()
    started = time.perf_counter()
    seeded = seed_drafts(m, now)
    analyze()
    seed_s = time.perf_counter() - started
    traced = None
    if memory:
        traced = cleanup_pass(now, batch_size=batch_size, memory=True, rollback=True)
        analyze()
    timed = cleanup_pass(now, batch_size=batch_size)
    _log(progress, f"  cleanup  {m:>7} drafts, batch {batch_size:>5}: {timed.wall_s:7.2f} s, "
                   f"{timed.meter.total} queries")
    return _cleanup_row(m, seeded, batch_size, timed, traced, seed_s)


def scenario_cleanup(now, *, sizes, sweep_size, batch_sizes, batch_size=None, memory=True, repeat=3,
                     progress=None):
    """Scenario 3: the cleanup at the current CLEANUP_BATCH_SIZE over each size (one timed pass each), then
    each candidate batch size over one data set, seeded once and its drafts table restored from a snapshot
    before every pass: traced passes first, then `repeat` rounds of timed passes (round-robin, median)."""
    batch_size = batch_size or services.CLEANUP_BATCH_SIZE
    scaling = [cleanup_at(m, now, batch_size=batch_size, memory=memory, progress=progress) for m in sizes]
    reset()
    seeded = seed_drafts(sweep_size, now)
    snapshot(SurveyProgress)
    traced, timed = {}, {b: [] for b in batch_sizes}
    try:
        for b in batch_sizes if memory else ():
            restore(SurveyProgress)
            analyze()
            traced[b] = cleanup_pass(now, batch_size=b, memory=True, rollback=True)
        for _ in range(repeat):
            for b in batch_sizes:
                restore(SurveyProgress)
                analyze()
                timed[b].append(cleanup_pass(now, batch_size=b))
    finally:
        drop_snapshot(SurveyProgress)
    sweep = []
    for b in batch_sizes:
        median = median_of(timed[b])
        sweep.append(_cleanup_row(sweep_size, seeded, b, median, traced.get(b)))
        _log(progress, f"  cleanup  {sweep_size:>7} drafts, batch {b:>5}: {median.wall_s:7.2f} s {median.runs_s}")
    return {"scaling": scaling, "sweep": sweep}


# --- Scenario 5: EXPLAIN ---------------------------------------------------------------------------

PARTIAL_INDEXES = {"survey_live_deletion_date", "survey_soft_deleted_hard_date", "legalhold_active_by_survey"}
SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Bitmap Index Scan"}


def due_queries(now, *, batch_size, cleanup_batch_size):
    """(rule, form, queryset): each rule bare, and as its first batch is fetched by the job."""
    survey_rules = [(f"due_for_warning(now, {d})", Survey.objects.due_for_warning(now, d), "deletion_date")
                    for d in sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True)]
    survey_rules += [("due_for_soft_delete(now)", Survey.objects.due_for_soft_delete(now), "deletion_date"),
                     ("due_for_hard_delete(now)", Survey.objects.due_for_hard_delete(now), "hard_deletion_date"),
                     ("held_back(now)", Survey.objects.held_back(now), "deletion_date")]
    for label, qs, date_field in survey_rules:
        yield label, "rule", qs.values("pk")
        yield label, f"batch of {batch_size}", qs.filter(pk__gt=0).order_by("pk").values("pk", "name", date_field)[
            :batch_size]
    expired = SurveyProgress.objects.expired(now)
    yield "SurveyProgress.expired(now)", "rule", expired.values("pk")
    yield "SurveyProgress.expired(now)", f"batch of {cleanup_batch_size}", (
        expired.select_for_update().order_by("pk").values_list("pk", "user_id", "access_token_id")[:cleanup_batch_size])


def _pg_nodes(plan, index_table, depth=0):
    kind = plan["Node Type"] + (f" ({plan['Join Type']})" if plan.get("Join Type", "Inner") != "Inner" else "")
    node = {"type": kind, "depth": depth,
            "relation": plan.get("Relation Name") or index_table.get(plan.get("Index Name")),
            "index": plan.get("Index Name"), "rows": plan.get("Actual Rows"), "loops": plan.get("Actual Loops"),
            "estimate": plan.get("Plan Rows"),
            "removed_by_filter": plan.get("Rows Removed by Filter", 0)
            + plan.get("Rows Removed by Index Recheck", 0), "filter": plan.get("Filter")}
    yield node
    for child in plan.get("Plans", []):
        yield from _pg_nodes(child, index_table, depth + 1)


def _access(nodes, table):
    """How `table` is reached: the scan nodes on it, as 'Seq Scan' or 'Index Scan using <index>'."""
    on_table = [n for n in nodes if n["relation"] == table and n["type"] in SCANS and n["type"] != "Bitmap Heap Scan"]
    return [n["type"] + (f" using {n['index']}" if n["index"] else "") for n in on_table]


def verdict(access, table):
    if not access:
        return "not scanned"
    if any(a.startswith("Seq Scan") for a in access):
        return "SEQ SCAN"
    partial = [a for a in access if a.rsplit(" ", 1)[-1] in PARTIAL_INDEXES]
    if partial:
        return "partial index"
    if any(a.endswith("_pkey") or "PRIMARY KEY" in a for a in access):
        return "pk index + filter"
    return "index"


def explain(qs):
    """EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL, EXPLAIN QUERY PLAN on SQLite; in a rolled-back transaction."""
    main = qs.model._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        sql, params = qs.query.sql_with_params()
        if connection.vendor == "postgresql":
            cursor.execute("SELECT indexname, tablename FROM pg_indexes WHERE schemaname = current_schema()")
            index_table = dict(cursor.fetchall())
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
            raw = cursor.fetchone()[0]
            result = raw[0] if isinstance(raw, list) else raw
            nodes = list(_pg_nodes(result["Plan"], index_table))
            outcome = {
                "plan": [("  " * n["depth"]) + n["type"] + (f" using {n['index']}" if n["index"] else "")
                         + (f" on {n['relation']}" if n["relation"] else "")
                         + (f" (estimated rows={n['estimate']}, actual rows={n['rows']}, loops={n['loops']}, "
                            f"removed by filter={n['removed_by_filter']})" if n["rows"] is not None else "")
                         for n in nodes],
                "rows": result["Plan"].get("Actual Rows"),
                "execution_ms": round(result.get("Execution Time", 0), 3),
                "planning_ms": round(result.get("Planning Time", 0), 3),
                "removed_by_filter": sum(n["removed_by_filter"] or 0 for n in nodes if n["relation"] == main),
                "shared_hit": result["Plan"].get("Shared Hit Blocks"),
                "shared_read": result["Plan"].get("Shared Read Blocks"),
            }
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            details = [row[-1] for row in cursor.fetchall()]
            nodes = []
            for line in details:
                words = line.split()
                if words[0] in {"SCAN", "SEARCH"} and len(words) > 1:
                    relation = words[1]
                    using = line.split(" USING ", 1)[1].split(" (")[0] if " USING " in line else ""
                    index = using.replace("COVERING INDEX ", "").replace("INDEX ", "") if "INDEX" in using else using
                    nodes.append({"type": "Seq Scan" if words[0] == "SCAN" and not using else "Index Scan",
                                  "relation": relation, "index": index})
            outcome = {"plan": details, "rows": None, "execution_ms": None, "planning_ms": None}
        transaction.set_rollback(True)
    hold = "surveys_legalhold"
    outcome["access"] = _access(nodes, main)
    outcome["verdict"] = verdict(outcome["access"], main)
    outcome["hold_check"] = _access(nodes, hold)
    outcome["table"] = main
    return outcome


def scenario_explain(now, *, surveys, drafts, batch_size=None, cleanup_batch_size=None, progress=None):
    """Scenario 5: seed both data sets, ANALYZE, then EXPLAIN every due query, bare and as batched."""
    reset()
    seeded = seed_governance(surveys, now)
    seeded_drafts = seed_drafts(drafts, now)
    analyze()
    sizes = {"surveys_survey": Survey.objects.count(), "surveys_surveyprogress": SurveyProgress.objects.count()}
    rows = []
    for label, form, qs in due_queries(now, batch_size=batch_size or engine.BATCH_SIZE,
                                       cleanup_batch_size=cleanup_batch_size or services.CLEANUP_BATCH_SIZE):
        outcome = explain(qs)
        rows.append({"query": label, "form": form, "table_rows": sizes.get(outcome["table"]), **outcome})
        _log(progress, f"  explain  {label} [{form}]: {outcome['verdict']} {outcome['access']}")
    return {"surveys": surveys, "drafts": drafts, "states": seeded["states"], "expired": seeded_drafts["expired"],
            "queries": rows}
