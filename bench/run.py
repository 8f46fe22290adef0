"""`make bench`: the governance jobs' speed and memory, written as figures beside their limits.

    .venv/bin/python -m bench.run [--quick] [--only run,drafts,governance,batch,cleanup,explain]

Runs against PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/checktick_bench;
the database is created if missing, migrated, and emptied between scenarios) and Redis
(BENCH_REDIS_URL, default redis://127.0.0.1:6379/12: a database of its own, flushed before each Celery
pass; never the service's REDIS_URL). Writes bench/results/latest.json and bench/results/latest.md and
prints the markdown.

The default scenarios are "run" (the whole governance run inline and on Celery, emails to an SMTP
sink, beside the set-based SQL, a no-op task and one smtplib connection) and "drafts" (the cleanup
beside one DELETE); bench/whole_run.py says how each is measured. The older scenarios (governance
and batch with Django's locmem email, cleanup batch sizes, explain) run when named in --only.
"""

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/checktick_bench"
BENCH_RECORD_PREFIX = "checktick-bench-deletion-record-"

FULL = {
    "run_sizes": [10_000, 100_000], "run_repeat": 1, "drafts_sizes": [100_000, 2_000_000], "drafts_repeat": 1,
    "governance_sizes": [1_000, 10_000, 50_000],
    "batch_sizes": [100, 500, 2_000], "batch_real_surveys": 5_000, "batch_dry_surveys": 50_000,
    "draft_sizes": [10_000, 100_000, 300_000],
    "cleanup_batch_sizes": [500, 2_000, 5_000, 10_000], "cleanup_sweep_drafts": 150_000,
    "explain_surveys": 50_000, "explain_drafts": 300_000, "repeat": 3,
}
QUICK = {
    "run_sizes": [1_000], "run_repeat": 1, "drafts_sizes": [20_000], "drafts_repeat": 1, "settings_tasks": 500,
    "governance_sizes": [200, 1_000],
    "batch_sizes": [100, 500, 2_000], "batch_real_surveys": 1_000, "batch_dry_surveys": 2_000,
    "draft_sizes": [2_000, 10_000],
    "cleanup_batch_sizes": [500, 2_000, 5_000, 10_000], "cleanup_sweep_drafts": 10_000,
    "explain_surveys": 2_000, "explain_drafts": 10_000, "repeat": 3,
}
# The smoke test's sizes (tests/bench): every scenario, end to end, in seconds.
TINY = {
    "run_sizes": [400], "run_repeat": 1, "drafts_sizes": [2_000], "drafts_repeat": 1, "settings_tasks": 100,
    "governance_sizes": [50, 100],
    "batch_sizes": [10, 50], "batch_real_surveys": 50, "batch_dry_surveys": 100,
    "draft_sizes": [200],
    "cleanup_batch_sizes": [50, 500], "cleanup_sweep_drafts": 200,
    "explain_surveys": 50, "explain_drafts": 200, "repeat": 1,
}
SCENARIOS = ("run", "drafts", "settings", "governance", "batch", "cleanup", "explain")
DEFAULT_SCENARIOS = ("run", "drafts", "settings")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"


def configure_environment():
    """Settings come from the environment (checktick_app/settings.py): fix the bench's before setup."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")
    os.environ.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    # The Celery passes flush their Redis database: the bench's own, never the service's (REDIS_URL).
    os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(name, None)
    os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
    os.environ["SITE_URL"] = "https://bench.example.org"
    os.environ["DEFAULT_FROM_EMAIL"] = "bench@example.org"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # Outside DEBUG the settings refuse to start without a real key; the bench signs nothing.
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-Zr7Qp2Lm9Xv4Tn8Bw1Kc6Hd3")
    # The bench empties its database between scenarios, so its hard deletions are recorded in a folder of
    # its own that seed.reset() empties with it: never the operator's record (deletion_record.py).
    os.environ["CHECKTICK_DELETION_RECORD_DIR"] = tempfile.mkdtemp(prefix=BENCH_RECORD_PREFIX)


def create_database(url):
    """CREATE DATABASE if it is missing, connecting to the server's `postgres` database."""
    import psycopg
    from psycopg import sql
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if not parsed.scheme.startswith("postgres"):
        raise SystemExit(f"DATABASE_URL={url!r}: the bench measures PostgreSQL; give a postgres:// URL.")
    name = parsed.path.lstrip("/")
    if "bench" not in name:
        raise SystemExit(f"DATABASE_URL names the database {name!r}: the bench empties every table it uses, so it "
                         "only runs on a database whose name contains 'bench' (default checktick_bench).")
    params = {"host": parsed.hostname or "127.0.0.1", "port": parsed.port or 5432, "user": parsed.username,
              "password": parsed.password, "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**{k: v for k, v in params.items() if v is not None}) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    return False


def setup(progress):
    configure_environment()
    created = create_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.core.management import call_command

    progress(f"database {'created' if created else 'exists'}; migrating")
    call_command("migrate", verbosity=0, interactive=False)


def meta(config):
    from django.conf import settings
    from django.db import connection

    from checktick_app.governance import engine, services

    from .seed import EXPIRED_FRACTION, HARD_DUE_CHILDREN, STALE_ONLY_FRACTION, SURVEY_MIX

    server, shared_buffers = connection.display_name, None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            server = "PostgreSQL " + cursor.fetchone()[0]
            cursor.execute("SHOW shared_buffers")
            shared_buffers = cursor.fetchone()[0]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    try:
        from celery_app import app

        with app.connection_for_write() as conn:
            redis_server = conn.default_channel.client.info("server").get("redis_version")
    except Exception as exc:  # noqa: BLE001 - a figure of the machine, not a reason to stop
        redis_server = f"unknown ({type(exc).__name__})"
    return {
        "celery": __import__("celery").__version__, "redis_server": redis_server,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_app_changes": git("status", "--porcelain", "--", "checktick_app").splitlines(),
        "python": platform.python_version(), "django": __import__("django").get_version(),
        "database_server": server, "shared_buffers": shared_buffers, "cpus": os.cpu_count(),
        "database": connection.settings_dict["NAME"],
        "BATCH_SIZE": engine.BATCH_SIZE, "CLEANUP_BATCH_SIZE": services.CLEANUP_BATCH_SIZE,
        "warning_days": list(settings.CHECKTICK_WARNING_DAYS), "email_backend": settings.EMAIL_BACKEND,
        "survey_mix": SURVEY_MIX, "hard_due_children": HARD_DUE_CHILDREN,
        "draft_expired_fraction": round(EXPIRED_FRACTION, 3), "draft_stale_only_fraction": STALE_ONLY_FRACTION,
        "config": config, "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run(config, only, progress):
    from django.utils import timezone as dj_timezone

    from . import scenarios

    now = dj_timezone.now().replace(microsecond=0)
    results = {"meta": meta(config), "now": now.isoformat()}
    timings = {}
    if "run" in only:
        from .whole_run import scenario_run

        started = time.perf_counter()
        progress("scenario run: the whole governance run, inline and on Celery, beside its limits")
        results["run"] = scenario_run(config["run_sizes"], repeat=config["run_repeat"], progress=progress)
        timings["run"] = time.perf_counter() - started
    if "drafts" in only:
        from .whole_run import scenario_drafts

        started = time.perf_counter()
        progress("scenario drafts: the progress cleanup beside one DELETE")
        results["drafts"] = scenario_drafts(config["drafts_sizes"], repeat=config["drafts_repeat"], progress=progress)
        timings["drafts"] = time.perf_counter() - started
    if "settings" in only:
        from .whole_run import scenario_worker_settings

        started = time.perf_counter()
        progress("scenario settings: a no-op task's throughput under each prefetch multiplier, events on and off")
        results["settings"] = scenario_worker_settings(tasks=config.get("settings_tasks", 2_000), progress=progress)
        timings["settings"] = time.perf_counter() - started
    if "governance" in only:
        started = time.perf_counter()
        progress("scenarios 1-2: governance run and dry run")
        results["governance"] = scenarios.scenario_governance(config["governance_sizes"], now, repeat=config["repeat"],
                                                            progress=progress)
        timings["governance"] = time.perf_counter() - started
    if "batch" in only:
        started = time.perf_counter()
        progress("scenario 4: governance BATCH_SIZE")
        results["batch_size"] = scenarios.scenario_batch_size(
            now, batch_sizes=config["batch_sizes"], real_surveys=config["batch_real_surveys"],
            dry_surveys=config["batch_dry_surveys"], repeat=config["repeat"], progress=progress)
        timings["batch"] = time.perf_counter() - started
    if "cleanup" in only:
        started = time.perf_counter()
        progress("scenario 3: progress cleanup")
        results["cleanup"] = scenarios.scenario_cleanup(
            now, sizes=config["draft_sizes"], sweep_size=config["cleanup_sweep_drafts"],
            batch_sizes=config["cleanup_batch_sizes"], repeat=config["repeat"], progress=progress)
        timings["cleanup"] = time.perf_counter() - started
    if "explain" in only:
        started = time.perf_counter()
        progress("scenario 5: EXPLAIN of the due queries")
        results["explain"] = scenarios.scenario_explain(
            now, surveys=config["explain_surveys"], drafts=config["explain_drafts"], progress=progress)
        timings["explain"] = time.perf_counter() - started
    from .seed import reset

    reset()
    results["meta"]["scenario_seconds"] = {k: round(v, 1) for k, v in timings.items()}
    results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for trying the bench out (under 2 minutes)")
    parser.add_argument("--tiny", action="store_true", help="the smoke test's sizes (tests/bench), seconds")
    parser.add_argument("--only", default=",".join(DEFAULT_SCENARIOS),
                        help=f"comma-separated subset of {SCENARIOS} (default: {','.join(DEFAULT_SCENARIOS)})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for latest.json and latest.md")
    args = parser.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    if only - set(SCENARIOS):
        parser.error(f"--only: unknown {sorted(only - set(SCENARIOS))}; choose from {SCENARIOS}")

    def progress(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    setup(progress)
    from .report import markdown

    results = run(TINY if args.tiny else QUICK if args.quick else FULL, only, progress)
    results["meta"]["total_seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (args.out / "latest.md").write_text(text)
    print(text)
    progress(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.md'} in {results['meta']['total_seconds']} s")


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
        __package__ = "bench"  # noqa: A001 - `python bench/run.py` works like `python -m bench.run`
        importlib.import_module("bench")  # the package the relative imports below resolve against
    main()
