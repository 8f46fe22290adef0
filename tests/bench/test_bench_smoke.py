"""`make bench` at a tiny size: the bench's own scenario functions against the test database, so the
bench cannot rot unnoticed, and the figures it writes keep their shape.

The bench measures on PostgreSQL; these run on SQLite and on PostgreSQL alike.
"""

import json

import pytest
from django.utils import timezone

from bench import run, scenarios
from bench.report import markdown

pytestmark = pytest.mark.django_db

TINY = {
    "governance_sizes": [50, 100],
    "batch_sizes": [10, 50], "batch_real_surveys": 50, "batch_dry_surveys": 100,
    "draft_sizes": [200],
    "cleanup_batch_sizes": [50, 500], "cleanup_sweep_drafts": 200,
    "explain_surveys": 50, "explain_drafts": 200, "repeat": 1,
}
GOVERNANCE_KEYS = {
    "batch_size", "dry_run", "status", "failures", "warned", "soft_deleted", "hard_deleted", "held", "acted_on",
    "emails_sent", "notices_sent", "emails_delivered", "wall_s", "selection_s", "queries", "selection_queries",
    "chunks", "selection_queries_per_chunk", "queries_by_kind", "per_item", "ms_per_acted", "queries_per_acted",
    "peak_mib", "retained_mib", "peak_rss_mib", "runs_s", "mismatch",
}


def item_queries(figures):
    return sum(item["queries"] for item in figures["per_item"].values())


def test_governance_run_does_what_the_seed_says_and_its_selection_does_not_grow_with_the_surveys():
    small, large = scenarios.scenario_governance([50, 100], timezone.now(), batch_size=500, repeat=1)

    for row in (small, large):
        for figures in (row["real"], row["dry_run"]):
            assert set(figures) == GOVERNANCE_KEYS
            assert figures["status"] == "succeeded" and figures["failures"] == 0
            assert figures["mismatch"] == {}, "the run did not do what the seeded data says is due"
            assert figures["peak_mib"] is not None and figures["wall_s"] > 0
        assert set(row["real"]["per_item"]) == {"email", "soft_delete", "hard_delete"}
        assert row["real"]["emails_delivered"] == row["real"]["emails_sent"] + row["real"]["notices_sent"]
    assert large["real"]["acted_on"] > small["real"]["acted_on"]

    # Set-based selection: twice the surveys costs only the extra per-item work (emails, deletions).
    extra_work = item_queries(large["real"]) - item_queries(small["real"])
    assert large["real"]["queries"] - small["real"]["queries"] <= extra_work
    assert large["real"]["selection_queries"] == small["real"]["selection_queries"]
    # A dry run has no per-item work: the same statements, whatever the number of surveys.
    assert large["dry_run"]["queries"] == small["dry_run"]["queries"]
    assert large["dry_run"]["per_item"] == {}


def test_batch_size_scenario_pages_the_selection_by_the_batch_size():
    rows = scenarios.scenario_batch_size(timezone.now(), batch_sizes=[2, 50], real_surveys=50, dry_surveys=100,
                                         repeat=2)

    assert [(r["mode"], r["batch_size"]) for r in rows] == [("real", 2), ("real", 50), ("dry run", 2),
                                                             ("dry run", 50)]
    real_2, real_50, dry_2, dry_50 = rows
    assert dry_2["chunks"] > dry_50["chunks"] and dry_2["selection_queries"] > dry_50["selection_queries"]
    assert real_2["acted_on"] == real_50["acted_on"] > 0
    assert dry_2["peak_mib"] is not None and real_2["peak_mib"] is None  # real runs are not traced here


def test_cleanup_scenario_deletes_exactly_the_expired_drafts_at_every_batch_size():
    result = scenarios.scenario_cleanup(timezone.now(), sizes=[200], sweep_size=200, batch_sizes=[50, 500],
                                        repeat=2)

    rows = result["scaling"] + result["sweep"]
    assert [r["batch_size"] for r in result["sweep"]] == [50, 500]
    for r in rows:
        assert r["correct"], r
        assert r["expired"] > 0 and r["fresh"] > 0 and r["deleted"] == r["expired"]
        assert r["rows_per_s"] > 0 and r["peak_mib"] is not None
        # Per batch a locking select and a delete; then a count and the last, empty select. (Savepoints
        # appear because the test runs inside a transaction.)
        statements = r["queries"] - r["queries_by_kind"].get("savepoint", 0)
        assert statements == 2 * r["batches"] + 2


def test_explain_scenario_reports_a_plan_and_a_verdict_for_every_due_query():
    result = scenarios.scenario_explain(timezone.now(), surveys=50, drafts=200)

    queries = {q["query"] for q in result["queries"]}
    assert queries == {"due_for_warning(now, 30)", "due_for_warning(now, 7)", "due_for_warning(now, 1)",
                       "due_for_soft_delete(now)", "due_for_hard_delete(now)", "held_back(now)",
                       "SurveyProgress.expired(now)"}
    assert len(result["queries"]) == 2 * len(queries)  # each rule bare and as the job's first batch
    for q in result["queries"]:
        assert q["plan"] and q["verdict"] in {"partial index", "pk index + filter", "index", "SEQ SCAN"}, q


def test_the_whole_bench_writes_json_and_markdown_with_every_section(tmp_path):
    results = run.run(TINY, set(run.SCENARIOS), progress=lambda message: None)

    json.dumps(results, default=str)
    text = markdown(results)
    for heading in ("## 1. Governance run", "## 2. Dry run", "## 3. Progress cleanup", "## 4. Governance BATCH_SIZE",
                    "## 5. EXPLAIN"):
        assert heading in text
    assert "**NO**" not in text and "did not do what the seed says" not in text
