"""The commands' output (SPEC "Output of the commands") and their exit codes (R12 failed: 1, R18 in progress: 75,
bad flags or configuration: 2), seen through run_from_argv exactly as cron sees them."""

from datetime import timedelta

import pytest
import time_machine
from django.core.management import load_command_class

from checktick_app.governance import engine as governance_engine
from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.runs import open_run
from tests.domain.helpers import run_command_ok
from tests.factories import closed_survey

pytestmark = pytest.mark.django_db


def test_the_governance_command_prints_the_seed_example_with_real_counts(smtp_server, now):
    closed_survey(now + timedelta(days=30))
    closed_survey(now + timedelta(days=12))
    closed_survey(now + timedelta(days=3))
    closed_survey(now - timedelta(hours=5))

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance")

    lines = output.splitlines()
    expected = [
        "Starting data governance processing at 2026-01-05 02:00:00+00:00",
        "",
        "--- Deletion Warnings ---",
        "Sent 3 deletion warnings:",
        "  - 30-day warnings: 2",
        "  - 7-day warnings: 1",
        "  - 1-day warnings: 0",
        "  (3 emails sent, 0 failed, 0 recipients skipped without an address)",
        "",
        "--- Automatic Deletions ---",
        "Soft deleted: 1 surveys",
        "  (1 soft-deletion notices sent)",
        "Hard deleted: 0 surveys",
        "Skipped (legal hold): 0 surveys",
        "",
        "⚠️  1 surveys were deleted. Check audit logs for details.",
        "",
        "Data governance processing completed at 2026-01-05 02:00:00+00:00",
    ]
    assert lines == expected


# --- Exit codes, as the shell (cron) sees them ---------------------------------------------------

@pytest.fixture
def shell_exit(monkeypatch, capsys):
    """Run a command through run_from_argv, as manage.py does, and return (exit code, stdout, stderr)."""
    # run_from_argv closes every connection when it ends; the test's transaction must outlive it.
    monkeypatch.setattr("django.core.management.base.connections.close_all", lambda: None)

    def run(name, *args):
        command = load_command_class("checktick_app.governance", name)
        try:
            command.run_from_argv(["manage.py", name, "--skip-checks", *args])
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def test_a_clean_run_exits_0(shell_exit, smtp_server, now):
    closed_survey(now - timedelta(hours=1))
    with time_machine.travel(now, tick=False):
        code, out, _ = shell_exit("process_data_governance")
    assert code == 0 and "Soft deleted: 1 surveys" in out


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--no-such-flag"], ["--verbose", "--verbosity", "0"]],
                         ids=["zero-batch", "unknown-flag", "verbose-and-silent"])
def test_bad_flags_exit_2(shell_exit, args):
    code, _, err = shell_exit("process_data_governance", *args)
    assert code == 2 and err


def test_missing_configuration_exits_2_naming_the_variable(shell_exit, settings):
    settings.SITE_URL = ""
    code, _, err = shell_exit("process_data_governance")
    assert code == 2 and "SITE_URL" in err


def test_a_run_in_progress_exits_75_naming_it(shell_exit, now):
    running = open_run(GovernanceRun.Job.PROGRESS_CLEANUP, trigger=GovernanceRun.Trigger.COMMAND)
    code, _, err = shell_exit("cleanup_survey_progress")
    assert code == 75 and f"run #{running.pk} of progress cleanup" in err


def test_a_run_with_a_failed_item_exits_1(shell_exit, smtp_server, now, monkeypatch):
    failing = closed_survey(now - timedelta(hours=1))
    other = closed_survey(now - timedelta(hours=1))
    real = governance_engine.soft_delete_survey

    def fail_for_one(survey_id, **kwargs):
        if survey_id == failing.pk:
            raise RuntimeError("disk full while deleting drafts")
        return real(survey_id, **kwargs)

    monkeypatch.setattr(governance_engine, "soft_delete_survey", fail_for_one)
    with time_machine.travel(now, tick=False):
        code, out, err = shell_exit("process_data_governance")

    assert code == 1
    assert "Soft deleted: 1 surveys" in out
    assert f"FAILED soft_delete {failing.pk}: RuntimeError: disk full while deleting drafts" in err
    other.refresh_from_db()
    assert other.deleted_at == now
