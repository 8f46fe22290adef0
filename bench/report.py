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
           "Survey mix (share of N; the rest are open surveys with no retention clock): "
           + ", ".join(f"{k} {v:g}" for k, v in meta["survey_mix"].items())
           + f". Hard-due surveys carry {meta['hard_due_children']}.", ""]
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
