"""The harness and the invariant checker are themselves specified: a clean run passes every check,
and each kind of violation a trial looks for is caught when it is planted."""

from datetime import datetime, timezone
from pathlib import Path

from tests.reliability import harness
from tests.reliability.invariants import World, check_all

SMALL_WORLD = {"soft_due": 2, "hard_due": 2, "warn_7": 2, "warn_1": 1, "soft_not_hard": 1, "future": 1,
               "held_soft": 1, "held_hard": 1, "held_warn": 1}


def verdict(trial, world):
    reference = trial.db.scalar("SELECT max(started_at) FROM governance_governancerun")
    return check_all(trial.db, world, trial.mailbox, datetime.now(timezone.utc), reference)


def test_a_clean_nightly_command_run_holds_every_invariant(trial):
    world = World(trial.driver("seed", counts=SMALL_WORLD))
    result = trial.manage("process_data_governance")
    assert result.returncode == 0, result.stderr
    assert trial.mailbox.count() == 4 * (2 + 2 + 1)  # owner, org owner, two admins; 7-day, 1-day, notices
    assert verdict(trial, world).violations == []


def test_the_checker_catches_each_planted_violation(trial):
    world = World(trial.driver("seed", counts=SMALL_WORLD))
    assert trial.manage("process_data_governance").returncode == 0
    by_kind = {}
    for s in world.surveys:
        by_kind.setdefault(s["kind"], []).append(s["id"])
    db = trial.db
    # I1: a survey soft-deleted long before its date, one hard-deleted under a hold.
    db.query("UPDATE surveys_survey SET deleted_at = now(), hard_deletion_date = now() + interval '30 days' "
             "WHERE id = %s RETURNING id", [by_kind["future"][0]])
    db.query("DELETE FROM surveys_surveyprogress WHERE survey_id = %s RETURNING id", [by_kind["held_hard"][0]])
    for table in ("surveys_surveyresponse", "surveys_surveyaccesstoken"):
        db.query(f"DELETE FROM {table} WHERE survey_id = %s RETURNING id", [by_kind["held_hard"][0]])
    db.query("DELETE FROM surveys_survey WHERE id = %s RETURNING id", [by_kind["held_hard"][0]])
    # I2: a due survey left alone (restored by hand), a sent email the server never saw.
    db.query("UPDATE surveys_survey SET deleted_at = NULL, hard_deletion_date = NULL WHERE id = %s RETURNING id",
             [by_kind["soft_due"][0]])
    lost = db.scalar("SELECT min(id) FROM governance_deletionwarning WHERE status = 'sent'")
    trial.mailbox.deliveries[:] = [d for d in trial.mailbox.deliveries if d.warning_id != lost]
    # I3: one email delivered twice.
    twice = db.scalar("SELECT max(id) FROM governance_deletionwarning WHERE status = 'sent'")
    trial.mailbox.deliveries.append(next(d for d in trial.mailbox.deliveries if d.warning_id == twice))
    # I4: a run left running.
    db.query("INSERT INTO governance_governancerun (job, trigger, triggered_by, dry_run, started_at, heartbeat_at, "
             "status, counts, details, error, plan_step, plan_after) VALUES ('progress_cleanup', 'command', '', false, "
             "now(), now(), 'running', '{}', '{}', '', '', 0) RETURNING id")

    found = "\n".join(verdict(trial, world).violations)

    assert f"I1 survey {by_kind['future'][0]} (future) soft-deleted" in found
    assert f"I1 survey {by_kind['held_hard'][0]} hard-deleted although a hold was active" in found
    assert f"I2 survey {by_kind['soft_due'][0]} due for soft deletion" in found
    assert f"I2 warning {lost} is marked sent but the SMTP server never accepted it" in found
    assert f"I3 warning {twice}" in found and "delivered 2 times" in found
    assert "is still 'running' after recovery" in found
    assert f"I4 survey {by_kind['future'][0]} soft-deleted with 0 soft_deleted audit rows" in found


def live_members(pgid):
    """Processes of a group that are still running (zombies waiting for init to reap them do not count)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(stat.parent.name)
    return found


def test_teardown_leaves_no_process_and_no_database(trial_template):
    with harness.Trial("teardown", template=trial_template) as t:
        worker = harness.Proc("sleeper", ["sh", "-c", "sleep 300 & sleep 300"], t.env(), t.workdir / "s.log")
        t.procs.append(worker)
        redis_pid, name = t.redis.proc.pid, t.db.name
    for pgid in (worker.pid, redis_pid):
        harness.wait_until(lambda: not live_members(pgid), 5, what=f"process group {pgid} to be gone")
    with harness.pg_admin() as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
