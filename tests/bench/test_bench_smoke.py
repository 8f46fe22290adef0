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

TINY = run.TINY
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
        # Per batch one DELETE ... RETURNING; then a count and the last one, which finds nothing. (Savepoints
        # appear because the test runs inside a transaction.)
        statements = r["queries"] - r["queries_by_kind"].get("savepoint", 0)
        assert statements == r["batches"] + 2


def test_explain_scenario_reports_a_plan_and_a_verdict_for_every_due_query():
    result = scenarios.scenario_explain(timezone.now(), surveys=50, drafts=200)

    queries = {q["query"] for q in result["queries"]}
    assert queries == {"due_for_warning(now, 30)", "due_for_warning(now, 7)", "due_for_warning(now, 1)",
                       "due_for_soft_delete(now)", "due_for_hard_delete(now)", "held_back(now)",
                       "SurveyProgress.expired(now)"}
    assert len(result["queries"]) == 2 * len(queries)  # each rule bare and as the job's first batch
    for q in result["queries"]:
        assert q["plan"] and q["verdict"] in {"partial index", "pk index + filter", "index", "SEQ SCAN"}, q


def test_the_locmem_and_explain_scenarios_write_json_and_markdown_with_every_section(tmp_path):
    results = run.run(TINY, {"governance", "batch", "cleanup", "explain"}, progress=lambda message: None)

    json.dumps(results, default=str)
    text = markdown(results)
    for heading in ("## 1. Governance run", "## 2. Dry run", "## 3. Progress cleanup", "## 4. Governance BATCH_SIZE",
                    "## 5. EXPLAIN"):
        assert heading in text
    assert "**NO**" not in text and "did not do what the seed says" not in text


# --- `make bench` itself, end to end: the whole run inline and on a real Celery worker, the drafts ---------

SMOKE_DATABASE = "checktick_bench_smoke"


@pytest.fixture
def scratch_bench_database():
    """A database of the bench's own on the test server (the bench empties what it uses), dropped after."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the bench measures PostgreSQL")
    settings = connection.settings_dict
    url = (f"postgres://{settings.get('USER') or 'postgres'}@{settings.get('HOST') or '127.0.0.1'}:"
           f"{settings.get('PORT') or 5432}/{SMOKE_DATABASE}")
    yield url
    import psycopg

    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {SMOKE_DATABASE} WITH (FORCE)")


def test_make_bench_runs_end_to_end_and_every_run_does_what_the_seed_says(scratch_bench_database, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(run.__file__).resolve().parent.parent
    env = dict(os.environ, DATABASE_URL=scratch_bench_database, DJANGO_SETTINGS_MODULE="checktick_app.settings",
               BENCH_REDIS_URL=os.environ.get("CHECKTICK_TEST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    done = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--only", "run,drafts", "--out", str(tmp_path)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    (whole,) = results["run"]
    for transport in ("inline", "celery"):
        figures = whole[transport]
        assert figures["status"] == "succeeded" and figures["mismatch"] == {}, figures
        assert figures["emails"] > 0 and figures["soft_deleted"] > 0 and figures["hard_deleted"] > 0
    assert whole["celery"]["noop"]["tasks_per_s"] > 0 and whole["celery"]["worker_peak_rss_mib"]["pool_max"]
    assert set(whole["inline"]["per_item"]) == {"email", "soft_delete", "hard_delete"}
    assert whole["inline"]["outcome_ms_first"] and whole["inline"]["outcome_ms_last"]
    limits = whole["limits"]
    assert limits["smtp"]["messages"] == whole["inline"]["emails"]
    assert limits["sql"]["rows"]["soft_deleted"] == whole["inline"]["soft_deleted"]
    assert limits["sql"]["rows"]["hard_deleted"] == whole["inline"]["hard_deleted"]
    (drafts,) = results["drafts"]
    assert drafts["deleted"] == drafts["one_delete_deleted"] == drafts["expired"] > 0
    assert drafts["batches"] >= 1 and drafts["slowest_vs_first"] is not None

    text = (tmp_path / "latest.md").read_text()
    assert "## Whole governance run, inline and on Celery, beside its limits" in text
    assert "## Progress cleanup beside one DELETE" in text
    assert "MISMATCH" not in text
