"""The named at-least-once window (emails.py): a crash after the SMTP server accepted a warning and
before its ledger row says `sent` makes the email go again when the claim's lease runs out. These
tests keep that window as small as it can be: only the ledger UPDATE, the audit INSERT and the COMMIT,
not the SMTP goodbye. Measured from outside, by polling the ledger from the SMTP server's side.
"""

import statistics

import pytest

from tests.reliability import trials

QUIT_ROUND_TRIP = 0.2  # seconds: a distant SMTP server; were QUIT in the window, no window could be shorter


@pytest.mark.subprocess
@pytest.mark.parametrize("path", ["command", "worker"])
def test_the_at_least_once_window_holds_the_ledger_commit_and_not_the_smtp_goodbye(trial_template, path):
    windows, _ = trials.measure_window(trial_template, path, quit_delay=QUIT_ROUND_TRIP,
                                       counts={"warn_7": 5, "soft_due": 2})
    assert len(windows) == 4 * 7  # owner, org owner, two admins; every email measured
    assert statistics.median(windows) < QUIT_ROUND_TRIP * 1000 / 2, windows
