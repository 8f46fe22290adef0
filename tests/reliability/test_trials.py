"""Each trial, once per repetition (TRIAL_REPS, default 1): every invariant must hold.

Violations explained by a known, reported bug (invariants.KNOWN_BUGS) are kept apart so the trial
still catches anything else; each known bug has a strict-xfail test of its own below, which fails
the suite the day the bug is fixed, so that its entry gets removed.
"""

import os

import pytest

from tests.reliability import trials

OUTCOMES = {}  # (trial, rep) -> Outcome, so the known-bug tests reuse a trial already run


def slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def outcome_of(name, template, rep=0):
    if (name, rep) not in OUTCOMES:
        OUTCOMES[(name, rep)] = trials.run_one(name, template, rep)
    return OUTCOMES[(name, rep)]


def selected():
    """The normal test run takes the quick trial of each fault once; TRIAL_REPS or TRIAL_ALL=1 take all."""
    every = os.environ.get("TRIAL_ALL") == "1" or os.environ.get("TRIAL_REPS")
    return [n for n, fn in trials.TRIALS.items() if every or fn.quick]


@pytest.mark.subprocess
@pytest.mark.parametrize("name", [pytest.param(n, id=slug(n)) for n in selected()])
def test_trial_holds_every_invariant(name, rep, trial_template):
    outcome = outcome_of(name, trial_template, rep)
    details = "\n".join(outcome.verdict.violations)
    metrics = {k: v for k, v in outcome.metrics.items() if k != "window_ms"}
    assert outcome.held, (f"{name} (rep {rep}): {len(outcome.verdict.violations)} violation(s)\n{details}\n"
                          f"metrics={metrics}\nnotes={outcome.notes}")


def anywhere(outcome, prefix):
    """Violations with this prefix, whether or not the checker files them under a known bug."""
    return [v for v in [*outcome.verdict.violations, *outcome.verdict.known] if v.startswith(prefix)]


@pytest.mark.subprocess
def test_the_history_row_of_a_run_that_died_accounts_for_what_it_did(trial_template):
    # Was a known bug: runs.abandon_stale_runs left an abandoned run's counts empty.
    outcome = outcome_of("command killed at the SMTP server's acceptance", trial_template)
    assert anywhere(outcome, "I4 abandoned run") == [] and anywhere(outcome, "I4 lost outcome") == []


@pytest.mark.subprocess
def test_an_email_retried_by_a_later_run_is_audited_under_the_run_that_sent_it(trial_template):
    # Was a known bug: the email (now emails.send_warning_email) was audited under the run that wrote the ledger row.
    outcome = outcome_of("SMTP 4xx for a while, then accepting; one recipient 5xx", trial_template)
    assert anywhere(outcome, "I4 emails: run") == []


@pytest.mark.subprocess
def test_a_run_finishes_after_a_redis_restart(trial_template):
    # Was a known bug: a worker that lost Redis cancelled its tasks in flight and acked them unfinished,
    # and the run waited for their outcomes until it was abandoned three hours later. (Now the run
    # finishes, with the watchdog's help where Celery loses a message in the outage.)
    outcome = outcome_of("Redis restarted in the middle of a run", trial_template)
    assert anywhere(outcome, "I2 stalled") == []


@pytest.mark.subprocess
def test_a_run_finishes_on_its_own_after_a_short_database_outage(trial_template):
    # Was a known bug: per-item tasks recorded a database outage as a failure and never retried it.
    outcome = outcome_of("PostgreSQL unavailable for a few seconds mid-run (worker)", trial_template)
    assert anywhere(outcome, "I2 stalled") == []
    assert anywhere(outcome, "I2 own claim") == []


@pytest.mark.subprocess
def test_the_cron_command_records_an_email_it_sent_just_before_the_database_went_away(trial_template):
    # Was inside the named window, but in 19 of 20 repetitions: with no retries, the command left the
    # accepted email `sending` and the next run sent it again after the lease. It now waits the
    # outage out with its claim and records the email.
    outcome = outcome_of("PostgreSQL unavailable for a few seconds mid-run (command)", trial_template)
    assert outcome.held and outcome.verdict.in_window == [], outcome.verdict.in_window
