"""`--async` and `--wait`: the commands' Celery path, and the same end state as the inline run."""

import re
import socket
from datetime import timedelta

import pytest
from django.utils import timezone

from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning, GovernanceRun, RunItem
from checktick_app.governance.runs import Job, Trigger, open_run
from checktick_app.surveys.models import Survey
from tests.celery.conftest import reset_broker_connections, wait_for_run
from tests.celery.world import end_state, expected_recipients, seed_world
from tests.domain.helpers import run_command, run_command_ok
from tests.factories import SurveyFactory, closed_survey, draft

Status = GovernanceRun.Status


def summary(output, prefix):
    """The command's summary with what must differ between two runs taken out (times, ids, world)."""
    lines = [line for line in output.splitlines() if not line.startswith(("Queued ", "Waiting for run"))]
    text = "\n".join(lines).replace(prefix, "<world>") if prefix else "\n".join(lines)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", "<time>", text)
    return re.sub(r"#\d+", "#<id>", text)


def delete_world(world):
    ids = [s.pk for s in world.values()]
    # Holds are never deleted (R24); those of the deleted surveys name no survey any more and change nothing.
    Survey.objects.filter(pk__in=ids).delete()


@pytest.mark.django_db(transaction=True)
def test_inline_command_and_celery_path_leave_the_same_end_state_and_print_the_same_summary(worker, smtp_server):
    now = timezone.now()
    inline = seed_world("Inline", now)
    inline_out = run_command_ok("process_data_governance", "--verbose")
    inline_state, inline_mail = end_state(inline, "Inline"), [r.replace("inline-", "") for r in smtp_server.recipients]
    delete_world(inline)  # the Celery run meets its own world only
    smtp_server.messages.clear()

    celery = seed_world("Celery", now)
    celery_out = run_command_ok("process_data_governance", "--async", "--wait", "--verbose")

    assert end_state(celery, "Celery") == inline_state
    assert [r.replace("celery-", "") for r in smtp_server.recipients] == inline_mail
    assert sorted(smtp_server.recipients) == expected_recipients("Celery")
    assert summary(celery_out, "Celery") == summary(inline_out, "Inline")
    assert re.search(r"^Queued data governance run #\d+ on Celery\.$", celery_out, re.M)
    runs = list(GovernanceRun.objects.order_by("pk"))
    assert [(r.trigger, r.status) for r in runs] == [(Trigger.COMMAND, Status.SUCCEEDED)] * 2
    assert runs[0].counts == runs[1].counts


@pytest.mark.django_db(transaction=True)
def test_async_prints_the_run_id_and_the_workers_do_the_run(worker, smtp_server):
    seed_world("Queued", timezone.now())

    out = run_command_ok("process_data_governance", "--async")

    run_id = int(re.fullmatch(r"Queued data governance run #(\d+) on Celery\.\n", out).group(1))
    run = wait_for_run(run_id)
    assert (run.status, run.trigger, run.counts["soft_deleted"]) == (Status.SUCCEEDED, Trigger.COMMAND, 1)
    assert sorted(smtp_server.recipients) == expected_recipients("Queued")


@pytest.mark.django_db(transaction=True)
def test_a_dry_run_on_celery_prints_what_the_inline_dry_run_prints_and_changes_nothing(worker, smtp_server):
    now = timezone.now()
    world = seed_world("Dry", now)
    inline_out = run_command_ok("process_data_governance", "--dry-run", "--verbose")

    celery_out = run_command_ok("process_data_governance", "--async", "--wait", "--dry-run", "--verbose")

    assert summary(celery_out, "Dry") == summary(inline_out, "Dry")
    assert "Would soft delete: 1 surveys" in celery_out
    assert smtp_server.messages == []
    assert Survey.objects.get(pk=world["soft"].pk).deleted_at is None
    # A preview plans what a run would do, and does none of it: no ledger row, no audit, no item left pending.
    assert not DeletionWarning.objects.exists() and not AuditEvent.objects.exists()
    assert not RunItem.objects.filter(outcome=RunItem.Outcome.PENDING).exists()


@pytest.mark.django_db(transaction=True)
def test_cleanup_async_wait_prints_the_inline_lines(worker):
    now = timezone.now()
    survey = SurveyFactory()
    for kind in ("user", "token", "session"):
        draft(survey, now - timedelta(days=45), kind=kind)
    fresh = draft(survey, now)

    out = run_command_ok("cleanup_survey_progress", "--async", "--wait", "--verbose")

    assert summary(out, "") == "\n".join([
        "Starting survey progress cleanup...",
        "Found 3 expired progress records (older than 30 days)",
        "  - user: 1", "  - token: 1", "  - session: 1",
        "Deleted 3 expired survey progress records",
        "Cleanup completed successfully",
    ])
    assert list(survey.progress.all()) == [fresh]


@pytest.mark.parametrize("args, message", [
    (["--wait"], "--wait only applies to --async"),
    (["--async", "--timeout", "5"], "--timeout only applies to --async --wait"),
    (["--async", "--wait", "--timeout", "0"], "--timeout 0 must be at least 1 second"),
    (["--async", "--verbose"], "--verbose lists the surveys of the summary"),
])
@pytest.mark.parametrize("command", ["process_data_governance", "cleanup_survey_progress"])
def test_conflicting_celery_flags_are_refused_with_a_clear_message(command, args, message):
    result = run_command(command, *args)
    assert result.returncode == 2 and message in str(result.error)


@pytest.mark.django_db
def test_async_is_refused_while_a_run_of_the_job_is_in_progress():
    running = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN)

    result = run_command("process_data_governance", "--async")

    assert result.returncode == 75 and f"run #{running.pk}" in str(result.error)
    assert GovernanceRun.objects.exclude(status=GovernanceRun.Status.REFUSED).get() == running
    assert GovernanceRun.objects.get(status=GovernanceRun.Status.REFUSED).deferred_to == running


@pytest.fixture
def broker_down():
    """The app's broker is a port where nothing listens: publishing really fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp = pytest.MonkeyPatch()
    mp.setenv("CELERY_BROKER_URL", f"redis://127.0.0.1:{port}/0")
    reset_broker_connections()
    try:
        yield
    finally:
        mp.undo()
        reset_broker_connections()


@pytest.mark.django_db(transaction=True)
def test_async_with_redis_unreachable_exits_2_and_closes_the_run_as_failed(broker_down):
    closed_survey(timezone.now() + timedelta(days=3))

    result = run_command("process_data_governance", "--async")

    assert result.returncode == 2, result.out + result.err
    assert "could not be queued" in str(result.error) and "REDIS_URL" in str(result.error)
    run = GovernanceRun.objects.get()
    assert run.status == Status.FAILED and "Not queued" in run.error
