"""Each trial, once per repetition (TRIAL_REPS, default 1): every invariant must hold.

A trial that exposes a real, unfixed bug is listed in KNOWN_BUGS with the bug's description and is
an xfail(strict=True): it fails the suite the day the bug is fixed, so the mark gets removed.
"""

import pytest

from tests.reliability import trials

KNOWN_BUGS = {}


def slug(name):
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def params():
    return [pytest.param(name, id=slug(name),
                         marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else [])
            for name in trials.TRIALS]


@pytest.mark.subprocess
@pytest.mark.parametrize("name", params())
def test_trial_holds_every_invariant(name, rep, trial_template):
    outcome = trials.run_one(name, trial_template, rep)
    details = "\n".join(outcome.verdict.violations)
    assert outcome.held, f"{name} (rep {rep}): {len(outcome.verdict.violations)} violation(s)\n{details}\n" \
                         f"metrics={ {k: v for k, v in outcome.metrics.items() if k != 'window_ms'} }\nnotes={outcome.notes}"
