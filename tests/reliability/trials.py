"""The trials: start real processes, inject one fault, let the system recover, check I1-I4.

Each trial is a plain function `(trial, rng) -> Outcome`, registered in TRIALS; `test_trials.py`
runs each once per repetition under pytest, `run_trials.py` runs them N times and prints the table.

How a fault is made to land "in the middle": the work is slowed by real knobs only (many surveys
and recipients, a slow SMTP server, small batch sizes) and the trial polls the database or the
mailbox, with bounded waits, until a randomly chosen point in the work, then strikes.

Where a trial needs time to pass that it cannot wait for (the email claim lease, the stale-run
period), it moves the one timestamp that measures that time back by the period, through the driver
(`age_claims`, `age_heartbeats`), and says so in its notes.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from tests.reliability import harness
from tests.reliability.invariants import Verdict, World, check_all

QUEUE_GOVERNANCE, QUEUE_DELETION, QUEUE_EMAIL = "governance", "deletion", "email"
ALL_QUEUES = [QUEUE_GOVERNANCE, QUEUE_DELETION, QUEUE_EMAIL]

STALE_MINUTES = 5  # CHECKTICK_RUN_STALE_AFTER_MINUTES in the trials (its minimum)
LEASE_MINUTES = 11  # CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES in the trials (its minimum; aged, never waited for)


@dataclass
class Outcome:
    trial: str
    verdict: Verdict
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    @property
    def held(self):
        return self.verdict.held


TRIALS = {}


def register(name, *, persistent_redis=False, quick=False):
    """`quick`: part of the normal test run (one trial per fault, ~3 minutes in all); `make trials`
    and TRIAL_REPS/TRIAL_ALL run every trial."""
    def deco(fn):
        TRIALS[name] = fn
        fn.trial_name = name
        fn.persistent_redis = persistent_redis
        fn.quick = quick
        return fn
    return deco


def now():
    return datetime.now(timezone.utc)


def last_run_start(t):
    """The start of the last real run (a refused attempt's own history row is no run)."""
    return t.db.scalar("SELECT max(started_at) FROM governance_governancerun WHERE NOT dry_run AND status <> 'refused'")


def judge(t, world, name, extra=(), **metrics):
    reference = last_run_start(t) or now()
    verdict = check_all(t.db, world, t.mailbox, now(), reference, extra)
    metrics.setdefault("emails", t.mailbox.count())
    metrics["window_ms"] = acceptance_to_ledger_ms(t)
    return Outcome(name, verdict, metrics)


def acceptance_to_ledger_ms(t):
    """The at-least-once window, measured: SMTP server's acceptance -> ledger row marked sent."""
    sent_at = {wid: at.timestamp() for wid, at in t.db.query(
        "SELECT id, sent_at FROM governance_deletionwarning WHERE status = 'sent'")}
    last = {}  # the delivery the ledger update followed is the last one of its warning
    for d in t.mailbox.snapshot():
        last[d.warning_id] = d
    return sorted((sent_at[w] - d.accepted_at) * 1000 for w, d in last.items() if w in sent_at)


def count(t, sql, params=None):
    return t.db.scalar(sql, params) or 0


def soft_deleted_count(t, world):
    ids = [s["id"] for s in world.surveys if s["deleted_at"] is None]
    return count(t, "SELECT count(*) FROM surveys_survey WHERE deleted_at IS NOT NULL AND id = ANY(%s)", [ids])


def settle(t, timeout=60):
    """Wait until no run is running (the system has finished what it was doing)."""
    harness.wait_until(lambda: count(t, "SELECT count(*) FROM governance_governancerun WHERE status = 'running'") == 0,
                       timeout, interval=0.2, what="every run to finish")


# --- the command path (cron): the management command is the process that dies ------------------------

COMMAND_ENV = {"CHECKTICK_RUN_STALE_AFTER_MINUTES": STALE_MINUTES, "CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES": LEASE_MINUTES}
# The SMTP retries' waits (engine.RETRY_POLICIES["smtp"], ~8 minutes in all) scaled for a command whose SMTP
# server refuses for longer than they last: the same retries, 100 times faster (trial_manage.py).
SMTP_RETRY_SCALE = 0.01


def start_command(t, *args, name="command"):
    proc = harness.Proc(name, [*harness.MANAGE, "process_data_governance", *args],
                        t.env(**COMMAND_ENV), t._log(name))
    t.procs.append(proc)
    return proc


def run_command(t, *args, expect=(0,), **env):
    result = t.manage("process_data_governance", *args, **COMMAND_ENV, **env)
    if result.returncode not in expect:
        raise harness.HarnessError(f"process_data_governance exited {result.returncode}:\n{result.stdout}\n"
                                   f"{result.stderr[-3000:]}")
    return result


def recover_after_a_dead_command(t, outcome_notes):
    """A killed command leaves its run 'running': the next one is refused until the run is stale."""
    refused = run_command(t, expect=(0, 75))
    if refused.returncode == 75:
        outcome_notes.append("rerun refused while the dead run held the lock (exit 75), as designed")
        t.driver("age_heartbeats", minutes=STALE_MINUTES + 1)
    t.driver("age_claims", minutes=LEASE_MINUTES + 1)
    return run_command(t, expect=(0,))


def window_duplicates(t, killed_at):
    """Warnings the SMTP server accepted whose ledger row was still 'sending' when the process died."""
    sending = {r[0] for r in t.db.query("SELECT id FROM governance_deletionwarning WHERE status = 'sending'")}
    return {d.warning_id for d in t.mailbox.snapshot() if d.warning_id in sending}


@register("command killed (SIGKILL) during deletions")
def command_killed_during_deletions(t, rng):
    world = World(t.driver("seed", counts={"soft_due": 60, "hard_due": 60, "warn_1": 2, "soft_not_hard": 2,
                                           "held_soft": 2, "held_hard": 2}, admins_per_org=0))
    t.mailbox.delay = 0.01
    proc = start_command(t, "--batch-size", "5")
    target = rng.randint(1, 50)
    harness.wait_until(lambda: soft_deleted_count(t, world) >= target or not proc.alive(), 60, interval=0.01,
                       what=f"{target} soft deletions")
    proc.kill()
    notes = [f"killed after {soft_deleted_count(t, world)} soft deletions (target {target})"]
    world.allowed_duplicates |= window_duplicates(t, now())
    recover_after_a_dead_command(t, notes)
    outcome = judge(t, world, command_killed_during_deletions.trial_name)
    outcome.notes += notes
    return outcome


@register("command killed (SIGKILL) during emails")
def command_killed_during_emails(t, rng):
    world = World(t.driver("seed", counts={"warn_7": 25, "warn_1": 5, "soft_due": 3, "future": 2}, admins_per_org=2))
    t.mailbox.delay = 0.01
    proc = start_command(t)
    target = rng.randint(5, 100)
    harness.wait_until(lambda: t.mailbox.count() >= target or not proc.alive(), 60, interval=0.005,
                       what=f"{target} emails")
    proc.kill()
    notes = [f"killed after {t.mailbox.count()} emails (target {target})"]
    world.allowed_duplicates |= window_duplicates(t, now())
    recover_after_a_dead_command(t, notes)
    outcome = judge(t, world, command_killed_during_emails.trial_name)
    outcome.metrics["in_window_at_kill"] = len(world.allowed_duplicates)
    outcome.notes += notes
    return outcome


@register("command killed at the SMTP server's acceptance", quick=True)
def command_killed_at_acceptance(t, rng):
    """The named at-least-once window, hit on purpose: the server has the message, the ledger does not."""
    world = World(t.driver("seed", counts={"warn_7": 6}, admins_per_org=1))
    target = rng.randint(2, 10)
    state = {"proc": None}

    def strike(delivery):
        if t.mailbox.count() == target and state["proc"]:
            state["proc"].signal_group(signal.SIGKILL)  # before the 250 reaches the client

    t.mailbox.on_accept = strike
    state["proc"] = proc = start_command(t)
    harness.wait_until(lambda: not proc.alive(), 60, what="the command to die or finish")
    proc.kill()
    t.mailbox.on_accept = None
    notes = [f"killed as the server accepted email {target}"]
    world.allowed_duplicates |= window_duplicates(t, now())
    recover_after_a_dead_command(t, notes)
    outcome = judge(t, world, command_killed_at_acceptance.trial_name)
    outcome.metrics["in_window_at_kill"] = len(world.allowed_duplicates)
    outcome.notes += notes
    return outcome


@register("SMTP 4xx for a while, then accepting; one recipient 5xx", quick=True)
def smtp_refusing_then_accepting(t, rng):
    world = World(t.driver("seed", counts={"warn_7": 8, "warn_1": 2, "soft_due": 3}, admins_per_org=1))
    rejected = world.surveys[0]["recipients"][0]
    t.mailbox.reject[rejected] = "550 5.1.1 No such user here"
    t.mailbox.refuse_all_until = time.time() + 3600
    # Every email failed transiently, through all its retries: the run is marked failed.
    first = run_command(t, expect=(1,), TRIAL_SMTP_RETRY_SCALE=SMTP_RETRY_SCALE)
    notes = [f"first run during the 4xx period exited 1 with its failures recorded (its SMTP retries' waits "
             f"scaled by {SMTP_RETRY_SCALE}: the same retries, without waiting ~8 minutes)"]
    pending = count(t, "SELECT count(*) FROM governance_deletionwarning WHERE status = 'pending'")
    t.mailbox.refuse_all_until = 0
    run_command(t, expect=(0, 1), TRIAL_SMTP_RETRY_SCALE=SMTP_RETRY_SCALE)
    outcome = judge(t, world, smtp_refusing_then_accepting.trial_name)
    failed = t.db.query("SELECT recipient_email, attempts FROM governance_deletionwarning WHERE status = 'failed'")
    refusals_to_rejected = sum(1 for _, addr, _ in t.mailbox.refused if addr.lower() == rejected)
    expected_failed = [(rejected, 1)] * len([s for s in world.surveys if rejected in s["recipients"]])
    if sorted(failed) != sorted(expected_failed):
        outcome.verdict.violations.append(f"5xx recipient: failed rows {failed}, expected {expected_failed}")
    if "451" not in first.stdout + first.stderr and "Try again" not in first.stdout + first.stderr:
        outcome.verdict.violations.append("the first run's output does not show the 4xx refusals")
    outcome.metrics.update(pending_after_4xx=pending, rejected_attempts=refusals_to_rejected)
    outcome.notes += notes
    return outcome


# engine.MAIL_SERVER_STOP, as the operator sees it: the number of logins the server is asked for before the
# run stops sending (the trial process does not load the engine).
MAIL_SERVER_STOP = 3


@register("SMTP server refusing every login (535), then fixed", quick=True)
def smtp_refusing_logins_then_fixed(t, rng):
    """R21: a wrong SMTP password is not every recipient's permanent failure. The first night stops sending
    after a few refused logins and fails with the cause; with the password fixed, the second night sends
    every warning exactly once."""
    world = World(t.driver("seed", counts={"warn_7": 6, "warn_1": 2, "soft_due": 2}, admins_per_org=1))
    t.mailbox.refuse_logins = True
    login = {"EMAIL_HOST_USER": "checktick-trial", "TRIAL_SMTP_RETRY_SCALE": SMTP_RETRY_SCALE}
    first = run_command(t, expect=(1,), **login)
    logins_first_night = t.mailbox.logins
    rows = count(t, "SELECT count(*) FROM governance_deletionwarning")
    pending = count(t, "SELECT count(*) FROM governance_deletionwarning WHERE status = 'pending'")
    error = t.db.scalar("SELECT error FROM governance_governancerun WHERE status = 'failed' ORDER BY id DESC LIMIT 1") or ""
    t.mailbox.refuse_logins = False  # the operator fixes EMAIL_HOST_PASSWORD
    run_command(t, expect=(0,), **login)
    outcome = judge(t, world, smtp_refusing_logins_then_fixed.trial_name)
    violations = outcome.verdict.violations
    if pending != rows:
        violations.append(f"after the 535 night {rows - pending} of {rows} ledger rows were not pending")
    if logins_first_night > MAIL_SERVER_STOP:
        violations.append(f"the 535 night tried {logins_first_night} logins; it should stop after {MAIL_SERVER_STOP}")
    if "535" not in error or harness.TRIAL_SMTP_PASSWORD in error + first.stdout + first.stderr:
        violations.append(f"the failed run's error does not name the 535 (or shows the password): {error!r}")
    sent = {w for w, in t.db.query("SELECT id FROM governance_deletionwarning WHERE status = 'sent'")}
    delivered = t.mailbox.by_warning()
    if sent != set(delivered) or any(len(d) != 1 for d in delivered.values()) or len(sent) != rows:
        violations.append(f"second night: {len(sent)} of {rows} rows sent, deliveries per warning "
                          f"{sorted(len(d) for d in delivered.values())}")
    outcome.metrics.update(rows=rows, logins_first_night=logins_first_night)
    outcome.notes.append(f"first night: {logins_first_night} refused logins, {pending} of {rows} rows left pending; "
                         f"second night: every row sent once")
    return outcome


@register("PostgreSQL unavailable for a few seconds mid-run (command)")
def command_database_dropped(t, rng):
    world = World(t.driver("seed", counts={"warn_7": 15, "soft_due": 20, "hard_due": 20}, admins_per_org=1))
    t.mailbox.delay = 0.01
    proc = start_command(t, "--batch-size", "5")
    target = rng.randint(5, 50)
    harness.wait_until(lambda: t.mailbox.count() >= target or not proc.alive(), 60, interval=0.01,
                       what=f"{target} emails")
    t.db.set_allow_connections(False)
    terminated = t.db.terminate_backends()
    time.sleep(rng.uniform(1.0, 3.0))
    t.db.set_allow_connections(True)
    harness.wait_until(lambda: not proc.alive(), 60, what="the command to end")
    notes = [f"dropped {terminated} connection(s) after {target} emails; the command exited {proc.popen.returncode}"]
    world.allowed_duplicates |= window_duplicates(t, now())
    recover_after_a_dead_command(t, notes)
    outcome = judge(t, world, command_database_dropped.trial_name)
    outcome.notes += notes
    return outcome


def holds_on_signal(t, survey_ids, race_next=0):
    """A driver that places holds the moment the trial touches a file (Django is set up in advance)."""
    trigger = t.workdir / f"hold-{len(t.procs)}.go"
    proc = harness.Proc("holder", [harness.PYTHON, "-m", "tests.reliability.driver", "place_holds_on_signal",
                                   json.dumps({"survey_ids": survey_ids, "trigger": str(trigger),
                                               "race_next": race_next})],
                        t.env(), t._log("holder"))
    t.procs.append(proc)
    harness.wait_until(lambda: "WAITING" in proc.output() or not proc.alive(), 30, what="the hold driver")

    def fire():
        trigger.touch()
        harness.wait_until(lambda: not proc.alive(), 60, what="the holds to be placed")
        return parse_result(proc)
    return fire


def parse_result(proc):
    for line in proc.output().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise harness.HarnessError(f"{proc.name} printed no result:\n{proc.output()[-3000:]}")


def due_not_yet_done(t, world, kinds=("soft_due", "hard_due")):
    live = {r[0]: r[1] for r in t.db.query("SELECT id, deleted_at FROM surveys_survey")}
    seeded = {s["id"]: s for s in world.surveys if s["kind"] in kinds}
    return [sid for sid, s in seeded.items() if sid in live and (live[sid] is None) == (s["deleted_at"] is None)]


@register("legal hold placed while the command is deleting")
def command_hold_race(t, rng):
    world = World(t.driver("seed", counts={"soft_due": 80, "hard_due": 40}, admins_per_org=0))
    t.mailbox.delay = 0.005
    # Victims: some due for soft deletion (late in pk order, so the run reaches them after the hold
    # lands, or races it), some due for hard deletion (taken after all soft deletions).
    soft = [s["id"] for s in world.surveys if s["kind"] == "soft_due"]
    hard = [s["id"] for s in world.surveys if s["kind"] == "hard_due"]
    victims = rng.sample(soft[len(soft) // 2:], 3) + rng.sample(hard, 2)
    fire = holds_on_signal(t, victims, race_next=2)  # and the two surveys the run is on right now
    proc = start_command(t, "--batch-size", "4")
    target = rng.randint(1, len(soft) // 2)
    harness.wait_until(lambda: soft_deleted_count(t, world) >= target or not proc.alive(), 60, interval=0.005,
                       what=f"{target} soft deletions")
    holds = fire()["holds"]
    harness.wait_until(lambda: not proc.alive(), 60, what="the command to end")
    world.holds += holds
    run_command(t, expect=(0,))
    outcome = judge(t, world, command_hold_race.trial_name)
    outcome.metrics["holds_froze"] = dict(Counter(h["state"] for h in holds))
    return outcome


# --- the Celery path: a worker (and beat) as real processes --------------------------------------------

CELERY_APP = "tests.reliability.trial_celery"
ORCHESTRATOR = "checktick_app.governance.tasks.run_data_governance"
WATCHDOG = "checktick_app.governance.tasks.watch_runs"
# Sweep the unacked messages of a dead worker every second (kombu's default: 10-100 s). Only messages
# older than the visibility timeout are restored, so this changes when, never whether.
FAST_RESTORE = {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
PRODUCTION_VISIBILITY_TIMEOUT = 3600  # at least; settings.VISIBILITY_TIMEOUT_SECONDS is ~1 hour


def start_worker(t, queues=ALL_QUEUES, concurrency=2, broker=None, name="worker", **env):
    options = json.dumps({**FAST_RESTORE, **(broker or {})})
    return t.start_worker(queues=queues, concurrency=concurrency, app=CELERY_APP, name=name,
                          TRIAL_BROKER_OPTIONS=options, **env)


def start_run(t, trigger="admin", username="trial-operator", dry_run=False):
    """A run as the admin's Run now button starts it (dispatch.enqueue_run); returns its id."""
    result = t.driver("enqueue_run", trigger=trigger, username=username, dry_run=dry_run)
    if result.get("refused"):
        raise harness.HarnessError(f"run refused: {result['error']}")
    return result["run_id"]


def run_status(t, run_id):
    return t.db.scalar("SELECT status FROM governance_governancerun WHERE id = %s", [run_id])


def wait_run(t, run_id, timeout=90):
    """Bounded wait for a run to finish; returns its status ('running' if it never did)."""
    try:
        harness.wait_until(lambda: run_status(t, run_id) != "running", timeout, interval=0.2,
                           what=f"run {run_id} to finish")
    except harness.TimedOut:
        pass
    return run_status(t, run_id)


def age_unacked(t, seconds):
    """Stand-in for the visibility timeout passing: move the delivery time of unacked messages back."""
    lines = t.redis.command("ZRANGE", "unacked_index", "0", "-1", "WITHSCORES").split()
    pairs = list(zip(lines[::2], lines[1::2]))
    for tag, score in pairs:
        t.redis.command("ZADD", "unacked_index", str(float(score) - seconds), tag)
    return len(pairs)


def recover_worker(t, outcome_notes, run_id, **worker_kwargs):
    """Restart the worker; let the dead one's unacked messages come back; wait for the run to finish.

    The dead worker's email claims stay 'sending' for CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES; a redelivered
    email task retries (backing off) until the lease is over. The lease is aged at once instead."""
    aged = t.driver("age_claims", minutes=15 + 1)["aged"]
    if aged:
        outcome_notes.append(f"{aged} claim(s) of the dead worker aged past the 15-minute lease")
    start_worker(t, **worker_kwargs)
    aged = age_unacked(t, PRODUCTION_VISIBILITY_TIMEOUT + 60)
    outcome_notes.append(f"restarted the worker; {aged} unacked message(s) aged past the visibility timeout")
    status = wait_run(t, run_id)
    outcome_notes.append(f"run {run_id} ended {status}")
    return status


def one_more_run(t, notes, *, after_stuck_run=None):
    """I2 allows at most one more run after recovery: the email claim lease (and, if the last run never
    finished, the stale-run period) are aged first, since the next night is when they would be over."""
    stuck = after_stuck_run is not None and run_status(t, after_stuck_run) == "running"
    if stuck:
        notes.append(f"run {after_stuck_run} never finished: heartbeats aged past the stale period")
    result = t.driver("enqueue_run", trigger="admin", username="trial-operator",
                      age_heartbeats=180 + 1 if stuck else 0, age_claims=15 + 1)
    if result.get("refused"):
        raise harness.HarnessError(f"one more run refused: {result['error']}")
    run_id = result["run_id"]
    status = wait_run(t, run_id)
    notes.append(f"one more run {run_id}: {status}")
    return run_id


def queues_drained(t):
    """Nothing left for a worker: every queue empty and no message delivered but unacked."""
    lengths = [t.redis.command("LLEN", q).strip() for q in ALL_QUEUES] + [t.redis.command("HLEN", "unacked").strip()]
    return all(n in ("0", "") for n in lengths)


def wait_run_or_drained(t, run_id, timeout=90, grace=3.0):
    """Wait until the run finishes, or until the queues are drained and it still has not finished for
    `grace` seconds (then nothing can finish it: it has stalled). Returns the run's status."""
    deadline = time.monotonic() + timeout
    drained_since = None
    while time.monotonic() < deadline:
        status = run_status(t, run_id)
        if status != "running":
            return status
        if queues_drained(t):
            drained_since = drained_since or time.monotonic()
            if time.monotonic() - drained_since > grace:
                return status
        else:
            drained_since = None
        time.sleep(0.2)
    return run_status(t, run_id)


def stalled(t, run_id, cause, when):
    """A run still 'running' with nothing left in the broker to finish it: which items never landed.

    (A run still waiting for messages in the broker, e.g. retries backing off, is slow, not stalled.)"""
    if run_status(t, run_id) != "running" or not queues_drained(t):
        return []
    pending = [tuple(r) for r in t.db.query("SELECT kind, object_id FROM governance_runitem WHERE run_id = %s AND "
                                            "outcome = 'pending' ORDER BY id", [run_id])]
    total = count(t, "SELECT count(*) FROM governance_runitem WHERE run_id = %s", [run_id])
    planned = t.db.scalar("SELECT planned_at IS NOT NULL FROM governance_governancerun WHERE id = %s", [run_id])
    return [f"I2 stalled after {cause}: run {run_id} still 'running' {when} after the fault ended; "
            f"{total - len(pending)} of {total} items settled{'' if planned else ', its plan never finished'}; "
            f"planned items never settled: {pending[:8]}{' ...' if len(pending) > 8 else ''}"]


def celery_outcome(t, world, name, notes, extra=(), **metrics):
    outcome = judge(t, world, name, extra, **metrics)
    outcome.notes += notes
    return outcome


DELETION_WORLD = {"soft_due": 50, "hard_due": 50, "warn_1": 2, "soft_not_hard": 2, "held_soft": 2, "held_hard": 2,
                  "future": 2}
EMAIL_WORLD = {"warn_7": 25, "warn_1": 5, "soft_due": 3, "future": 2, "held_warn": 1}


@register("worker killed (SIGKILL) during deletions, restarted")
def worker_killed_during_deletions(t, rng):
    world = World(t.driver("seed", counts=DELETION_WORLD, admins_per_org=0))
    worker = start_worker(t)
    run_id = start_run(t)
    target = rng.randint(1, 40)
    harness.wait_until(lambda: soft_deleted_count(t, world) >= target or run_status(t, run_id) != "running", 60,
                       interval=0.005, what=f"{target} soft deletions")
    worker.kill()
    notes = [f"worker killed after {soft_deleted_count(t, world)} soft deletions (target {target})"]
    world.allowed_duplicates |= window_duplicates(t, now())
    recover_worker(t, notes, run_id)
    one_more_run(t, notes, after_stuck_run=run_id)
    return celery_outcome(t, world, worker_killed_during_deletions.trial_name, notes)


@register("worker killed (SIGKILL) during emails, restarted")
def worker_killed_during_emails(t, rng):
    world = World(t.driver("seed", counts=EMAIL_WORLD, admins_per_org=2))
    t.mailbox.delay = 0.02
    worker = start_worker(t)
    run_id = start_run(t)
    target = rng.randint(5, 100)
    harness.wait_until(lambda: t.mailbox.count() >= target or run_status(t, run_id) != "running", 60,
                       interval=0.005, what=f"{target} emails")
    worker.kill()
    notes = [f"worker killed after {t.mailbox.count()} emails (target {target})"]
    world.allowed_duplicates |= window_duplicates(t, now())
    recover_worker(t, notes, run_id)
    one_more_run(t, notes, after_stuck_run=run_id)
    return celery_outcome(t, world, worker_killed_during_emails.trial_name, notes,
                          in_window_at_kill=len(world.allowed_duplicates))


@register("worker killed between a deletion and its recorded outcome", quick=True)
def worker_killed_between_deletion_and_outcome(t, rng):
    """Deterministic: the trial holds the row locks of the run's soft-deletion items, which each deletion's
    outcome takes (engine._settle, a compare-and-set inside the deletion's own transaction), so the
    deleter does its deletions and then waits to record them; it is killed right there, then restarted.
    A deletion must never commit without its outcome: the run would not count what it did.

    Under the two engines before, the outcome was recorded after the deletion committed (the lock was the
    run row's, in dispatch.land), and this trial found the redelivered deletion landing as a no-op (the
    run's counts missing what it did, the survey's notices left to the next run); fixed by commit d030619.
    Since the one engine, a deletion and its outcome commit together."""
    world = World(t.driver("seed", counts={"soft_due": 6, "hard_due": 2, "warn_7": 1}, admins_per_org=0))
    worker = start_worker(t, queues=[QUEUE_GOVERNANCE])
    run_id = start_run(t)
    harness.wait_until(lambda: count(t, "SELECT count(*) FROM governance_governancerun WHERE id = %s AND "
                                        "planned_at IS NOT NULL", [run_id]), 60, what="the run's plan")
    blocker = t.db.connect()
    blocker.autocommit = False
    locked = blocker.execute("SELECT id FROM governance_runitem WHERE run_id = %s AND kind = 'soft_delete' "
                             "FOR UPDATE", [run_id]).fetchall()
    deleter = start_worker(t, queues=[QUEUE_DELETION], name="deleter")
    harness.wait_until(lambda: waiting_for_a_lock(t) >= 2, 60, what="two deletions waiting to record their outcomes")
    time.sleep(0.3)
    deleter.kill()
    worker.kill()
    committed = soft_deleted_count(t, world)
    recorded = count(t, "SELECT count(*) FROM governance_runitem WHERE run_id = %s AND kind = 'soft_delete' AND "
                        "outcome = 'done'", [run_id])
    blocker.rollback()
    blocker.close()
    notes = [f"killed with {len(locked)} soft-deletion item(s) locked, {committed} soft deletion(s) committed and "
             f"{recorded} outcome(s) recorded"]
    extra = []
    if committed != recorded:
        extra.append(f"I4 lost outcome: the worker died with {committed} soft deletion(s) committed and {recorded} "
                     f"outcome(s) recorded in run {run_id}")
    recover_worker(t, notes, run_id)
    one_more_run(t, notes, after_stuck_run=run_id)
    return celery_outcome(t, world, worker_killed_between_deletion_and_outcome.trial_name, notes, extra)


def waiting_for_a_lock(t):
    """Connections to the trial database waiting for a lock (the blocked deletions)."""
    return count(t, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                    "wait_event_type = 'Lock'")


def watchdog_resumes(t, notes, run_id):
    """Stand-in for CHECKTICK_RUN_RESUME_AFTER_MINUTES (20) passing with beat's watchdog on: the run's
    heartbeat is aged past it and tasks.watch_runs is sent as beat sends it every five minutes."""
    t.driver("age_heartbeats", minutes=20 + 1)
    t.driver("age_claims", minutes=20 + 1)  # the same 21 minutes pass for a dead worker's email claims
    t.driver("send_task", name=WATCHDOG)
    status = wait_run_or_drained(t, run_id)
    resumes = t.db.scalar("SELECT resumes FROM governance_governancerun WHERE id = %s", [run_id])
    notes.append(f"run {run_id} quiet past the resume period (heartbeat and claims aged 21 min): the watchdog resumed it "
                 f"{resumes} time(s); it ended {status}")
    return status


def supervise_workers(t, notes, watch=5.0):
    """Restart a worker that exited, as systemd (Restart=on-failure), compose (restart: unless-stopped)
    and Kubernetes do in production.

    Now and then a worker that loses Redis exits with "Unrecoverable error: AttributeError('NoneType'
    object has no attribute 'hostname')": a race in kombu's Redis reconnect (celery/kombu#582 and
    kin), exit status 1. It runs under a supervisor in every deployment (ops/, docker-compose.yml),
    so the trial does what the supervisor would; the note says so, and the invariants judge the rest.
    """
    deadline = time.monotonic() + watch  # the crash comes at the loss; the process exits ~2 s later
    while time.monotonic() < deadline:
        dead = [p for p in t.procs if p.name == "worker" and not p.alive() and not getattr(p, "replaced", False)]
        for proc in dead:
            proc.replaced = True
            crash = "Unrecoverable error" in proc.output()
            start_worker(t)
            notes.append(f"the worker exited (status {proc.popen.returncode}"
                         f"{', kombu reconnect race' if crash else ''}) and was restarted, as its supervisor would")
        time.sleep(0.1)


def redis_restart(t, rng, name):
    """Redis goes down while an email task is in flight (the SMTP server holds its DATA for 0.3 s)."""
    world = World(t.driver("seed", counts={"soft_due": 15, "hard_due": 15, "warn_7": 10}, admins_per_org=1))
    t.mailbox.delay = 0.02
    target = rng.randint(5, 30)
    in_flight = threading.Event()

    def slow_down(count):
        if count == target:
            t.mailbox.delay = 0.3
            in_flight.set()

    t.mailbox.on_data = slow_down
    start_worker(t)
    run_id = start_run(t)
    harness.wait_until(lambda: in_flight.is_set() or run_status(t, run_id) != "running", 60, interval=0.005,
                       what=f"email {target} in flight")
    t.redis.stop(hard=rng.random() < 0.5)
    t.mailbox.delay = 0.02
    down = rng.uniform(1.0, 3.0)
    time.sleep(down)
    t.redis.start()
    kept = "restarted from its append-only file" if t.redis.persistent else "restarted empty (every message lost)"
    notes = [f"Redis stopped while email {target} was in flight, down {down:.1f} s, {kept}"]
    supervise_workers(t, notes)
    status = wait_run_or_drained(t, run_id)
    if status == "running":
        aged = age_unacked(t, PRODUCTION_VISIBILITY_TIMEOUT + 60)
        notes.append(f"queues drained, run still running: {aged} unacked message(s) aged past the visibility "
                     "timeout")
        status = wait_run_or_drained(t, run_id)
    if status == "running":
        # Messages lost with Redis's data, with a worker that died, or in Celery's own handling of the
        # outage (a result-backend write that fails in a pool child): production's watchdog re-sends
        # them, and so does the trial. (That workers let tasks in flight finish, rather than cancel
        # and ack them, is pinned by tests/celery/test_celery_settings.py.)
        status = watchdog_resumes(t, notes, run_id)
    stall = []
    if status == "running":  # drained or not: the run did not finish (stalled() names what never landed)
        stall = stalled(t, run_id, "a Redis restart", "with the broker recovered,") or [
            f"I2 stalled after a Redis restart: run {run_id} still 'running' with messages left in the broker"]
    notes.append(f"run {run_id} ended {status}")
    world.allowed_duplicates |= window_duplicates(t, now())
    one_more_run(t, notes, after_stuck_run=run_id)
    return celery_outcome(t, world, name, notes, stall)


@register("Redis restarted in the middle of a run", persistent_redis=True, quick=True)
def redis_restarted(t, rng):
    return redis_restart(t, rng, redis_restarted.trial_name)


@register("Redis restarted without persistence in the middle of a run (queued messages lost)")
def redis_restarted_empty(t, rng):
    return redis_restart(t, rng, redis_restarted_empty.trial_name)


@register("two beats at once, and an admin run during the nightly run", quick=True)
def two_beats_and_an_admin_run(t, rng):
    world = World(t.driver("seed", counts={"soft_due": 8, "hard_due": 8, "warn_7": 6}, admins_per_org=1))
    t.mailbox.delay = 0.05
    start_worker(t)
    t.driver("periodic_task", name="trial nightly", task=ORCHESTRATOR, every_seconds=1)
    beats = [t.start_beat(name="beat", app=CELERY_APP), t.start_beat(name="beat", app=CELERY_APP)]
    # The night's run; each later beat dispatch is a refusal with a row of its own (status 'refused').
    beat_run = "SELECT {} FROM governance_governancerun WHERE trigger = 'beat' AND status <> 'refused'"
    harness.wait_until(lambda: count(t, beat_run.format("count(*)")), 60, interval=0.1,
                       what="the nightly run to start")
    nightly = t.db.scalar(beat_run.format("id"))
    admin = t.driver("enqueue_run", trigger="admin", username="trial-operator")
    notes = [f"admin run during nightly run {nightly}: " + (admin["error"][:160] if admin["refused"] else
                                                          f"NOT refused (run {admin['run_id']})")]
    status = wait_run(t, nightly)
    time.sleep(3)  # both beats keep firing every second after the run finished
    for beat in beats:
        beat.stop()
    t.driver("disable_periodic_tasks")
    fired = sum(p.output().count("Sending due task trial nightly") for p in beats)
    runs = t.db.query("SELECT id, trigger, status, scheduled_for FROM governance_governancerun ORDER BY id")
    notes.append(f"beats sent the nightly task {fired} times; runs: {runs}")
    outcome = celery_outcome(t, world, two_beats_and_an_admin_run.trial_name, notes, beat_messages=fired)
    # Each refused attempt keeps a history row of its own (status 'refused'); only one may be a run.
    beat_runs = [r for r in runs if r[1] == "beat" and r[2] != "refused"]
    if len(beat_runs) != 1:
        outcome.verdict.violations.append(f"R18 {len(beat_runs)} beat-triggered runs for one day: {beat_runs}")
    if not admin["refused"] or f"#{nightly}" not in admin["error"]:
        outcome.verdict.violations.append(f"R18 the admin run during nightly run {nightly} was not refused naming "
                                          f"it: {admin}")
    if status != "succeeded":
        outcome.verdict.violations.append(f"nightly run {nightly} ended {status}")
    return outcome


@register("legal hold placed on surveys whose deletion tasks are already queued", quick=True)
def hold_on_queued_deletions(t, rng):
    world = World(t.driver("seed", counts={"soft_due": 20, "hard_due": 20}, admins_per_org=0))
    start_worker(t, queues=[QUEUE_GOVERNANCE])  # plans and enqueues; nothing consumes the deletions yet
    run_id = start_run(t)
    harness.wait_until(lambda: int(t.redis.command("LLEN", QUEUE_DELETION).strip() or 0) >= 40, 60,
                       what="every deletion task to be queued")
    due = [s["id"] for s in world.surveys if s["kind"] in ("soft_due", "hard_due")]
    victims = rng.sample(due, 8)
    fire = holds_on_signal(t, victims)
    deleter = start_worker(t, queues=[QUEUE_DELETION, QUEUE_EMAIL], name="deleter")
    holds = fire()["holds"]  # some before their task runs, some racing it
    world.holds += holds
    status = wait_run(t, run_id)
    notes = [f"holds froze: {dict(Counter(h['state'] for h in holds))}; run {run_id} ended {status}"]
    deleter.stop()
    outcome = celery_outcome(t, world, hold_on_queued_deletions.trial_name, notes)
    skipped = {r[0] for r in t.db.query("SELECT survey_id FROM governance_auditevent WHERE action = "
                                         "'skipped_for_hold' AND run_id = %s", [run_id])}
    frozen_live = {h["survey_id"] for h in holds if h["state"] != "missing"}
    untouched = {h["survey_id"] for h in holds if (h["state"] == "live" and h["survey_id"] in
                 {s["id"] for s in world.surveys if s["kind"] == "soft_due"})}
    if not untouched <= skipped:
        outcome.verdict.violations.append(f"R13/R20 held surveys {sorted(untouched - skipped)} have no "
                                          f"skipped_for_hold audit row in run {run_id}")
    outcome.metrics["held"] = len(frozen_live)
    return outcome


@register("PostgreSQL unavailable for a few seconds mid-run (worker)", quick=True)
def worker_database_dropped(t, rng):
    world = World(t.driver("seed", counts={"warn_7": 10, "soft_due": 12, "hard_due": 12}, admins_per_org=1))
    t.mailbox.delay = 0.02
    start_worker(t)
    run_id = start_run(t)
    target = rng.randint(5, 30)
    harness.wait_until(lambda: t.mailbox.count() >= target or run_status(t, run_id) != "running", 60,
                       interval=0.005, what=f"{target} emails")
    t.db.set_allow_connections(False)
    terminated = t.db.terminate_backends()
    down = rng.uniform(1.0, 3.0)
    time.sleep(down)
    t.db.set_allow_connections(True)
    notes = [f"database refused connections for {down:.1f} s after {target} emails ({terminated} dropped)"]
    outage_over = now()
    status = wait_run_or_drained(t, run_id, timeout=150)
    extra = stalled(t, run_id, "a database outage", "with every queue drained,")
    if status == "running" and not extra:
        # Retries still backing off. A row claimed before the outage by a delivery that then lost the
        # database stays 'sending': its own retries take it for another delivery and wait for the lease.
        own = t.db.query("SELECT id, claimed_at FROM governance_deletionwarning WHERE status = 'sending' AND "
                         "claimed_at < %s", [outage_over])
        delivered = t.mailbox.by_warning()
        stuck = [wid for wid, _ in own if wid not in delivered]
        if stuck:
            extra.append(f"I2 own claim: warning(s) {stuck} claimed by a delivery that then lost the database "
                         f"were never sent, and its retries wait for the claim's 15-minute lease; run {run_id} "
                         f"still 'running' 150 s after the outage")
        notes.append(f"run {run_id} still running 150 s after the outage, retries pending; claims aged past the lease")
        world.allowed_duplicates |= window_duplicates(t, now())
        t.driver("age_claims", minutes=15 + 1)
        status = wait_run_or_drained(t, run_id, timeout=150)
        extra += stalled(t, run_id, "a database outage", "with every queue drained,")
    notes.append(f"run {run_id} ended {status} ({(now() - outage_over).total_seconds():.0f} s after the outage)")
    world.allowed_duplicates |= window_duplicates(t, now())
    one_more_run(t, notes, after_stuck_run=run_id)
    return celery_outcome(t, world, worker_database_dropped.trial_name, notes, extra, run_after_outage=status)


@register("message redelivered after a late ack (short visibility timeout)", quick=True)
def redelivered_after_late_ack(t, rng):
    world = World(t.driver("seed", counts={"warn_7": 2, "soft_due": 2, "hard_due": 2}, admins_per_org=1))
    t.mailbox.delay = 2.5  # each email task outlives the visibility timeout
    broker = {"visibility_timeout": 1}
    start_worker(t, broker=broker, name="worker")
    start_worker(t, broker=broker, name="worker")
    run_id = start_run(t)
    status = wait_run(t, run_id, timeout=120)
    notes = [f"run {run_id} ended {status} with the visibility timeout at 1 s"]
    receipts, retries, redelivered = task_deliveries(p for p in t.procs if p.name == "worker")
    outcome = celery_outcome(t, world, redelivered_after_late_ack.trial_name, notes, task_receipts=receipts,
                             task_retries=retries, redeliveries=redelivered)
    # The items that were sent as messages: all but those planned settled (held, no recipient, no address).
    planned = count(t, "SELECT count(*) FROM governance_runitem WHERE run_id = %s AND kind <> 'held' AND "
                       "reason NOT IN ('no recipient', 'no email address')", [run_id])
    outcome.metrics["planned_items"] = planned
    if not redelivered:
        outcome.verdict.violations.append(f"the trial did not make any redelivery ({receipts} receipts and {retries} "
                                          f"retries for {planned} items): nothing was tested")
    return outcome


TASK_LOG = re.compile(r"Task [\w.]+\[([0-9a-f-]{36})\] (received|retry:)")


def task_deliveries(procs):
    """(receipts, retries, redeliveries) in the workers' logs. A retry is a new message with the task's id,
    so a task id received more often than once plus its retries was redelivered."""
    received, retried = Counter(), Counter()
    for proc in procs:
        for task_id, event in TASK_LOG.findall(proc.output()):
            (received if event == "received" else retried)[task_id] += 1
    redelivered = sum(max(0, n - retried[task_id] - 1) for task_id, n in received.items())
    return sum(received.values()), sum(retried.values()), redelivered


@register("SMTP 4xx for a while, then accepting; one recipient 5xx (worker)")
def worker_smtp_refusing_then_accepting(t, rng):
    world = World(t.driver("seed", counts={"warn_7": 4, "soft_due": 2}, admins_per_org=1))
    rejected = world.surveys[0]["recipients"][0]
    t.mailbox.reject[rejected] = "550 5.1.1 No such user here"
    refusing = rng.uniform(1.0, 4.0)
    t.mailbox.refuse_all_until = time.time() + 3600
    start_worker(t)
    run_id = start_run(t)
    harness.wait_until(lambda: len(t.mailbox.refused) >= 4, 60, what="the first refusals")
    time.sleep(refusing)
    t.mailbox.refuse_all_until = 0
    status = wait_run(t, run_id, timeout=150)  # retries back off 30 s, 60 s, ... with full jitter
    notes = [f"SMTP answered 451 for {refusing:.1f} s after the first refusals; run {run_id} ended {status}"]
    outcome = celery_outcome(t, world, worker_smtp_refusing_then_accepting.trial_name, notes)
    failed = t.db.query("SELECT recipient_email, attempts FROM governance_deletionwarning WHERE status = 'failed'")
    expected_failed = [(rejected, 1)] * sum(1 for s in world.surveys if rejected in s["recipients"]
                                            and s["kind"] in ("warn_7", "soft_due"))
    if sorted(failed) != sorted(expected_failed):
        outcome.verdict.violations.append(f"5xx recipient: failed rows {failed}, expected {expected_failed}")
    if status != "failed":
        outcome.verdict.violations.append(f"run {run_id} ended {status}; with a permanent failure it must be failed")
    return outcome


def run_one(name, template, rep=0):
    """Run one trial in a fresh world; a harness failure is reported as a violation, not raised."""
    rng = random.Random(f"{name}/{rep}")
    started = time.monotonic()
    trial_fn = TRIALS[name]
    with harness.Trial(name.split(" ")[0], template=template, persistent_redis=trial_fn.persistent_redis) as t:
        try:
            outcome = trial_fn(t, rng)
        except Exception as exc:  # noqa: BLE001 - a trial that cannot finish is a finding too
            logs = "\n".join(f"--- {k}\n{v[-2500:]}" for k, v in t.logs().items())
            outcome = Outcome(name, Verdict([f"trial did not complete: {type(exc).__name__}: {exc}\n{logs}"], []))
        outcome.metrics["seconds"] = round(time.monotonic() - started, 1)
        if not outcome.held:
            t.keep_workdir = True
            outcome.notes.append(f"process logs kept in {t.workdir}")
    return outcome


# --- the at-least-once window, measured ----------------------------------------------------------------

def measure_window(template, path="worker", quit_delay=0.05, counts=None):
    """A clean run with a WindowProbe on the SMTP server: ms from each acceptance to its ledger 'sent'.

    `quit_delay` stands for the round trip to a real SMTP server (the local one answers in microseconds):
    if the QUIT were inside the window, every window would be at least that long.
    """
    with harness.Trial("window", template=template) as t:
        t.driver("seed", counts=counts or {"warn_7": 20, "soft_due": 5}, admins_per_org=2)
        probe = harness.WindowProbe(t.db)
        t.mailbox.on_accept = probe.on_accept
        t.mailbox.quit_delay = quit_delay
        try:
            if path == "command":
                run_command(t)
            else:
                start_worker(t)
                wait_run(t, start_run(t))
        finally:
            windows = probe.close()
        return windows, acceptance_to_ledger_ms(t)
