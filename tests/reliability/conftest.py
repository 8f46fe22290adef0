"""Reliability trials: each starts real processes against its own Redis, PostgreSQL database and SMTP.

The repetition count comes from `--trial-reps N` or TRIAL_REPS (default 1 for the normal test run;
`make trials` runs 20). The trials use their own `trial_*` databases on the PostgreSQL server at
TRIAL_PG_URL whatever database pytest-django uses, so they run in both passes of `make test`.
"""

import os
import shutil

import psycopg
import pytest

from tests.reliability import harness


def pytest_addoption(parser):
    parser.addoption("--trial-reps", type=int, default=None,
                     help="Repetitions of each reliability trial (default: TRIAL_REPS or 1).")


def trial_reps(config):
    value = config.getoption("--trial-reps") or os.environ.get("TRIAL_REPS") or 1
    return max(1, int(value))


def pytest_generate_tests(metafunc):
    if "rep" in metafunc.fixturenames:
        metafunc.parametrize("rep", range(trial_reps(metafunc.config)), ids=lambda r: f"rep{r}")


def _missing_services():
    if not shutil.which("redis-server"):
        return "redis-server is not installed (apt-get install redis-server)"
    try:
        with psycopg.connect(harness.TRIAL_PG_URL, connect_timeout=3):
            pass
    except psycopg.Error as exc:
        return f"PostgreSQL for the trials is not reachable at TRIAL_PG_URL ({exc.__class__.__name__})"
    return None


@pytest.fixture(scope="session")
def trial_template():
    """The migrated template every trial database is copied from (and leftovers of dead runs dropped)."""
    missing = _missing_services()
    if missing:
        pytest.skip(f"reliability trials need real services: {missing}")
    harness.drop_leftover_databases()
    return harness.ensure_template()


@pytest.fixture
def trial(trial_template, request):
    """A fresh world for one trial: its own database, Redis and SMTP server; all stopped afterwards."""
    with harness.Trial(request.node.name[:40].replace("[", "-").replace("]", ""), template=trial_template) as t:
        yield t
        if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
            t.keep_workdir = True  # its process logs explain the failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """The call phase's report on the item, so the `trial` fixture keeps the logs of a failed test."""
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
