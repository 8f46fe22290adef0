"""Scenarios "run" and "drafts" of `make bench`: the whole jobs as an operator runs them, each beside
the limit it is measured against, in the same session (these machines are shared and noisy).

"run": the governance run on the RUN_MIX data (seed.py), from dispatch to the run row finished and
every email at an SMTP sink in its own process (sink.py),
  * inline (the cron command's engine, in this process, under the statement meter: per-item
    statements and milliseconds, and the time to record one outcome at the first and last items), and
  * on Celery: one `celery worker -c 2` (prefork, both processes reading every queue), started fresh
    for the pass so its peak RSS is the pass's;
and the limits on the same data and the same sink, Redis and worker:
  * the set-based SQL for the same mutations with their audit rows (ledger rows for every warning and
    notice, the soft deletions, the hard deletions with their children), in one transaction rolled back;
  * a no-op task's throughput on the email queue of the same worker (ignore_result, as the email task);
  * one smtplib connection sending as many messages, of the same size, to the same sink.

"drafts": the progress cleanup at each size, then one `DELETE ... WHERE` of the same rule on a copy
of the same table; the cleanup's batches are timed one by one (first, slowest).
"""

import json
import os
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.test.utils import override_settings
from django.utils import timezone

from checktick_app.governance import engine, services
from checktick_app.governance.models import GovernanceRun
from checktick_app.surveys.models import SurveyProgress

from . import sql_limit
from .measure import SELECTION, Meter, measure
from .scenarios import ITEM_SCOPES, _item_scopes
from .seed import RUN_MIX, analyze, drop_snapshot, reset, restore, seed_drafts, seed_governance, snapshot

ROOT = Path(__file__).resolve().parent.parent
OUTCOME_SAMPLE = 200  # outcomes timed at the start and at the end of the biggest run


def _log(progress, message):
    if progress:
        progress(message)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"bench: timed out after {timeout} s waiting for {what}")


class Sink:
    """The SMTP sink subprocess; `received()` is how many messages it has accepted so far."""

    def __enter__(self):
        self.port = _free_port()
        self.count_file = tempfile.mktemp(prefix="checktick-bench-sink-")
        self.process = subprocess.Popen([sys.executable, "-m", "bench.sink", str(self.port), self.count_file],
                                        cwd=ROOT)
        _wait(lambda: os.path.exists(self.count_file), 30, "the SMTP sink to start")
        return self

    def received(self):
        try:
            return int(Path(self.count_file).read_text() or 0)
        except (OSError, ValueError):
            return 0

    def settings(self):
        return {"EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend", "EMAIL_HOST": "127.0.0.1",
                "EMAIL_PORT": self.port, "EMAIL_USE_TLS": False, "EMAIL_USE_SSL": False, "EMAIL_HOST_USER": "",
                "EMAIL_HOST_PASSWORD": ""}

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(10)
        for path in (self.count_file, self.count_file + ".tmp"):
            if os.path.exists(path):
                os.unlink(path)


def _cpu_ticks():
    """(busy, total) jiffies of the whole machine (/proc/stat): how much of both CPUs a pass kept busy."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _busy_share(before, after):
    if not before or not after or after[1] == before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def _vm_hwm_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Worker:
    """`celery -A bench.celery_bench worker -c 2` on every queue: the project's app and settings, plus the
    bench's no-op task. Its environment is this process's, with the sink's mail settings."""

    def __init__(self, sink, concurrency=2, extra=()):
        self.sink, self.concurrency, self.extra = sink, concurrency, list(extra)

    def __enter__(self):
        from .celery_bench import app

        env = dict(os.environ, EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend", EMAIL_HOST="127.0.0.1",
                   EMAIL_PORT=str(self.sink.port), EMAIL_USE_TLS="false", EMAIL_HOST_USER="", EMAIL_HOST_PASSWORD="")
        env.setdefault("DATABASE_URL", _database_url())
        self.name = f"bench-{os.getpid()}-{time.monotonic_ns()}@localhost"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench.celery_bench", "worker", "-c", str(self.concurrency),
             "-Q", "governance,deletion,email", "-n", self.name, "--without-gossip", "--without-mingle",
             "-l", "WARNING", *self.extra], cwd=ROOT, env=env)
        _wait(lambda: self.process.poll() is not None or app.control.ping([self.name], timeout=0.5),
              60, "the Celery worker to answer a ping")
        if self.process.poll() is not None:
            raise RuntimeError(f"bench: the Celery worker exited with {self.process.returncode}")
        return self

    def peak_rss_mib(self):
        """Peak RSS (VmHWM) of the worker's main process and of its largest pool process."""
        pool = [_vm_hwm_mib(pid) for pid in _children(self.process.pid)]
        return {"main": _vm_hwm_mib(self.process.pid), "pool_max": max((p for p in pool if p), default=None)}

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _database_url():
    db = settings.DATABASES["default"]
    return f"postgres://{db.get('USER') or 'postgres'}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def _flush_broker():
    from .celery_bench import app

    with app.connection_for_write() as conn:
        conn.default_channel.client.flushdb()


def _seed(n, progress):
    reset()
    now = timezone.now().replace(microsecond=0)
    started = time.perf_counter()
    seeded = seed_governance(n, now, mix=RUN_MIX, in_organisation=0, no_email=0)
    analyze()
    _log(progress, f"  seeded {n:,} surveys in {time.perf_counter() - started:.1f} s")
    expected = seeded["expected"]
    seeded["emails"] = expected["warning_emails"] + expected["notice_emails"]
    return now, seeded


def _check(report_or_counts, seeded, delivered):
    """What the run did against what the seed says is due (and what the sink received)."""
    expected = seeded["expected"]
    got = {"emails": delivered, "soft_deleted": report_or_counts["soft_deleted"],
           "hard_deleted": report_or_counts["hard_deleted"]}
    want = {"emails": seeded["emails"], "soft_deleted": expected["soft_deleted"],
            "hard_deleted": expected["hard_deleted"]}
    return {k: (got[k], want[k]) for k in want if got[k] != want[k]}


@contextmanager
def _timed_outcomes(samples):
    """Time every outcome recorded (engine._settle): the first and the last OUTCOME_SAMPLE of the run."""
    real = engine._settle

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            samples.append(time.perf_counter() - started)

    engine._settle = timed
    try:
        yield
    finally:
        engine._settle = real


def _median_ms(values):
    return round(statistics.median(values) * 1000, 3) if values else None


def inline_pass(n, sink, progress=None):
    now, seeded = _seed(n, progress)
    before = sink.received()
    meter, outcomes = Meter(), []
    cpu = _cpu_ticks()
    with override_settings(**sink.settings()), _item_scopes(meter), _timed_outcomes(outcomes):
        m = measure(lambda: services.run_data_governance(now=now), meter=meter)
    cpu = _busy_share(cpu, _cpu_ticks())
    delivered = _wait(lambda: sink.received() - before >= seeded["emails"] and sink.received() - before, 60,
                      "the sink to receive every email") if seeded["emails"] else 0
    report = m.result
    per_item = {
        scope: {"calls": meter.calls[scope], "statements": round(meter.statements[scope] / meter.calls[scope], 2),
                "ms": round(meter.seconds[scope] * 1000 / meter.calls[scope], 3)}
        for scope in sorted(set(ITEM_SCOPES.values())) if meter.calls[scope]
    }
    k = min(OUTCOME_SAMPLE, len(outcomes) // 2)
    return {
        "surveys": n, "transport": "inline", "wall_s": round(m.wall_s, 2), "status": report.status,
        "emails": delivered, "emails_per_s": round(delivered / m.wall_s, 1),
        "soft_deleted": len(report.soft_deleted), "hard_deleted": len(report.hard_deleted),
        "statements": meter.total, "selection_statements": meter.statements[SELECTION], "per_item": per_item,
        "outcome_ms_first": _median_ms(outcomes[:k]), "outcome_ms_last": _median_ms(outcomes[-k:]) if k else None,
        "cpu_busy": cpu, "outcomes": len(outcomes), "peak_rss_growth_mib": round(m.peak_rss_mib, 1) if m.peak_rss_mib else None,
        "peak_rss_mib": _vm_hwm_mib(os.getpid()),
        "mismatch": _check({"soft_deleted": len(report.soft_deleted), "hard_deleted": len(report.hard_deleted)},
                           seeded, delivered),
        "seeded": {k: seeded[k] for k in ("surveys", "states", "responses", "emails")},
    }


def celery_pass(n, sink, progress=None, timeout=3600):
    from checktick_app.governance import dispatch

    now, seeded = _seed(n, progress)
    _flush_broker()
    with Worker(sink) as worker:
        before = sink.received()
        cpu = _cpu_ticks()
        started = time.perf_counter()
        run = dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND)

        def finished():
            status = GovernanceRun.objects.filter(pk=run.pk).values_list("status", flat=True).first()
            return status != GovernanceRun.Status.RUNNING and sink.received() - before >= seeded["emails"]

        _wait(finished, timeout, f"Celery run #{run.pk} to finish")
        wall = time.perf_counter() - started
        cpu = _busy_share(cpu, _cpu_ticks())
        run.refresh_from_db()
        delivered = sink.received() - before
        rss = worker.peak_rss_mib()
        counts = run.counts or {}
        noop = noop_throughput(min(max(seeded["emails"], 200), 20_000))
    soft, hard = counts.get("soft_deleted", 0), counts.get("hard_deleted", 0)
    return {
        "surveys": n, "transport": "celery -c 2", "wall_s": round(wall, 2), "status": run.status,
        "emails": delivered, "emails_per_s": round(delivered / wall, 1), "soft_deleted": soft, "hard_deleted": hard,
        "worker_peak_rss_mib": rss, "noop": noop, "cpu_busy": cpu,
        "email_vs_noop": round((delivered / wall) / noop["tasks_per_s"], 3) if noop["tasks_per_s"] else None,
        "mismatch": _check({"soft_deleted": soft, "hard_deleted": hard}, seeded, delivered),
        "now": now.isoformat(),
    }


def noop_throughput(count):
    """`count` no-op tasks through the email queue of the running worker: tasks per second, from the first
    send to the last one done (the last is sent with a result, to wait for)."""
    from .celery_bench import noop

    started = time.perf_counter()
    with noop.app.producer_or_acquire() as producer:
        for i in range(count - 1):
            noop.apply_async(kwargs={"item_id": i}, queue="email", producer=producer)
    noop.apply_async(kwargs={"item_id": count}, queue="email", ignore_result=False).get(timeout=600)
    wall = time.perf_counter() - started
    return {"tasks": count, "wall_s": round(wall, 2), "tasks_per_s": round(count / wall, 1)}


def smtp_limit(sink, count):
    """One smtplib connection sending `count` messages the size of a warning email to the sink."""
    from .sql_limit import sample_message

    message = sample_message()
    before = sink.received()
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as smtp:
        for i in range(count):
            smtp.sendmail("bench@example.org", [f"owner{i}@bench.example.org"], message)
    _wait(lambda: sink.received() - before >= count, 60, "the sink to receive the smtplib messages")
    wall = time.perf_counter() - started
    return {"messages": count, "wall_s": round(wall, 2), "messages_per_s": round(count / wall, 1)}


def scenario_run(sizes, *, repeat=1, celery=True, progress=None):
    """The whole run at each size, inline and on Celery, with the three limits beside it."""
    rows = []
    with Sink() as sink:
        for n in sizes:
            _log(progress, f"run: {n:,} surveys")
            inline = [inline_pass(n, sink, progress) for _ in range(repeat)]
            for r in inline:
                _log(progress, f"  inline {r['wall_s']} s, {r['emails']:,} emails")
            on_celery = []
            if celery:
                for _ in range(repeat):
                    on_celery.append(celery_pass(n, sink, progress))
                    _log(progress, f"  celery {on_celery[-1]['wall_s']} s, {on_celery[-1]['emails']:,} emails, "
                                   f"no-op {on_celery[-1]['noop']['tasks_per_s']}/s")
            now, seeded = _seed(n, progress)
            limit_sql = sql_limit.set_based_run(now)
            limit_smtp = smtp_limit(sink, seeded["emails"])
            rows.append({
                "surveys": n, "inline": _median(inline), "celery": _median(on_celery) if on_celery else None,
                "limits": {"sql": limit_sql, "smtp": limit_smtp},
            })
    reset()
    return rows


def _median(passes):
    ordered = sorted(passes, key=lambda p: p["wall_s"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    median["runs_s"] = [p["wall_s"] for p in ordered]
    return median


def scenario_worker_settings(*, tasks=2_000, repeat=2, progress=None):
    """The no-op task's throughput on a `-c 2` worker under each prefetch multiplier, task events on and off:
    what the email queue's settings are chosen by (settings.py)."""
    from .celery_bench import app

    rows = []
    with Sink() as sink:
        for prefetch in (1, 4, 16):
            for events in (True, False):
                _flush_broker()
                with Worker(sink, extra=["--prefetch-multiplier", str(prefetch)]) as worker:
                    if not events:
                        app.control.disable_events(destination=[worker.name])
                        time.sleep(0.5)
                    rates = [noop_throughput(tasks)["tasks_per_s"] for _ in range(repeat)]
                rows.append({"prefetch_multiplier": prefetch, "task_events": events, "tasks": tasks,
                             "tasks_per_s": sorted(rates), "median": statistics.median(rates)})
                _log(progress, f"  prefetch {prefetch}, events {events}: {rates}")
    return rows


# --- drafts --------------------------------------------------------------------------------------

class _BatchClock:
    """An execute wrapper timing each cleanup batch: one DELETE ... RETURNING statement (services._delete_batch)."""

    def __init__(self):
        self.batches = []

    def __call__(self, execute, sql, params, many, context):
        if "DELETE" not in sql.lstrip()[:80].upper():
            return execute(sql, params, many, context)
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.batches.append(time.perf_counter() - started)


def scenario_drafts(sizes, *, repeat=1, progress=None):
    rows = []
    for m in sizes:
        reset()
        now = timezone.now().replace(microsecond=0)
        started = time.perf_counter()
        seeded = seed_drafts(m, now)
        analyze()
        snapshot(SurveyProgress)
        _log(progress, f"drafts: {m:,} seeded in {time.perf_counter() - started:.1f} s")
        cleanups, deletes = [], []
        for attempt in range(repeat):
            if attempt:
                restore(SurveyProgress)
                analyze()
            clock = _BatchClock()
            with connection.execute_wrapper(clock):
                timed = measure(lambda: services.run_progress_cleanup(now=now))
            cleanups.append((timed.wall_s, timed.result.deleted, clock.batches, timed.meter.total))
            restore(SurveyProgress)
            analyze()
            started = time.perf_counter()
            with transaction.atomic():
                deleted = SurveyProgress.objects.expired(now)._raw_delete(connection.alias)
            deletes.append((time.perf_counter() - started, deleted))
            _log(progress, f"  cleanup {timed.wall_s:.2f} s, one DELETE {deletes[-1][0]:.2f} s")
        wall, deleted, batches, statements = sorted(cleanups)[(len(cleanups) - 1) // 2]
        one_delete = sorted(deletes)[(len(deletes) - 1) // 2]
        rows.append({
            "drafts": m, "expired": seeded["expired"], "deleted": deleted, "one_delete_deleted": one_delete[1],
            "cleanup_s": round(wall, 3), "one_delete_s": round(one_delete[0], 3),
            "ratio": round(wall / one_delete[0], 2) if one_delete[0] else None, "statements": statements,
            "batches": len(batches), "first_batch_ms": round(batches[0] * 1000, 1) if batches else None,
            "slowest_batch_ms": round(max(batches) * 1000, 1) if batches else None,
            "slowest_vs_first": round(max(batches) / batches[0], 2) if batches else None,
            "cleanup_runs_s": sorted(round(c[0], 3) for c in cleanups),
            "one_delete_runs_s": sorted(round(d[0], 3) for d in deletes),
        })
        drop_snapshot(SurveyProgress)
    reset()
    return rows


def dump(rows):
    return json.dumps(rows, indent=2, default=str)
