"""Markdown tables from the results dict (bench/results/latest.md, printed by `make bench`)."""


def _n(value, digits=None):
    if value is None:
        return "–"
    if isinstance(value, float) and digits is not None:
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(headers, rows):
    rule = "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _runs(f):
    return " / ".join(f"{x:.2f}" for x in f.get("runs_s", []))


def _acted(f):
    warned = "/".join(str(v) for v in f["warned"].values())
    return f"{f['acted_on']:,} ({warned} · {f['soft_deleted']} · {f['hard_deleted']})"


def _governance(rows):
    out = ["## 1. Governance run (inline, `dry_run=False`, locmem email)", "",
           "Acted on = surveys warned (30/7/1-day) · soft-deleted · hard-deleted. Emails = warning emails + "
           "soft-deletion notices. Selection = everything outside the per-item calls (one email, one soft "
           "delete, one hard delete). Peak RSS growth is from the timed pass and is a lower bound "
           "(memory freed earlier in the process is reused without growing RSS). Python peak and retained "
           "(tracemalloc) come from a separate rolled-back pass, only at the small size (tracing triples the "
           "run's time); retained ≈ Django's locmem outbox, which keeps every message (about 10 KB each): a "
           "bench artefact, an SMTP connection keeps none.", ""]
    out += _table(
        ["surveys", "acted on", "held", "emails", "wall s", "queries", "selection queries", "queries / acted",
         "ms / acted", "peak RSS growth MiB", "Python peak MiB", "retained MiB"],
        [[_n(r["surveys"]), _acted(f), f["held"], _n(f["emails_sent"] + f["notices_sent"]), _n(f["wall_s"], 2),
          _n(f["queries"]), _n(f["selection_queries"]), _n(f["queries_per_acted"], 2), _n(f["ms_per_acted"], 2),
          _n(f["peak_rss_mib"], 1), _n(f["peak_mib"], 2), _n(f["retained_mib"], 2)]
         for r in rows for f in [r["real"]]])
    out += ["", "Per item (same runs): statements and milliseconds per call, and the selection's share of the time.",
            ""]
    out += _table(
        ["surveys", "email q/call", "email ms/call", "soft delete q/call", "soft ms/call", "hard delete q/call",
         "hard ms/call", "selection s", "selection queries / chunk"],
        [[_n(r["surveys"]), *(x for scope in ("email", "soft_delete", "hard_delete")
                               for x in (_n(f["per_item"].get(scope, {}).get("queries_per_call"), 1),
                                         _n(f["per_item"].get(scope, {}).get("ms_per_call"), 2))),
          _n(f["selection_s"], 2), _n(f["selection_queries_per_chunk"], 2)]
         for r in rows for f in [r["real"]]])
    problems = [f"{r['surveys']} surveys: {f['mismatch']}" for r in rows for k in ("real", "dry_run")
                for f in [r[k]] if f["mismatch"] or f["failures"]]
    out += ["", "Every run did exactly what the seed says is due." if not problems
            else "**Runs that did not do what the seed says is due:** " + "; ".join(problems)]
    return out


def _dry(rows):
    out = ["## 2. Dry run (`dry_run=True`): statements per chunk, not per survey", "",
           "Chunks = the planner's keyset pages over the six selections (warnings 30/7/1, soft, hard, held).", ""]
    out += _table(
        ["surveys", "would act on", "wall s (median)", "runs s", "queries", "chunks", "queries / chunk",
         "Python peak MiB", "peak RSS growth MiB"],
        [[_n(r["surveys"]), _acted(f), _n(f["wall_s"], 3), _runs(f), _n(f["queries"]), _n(f["chunks"]),
          _n(f["selection_queries_per_chunk"], 2), _n(f["peak_mib"], 2), _n(f["peak_rss_mib"], 1)]
         for r in rows for f in [r["dry_run"]]])
    return out


def _cleanup(cleanup, current):
    out = ["## 3. Progress cleanup (`cleanup_survey_progress`)", ""]
    headers = ["drafts", "expired", "batch", "wall s", "runs s", "rows/s", "ms / batch", "queries", "batches",
               "queries / batch", "Python peak MiB", "peak RSS growth MiB", "correct"]

    def row(r):
        return [_n(r["drafts"]), _n(r["expired"]), _n(r["batch_size"]), _n(r["wall_s"], 2), _runs(r),
                _n(r["rows_per_s"]),
                _n(r["ms_per_batch"], 1), _n(r["queries"]), _n(r["batches"]), _n(r["queries_per_batch"], 2),
                _n(r["peak_mib"], 2), _n(r["peak_rss_mib"], 1), "yes" if r["correct"] else "**NO**"]

    out += [f"Scaling, at CLEANUP_BATCH_SIZE={current} (2/3 of the drafts expired, interleaved with fresh ones):", ""]
    out += _table(headers, [row(r) for r in cleanup["scaling"]])
    out += ["", "Batch size sweep (one data set, drafts table restored before each pass; timed passes in "
                "round-robin, median shown):", ""]
    out += _table(headers, [row(r) for r in cleanup["sweep"]])
    return out


def _batch(rows):
    out = ["## 4. Governance BATCH_SIZE", "",
           "Real runs are reseeded for each size and timed once (peak RSS; not traced); dry runs share one "
           "data set (traced), are the selection alone, and are timed three times round-robin (median shown).", ""]
    out += _table(
        ["mode", "surveys", "BATCH_SIZE", "wall s", "runs s", "selection s", "queries", "selection queries",
         "chunks", "Python peak MiB", "peak RSS growth MiB"],
        [[r["mode"], _n(r["surveys"]), _n(r["batch_size"]), _n(r["wall_s"], 3), _runs(r), _n(r["selection_s"], 3),
          _n(r["queries"]), _n(r["selection_queries"]), _n(r["chunks"]), _n(r["peak_mib"], 2),
          _n(r["peak_rss_mib"], 1)] for r in rows])
    return out


def _explain(explain):
    out = ["## 5. EXPLAIN of each due query", "",
           f"{explain['surveys']:,} surveys and {explain['drafts']:,} drafts ({explain['expired']:,} expired), "
           "after ANALYZE. `rule` is the queryset method itself; `batch` is its first page as the job fetches "
           "it (`ORDER BY id LIMIT n`, FOR UPDATE for the cleanup). Verdict: partial index / pk index + filter / "
           "SEQ SCAN on the rule's own table.", ""]
    out += _table(
        ["query", "form", "verdict", "access", "hold check", "rows", "removed by filter", "exec ms"],
        [[f"`{q['query']}`", q["form"], f"**{q['verdict']}**", "; ".join(q["access"]) or "–",
          "; ".join(q["hold_check"]) or "–", _n(q["rows"]), _n(q.get("removed_by_filter")), _n(q["execution_ms"], 2)]
         for q in explain["queries"]])
    out += ["", "<details><summary>Plans</summary>", ""]
    for q in explain["queries"]:
        out += [f"`{q['query']}` ({q['form']}):", "", "```text", *q["plan"], "```", ""]
    out += ["</details>"]
    return out


def _ratio(a, b, digits=2):
    return f"{a / b:.{digits}f}×" if a and b else "–"


def _pct(share):
    return "–" if share is None else f"{share:.0%}"


def _run(rows):
    out = ["## Whole governance run, inline and on Celery, beside its limits", "",
           "The RUN_MIX data (bench/seed.py): per 10,000 surveys 1,000 in each warning window, 1,000 due for soft "
           "and 1,000 for hard deletion (20 responses, 3 drafts, 3 tokens, an export each), 50 held; one recipient "
           "per survey, so one email per warned or soft-deleted survey. From dispatch to the run row finished and "
           "every email at the SMTP sink (its own process). Inline = the cron command's engine in the bench's "
           "process; Celery = one `celery worker -c 2` on every queue. Limits, same session: the set-based SQL of "
           "the same mutations with their audit rows (rolled back), one smtplib connection sending as many "
           "messages to the same sink, a no-op task on the same worker and queue.", ""]
    out += _table(
        ["surveys", "emails", "inline s", "Celery s", "Celery / inline", "inline emails/s", "Celery emails/s",
         "set-based SQL s", "smtplib s", "no-op tasks/s", "Celery emails / no-op", "inline / (SQL + smtplib)",
         "CPUs busy inline / Celery"],
        [[_n(r["surveys"]), _n(r["inline"]["emails"]), _n(r["inline"]["wall_s"], 1),
          _n(r["celery"]["wall_s"], 1) if r["celery"] else "–",
          _ratio(r["celery"]["wall_s"], r["inline"]["wall_s"]) if r["celery"] else "–",
          _n(r["inline"]["emails_per_s"], 0), _n(r["celery"]["emails_per_s"], 0) if r["celery"] else "–",
          _n((r["limits"]["sql"] or {}).get("wall_s"), 2), _n(r["limits"]["smtp"]["wall_s"], 2),
          _n(r["celery"]["noop"]["tasks_per_s"], 0) if r["celery"] else "–",
          _n(r["celery"]["email_vs_noop"], 2) if r["celery"] else "–",
          _ratio(r["inline"]["wall_s"], ((r["limits"]["sql"] or {}).get("wall_s") or 0) + r["limits"]["smtp"]["wall_s"], 1),
          f"{_pct(r['inline'].get('cpu_busy'))} / {_pct((r['celery'] or {}).get('cpu_busy'))}"]
         for r in rows])
    out += ["", "Per item (inline pass, statement meter): statements and milliseconds per call, everything the "
            "call does included (reading the item, the claim, the send, the audit, settling the item); outcome "
            "recording = one item's compare-and-set, median of the first and of the last 200 of the run. Peak RSS: "
            "the bench process's high-water mark (VmHWM) after the inline pass, and the Celery worker's main and "
            "largest pool process.", ""]

    def item(r, scope):
        f = r["inline"]["per_item"].get(scope)
        return f"{f['statements']:g} / {f['ms']:.2f}" if f else "–"

    out += _table(
        ["surveys", "email stmts / ms", "soft deletion stmts / ms", "hard deletion stmts / ms",
         "outcome ms first / last", "command peak RSS MiB", "worker peak RSS MiB main / pool"],
        [[_n(r["surveys"]), item(r, "email"), item(r, "soft_delete"), item(r, "hard_delete"),
          f"{_n(r['inline']['outcome_ms_first'])} / {_n(r['inline']['outcome_ms_last'])}",
          _n(r["inline"]["peak_rss_mib"]),
          (f"{_n(r['celery']['worker_peak_rss_mib']['main'])} / {_n(r['celery']['worker_peak_rss_mib']['pool_max'])}"
           if r["celery"] else "–")]
         for r in rows])
    wrong = [(r["surveys"], t, r[t]["mismatch"]) for r in rows for t in ("inline", "celery")
             if r[t] and (r[t]["mismatch"] or r[t]["status"] != "succeeded")]
    out += ["", "Every run did exactly what the seed says is due, and the sink received every email." if not wrong
            else f"MISMATCH (size, transport, (got, want)): {wrong}"]
    return out


def _settings(rows):
    out = ["## Worker settings: a no-op task on the email queue", "",
           "One `celery worker -c 2`, the no-op task sent to the email queue as the email task is (ignore_result), "
           "the same Redis; tasks per second, each measured twice. What settings.py's choices for the email queue "
           "rest on.", ""]
    out += _table(["prefetch multiplier", "task events", "tasks", "tasks/s (each pass)", "median tasks/s"],
                  [[r["prefetch_multiplier"], "on" if r["task_events"] else "off", _n(r["tasks"]),
                    " / ".join(f"{x:.0f}" for x in r["tasks_per_s"]), _n(float(r["median"]), 0)] for r in rows])
    return out


def _drafts(rows):
    out = ["## Progress cleanup beside one DELETE", "",
           "The cleanup command's job (keyset batches of CLEANUP_BATCH_SIZE drafts, each one DELETE over the next "
           "id range, in its own transaction) against one `DELETE ... WHERE` of the same rule on a copy of the same "
           "table. Each batch's statement is timed alone (that is how long it holds its row locks); the last, which "
           "finds nothing, is counted.", ""]
    out += _table(
        ["drafts", "expired", "cleanup s", "one DELETE s", "cleanup / DELETE", "statements", "batches",
         "first batch ms", "slowest batch ms", "slowest / first"],
        [[_n(r["drafts"]), _n(r["expired"]), _n(r["cleanup_s"], 2), _n(r["one_delete_s"], 2), _n(r["ratio"], 2),
          _n(r["statements"]), _n(r["batches"]), _n(r["first_batch_ms"], 1), _n(r["slowest_batch_ms"], 1),
          _n(r["slowest_vs_first"], 2)] for r in rows])
    wrong = [r["drafts"] for r in rows if not (r["deleted"] == r["one_delete_deleted"] == r["expired"])]
    out += ["", "Both deleted exactly the expired drafts." if not wrong else f"MISMATCH at {wrong} drafts"]
    return out


def main(argv=None):
    """Re-render the tables of a results file: python -m bench.report bench/results/latest.json"""
    import json
    import sys

    paths = (argv if argv is not None else sys.argv[1:]) or ["bench/results/latest.json"]
    with open(paths[0]) as results:
        print(markdown(json.load(results)), end="")


def markdown(results):
    meta = results["meta"]
    out = ["# `make bench` figures", "",
           f"Measured {meta['measured_at']} at commit {meta['git_commit']}"
           + (f" (+{len(meta['uncommitted_app_changes'])} uncommitted files under checktick_app/)"
              if meta["uncommitted_app_changes"] else "")
           + f"; {meta['database_server']} (shared_buffers {meta['shared_buffers']}), Python {meta['python']}, "
           f"Django {meta['django']}, {meta['cpus']} CPUs shared with other work. BATCH_SIZE={meta['BATCH_SIZE']}, "
           f"CLEANUP_BATCH_SIZE={meta['CLEANUP_BATCH_SIZE']}. Produced by `make bench` "
           f"(`.venv/bin/python -m bench.run`) in {meta.get('total_seconds', '?')} s; load average "
           f"{meta.get('load_average_at_start')} at the start, {meta.get('load_average_at_end')} at the end "
           "(absolute times move with it; compare rows of one table).", "",
           f"Celery {meta.get('celery')}, Redis {meta.get('redis_server')}.", "",
           "Survey mix of the locmem scenarios (share of N; the rest are open surveys with no retention clock): "
           + ", ".join(f"{k} {v:g}" for k, v in meta["survey_mix"].items())
           + f". Hard-due surveys carry {meta['hard_due_children']}.", ""]
    if "run" in results:
        out += _run(results["run"]) + [""]
    if "drafts" in results:
        out += _drafts(results["drafts"]) + [""]
    if "settings" in results:
        out += _settings(results["settings"]) + [""]
    if "governance" in results:
        out += _governance(results["governance"]) + [""] + _dry(results["governance"]) + [""]
    if "cleanup" in results:
        out += _cleanup(results["cleanup"], meta["CLEANUP_BATCH_SIZE"]) + [""]
    if "batch_size" in results:
        out += _batch(results["batch_size"]) + [""]
    if "explain" in results:
        out += _explain(results["explain"]) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
