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
LEASE_MINUTES = 1  # CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES in the trials (its minimum)


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


def register(name):
    def deco(fn):
        TRIALS[name] = fn
        fn.trial_name = name
        return fn
    return deco


def now():
    return datetime.now(timezone.utc)


def last_run_start(t):
    return t.db.scalar("SELECT max(started_at) FROM governance_governancerun WHERE NOT dry_run")


def judge(t, world, name, **metrics):
    reference = last_run_start(t) or now()
    verdict = check_all(t.db, world, t.mailbox, now(), reference)
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


def start_command(t, *args, name="command"):
    proc = harness.Proc(name, [harness.PYTHON, "manage.py", "process_data_governance", *args],
                        t.env(**COMMAND_ENV), t._log(name))
    t.procs.append(proc)
    return proc


def run_command(t, *args, expect=(0,)):
    result = t.manage("process_data_governance", *args, **COMMAND_ENV)
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


@register("command killed at the SMTP server's acceptance")
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


@register("SMTP 4xx for a while, then accepting; one recipient 5xx")
def smtp_refusing_then_accepting(t, rng):
    world = World(t.driver("seed", counts={"warn_7": 8, "warn_1": 2, "soft_due": 3}, admins_per_org=1))
    rejected = world.surveys[0]["recipients"][0]
    t.mailbox.reject[rejected] = "550 5.1.1 No such user here"
    t.mailbox.refuse_all_until = time.time() + 3600
    first = run_command(t, expect=(1,))  # every email failed transiently: the run is marked failed
    notes = ["first run during the 4xx period exited 1 with its failures recorded"]
    pending = count(t, "SELECT count(*) FROM governance_deletionwarning WHERE status = 'pending'")
    t.mailbox.refuse_all_until = 0
    run_command(t, expect=(0, 1))
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


def run_one(name, template, rep=0):
    """Run one trial in a fresh world; a harness failure is reported as a violation, not raised."""
    rng = random.Random(f"{name}/{rep}")
    started = time.monotonic()
    with harness.Trial(name.split(" ")[0], template=template) as t:
        try:
            outcome = TRIALS[name](t, rng)
        except Exception as exc:  # noqa: BLE001 - a trial that cannot finish is a finding too
            logs = "\n".join(f"--- {k}\n{v[-2500:]}" for k, v in t.logs().items())
            outcome = Outcome(name, Verdict([f"trial did not complete: {type(exc).__name__}: {exc}\n{logs}"], []))
        outcome.metrics["seconds"] = round(time.monotonic() - started, 1)
    return outcome
