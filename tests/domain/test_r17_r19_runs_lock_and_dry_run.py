"""R17 (every run leaves a history row), R18 (one run at a time; one beat run a day), R19 (dry run)."""

from datetime import date, timedelta

import pytest
import time_machine

from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning, GovernanceRun, RunItem
from checktick_app.governance.runs import RunRefused, abandon_stale_runs, close_run, open_run
from checktick_app.governance.services import run_data_governance
from checktick_app.surveys.models import Survey, SurveyProgress
from tests.domain.helpers import run_command, run_command_ok
from tests.factories import UserFactory, active_hold, closed_survey, draft, soft_deleted_survey

pytestmark = pytest.mark.django_db

Job, Trigger, RunStatus = GovernanceRun.Job, GovernanceRun.Trigger, GovernanceRun.Status


# --- R17 -----------------------------------------------------------------------------------------

def test_every_command_run_of_either_job_writes_a_history_row_with_trigger_mode_times_status_and_counts(
    smtp_server, now
):
    closed_survey(now + timedelta(days=7))
    closed_survey(now - timedelta(days=1))
    draft(closed_survey(now + timedelta(days=100)), now - timedelta(days=40))

    with time_machine.travel(now, tick=False):
        run_command_ok("process_data_governance", "--dry-run")
        run_command_ok("process_data_governance")
        run_command_ok("cleanup_survey_progress")

    dry, real, cleanup = GovernanceRun.objects.order_by("pk")
    assert (dry.job, dry.trigger, dry.dry_run, dry.status) == (Job.DATA_GOVERNANCE, Trigger.COMMAND, True,
                                                                RunStatus.SUCCEEDED)
    assert (real.job, real.trigger, real.dry_run, real.status) == (Job.DATA_GOVERNANCE, Trigger.COMMAND, False,
                                                                    RunStatus.SUCCEEDED)
    assert (cleanup.job, cleanup.dry_run, cleanup.status) == (Job.PROGRESS_CLEANUP, False, RunStatus.SUCCEEDED)
    for run in (dry, real, cleanup):
        assert run.started_at == now and run.finished_at == now
    assert dry.counts["warnings_7d"] == real.counts["warnings_7d"] == 1
    assert dry.counts["soft_deleted"] == real.counts["soft_deleted"] == 1
    assert real.counts["failed_items"] == 0 and real.counts["emails_sent"] == 1
    assert cleanup.counts["deleted"] == 1


def test_a_run_started_by_an_admin_records_who(smtp_server, now):
    admin = UserFactory(username="dpo")
    report = run_data_governance(now=now, trigger=Trigger.ADMIN, user=admin)
    run = GovernanceRun.objects.get(pk=report.run_id)
    assert (run.trigger, run.triggered_by_id, run.triggered_by) == (Trigger.ADMIN, admin.pk, "dpo")


def test_a_run_that_crashes_is_closed_as_failed_with_its_error(now, monkeypatch):
    from checktick_app.governance import engine

    def broken(*args, **kwargs):
        raise RuntimeError("warning step exploded")

    monkeypatch.setattr(engine, "_plan_warnings", broken)
    closed_survey(now + timedelta(days=7))
    with pytest.raises(RuntimeError):
        run_data_governance(now=now)
    run = GovernanceRun.objects.get()
    assert run.status == RunStatus.FAILED and "warning step exploded" in run.error and run.finished_at


# --- R18 -----------------------------------------------------------------------------------------

def test_a_second_run_is_refused_while_one_is_running_with_a_message_naming_it(smtp_server, now):
    due = closed_survey(now - timedelta(days=1))
    with time_machine.travel(now - timedelta(minutes=10), tick=False):
        running = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, user=UserFactory(username="dpo"))

    with time_machine.travel(now, tick=False):
        result = run_command("process_data_governance")

    assert result.returncode == 75
    assert f"run #{running.pk} of data governance (admin user by dpo, started 2026-01-05 01:50:00 UTC)" in str(
        result.error
    )
    due.refresh_from_db()
    assert due.deleted_at is None
    assert list(GovernanceRun.objects.exclude(status=RunStatus.REFUSED)) == [running]
    refusal = GovernanceRun.objects.get(status=RunStatus.REFUSED)  # the refusal is in the run history
    assert (refusal.deferred_to, refusal.trigger) == (running, Trigger.COMMAND)
    # The other job has its own lock.
    with time_machine.travel(now, tick=False):
        assert run_command("cleanup_survey_progress").returncode == 0


def test_a_stale_running_row_is_abandoned_after_the_stale_period_and_the_next_run_proceeds(smtp_server, now):
    with time_machine.travel(now - timedelta(minutes=181), tick=False):
        dead = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)

    with time_machine.travel(now, tick=False):
        run_command_ok("process_data_governance")

    dead.refresh_from_db()
    assert dead.status == RunStatus.ABANDONED and dead.finished_at == now
    assert "180 minutes" in dead.error
    assert GovernanceRun.objects.filter(status=RunStatus.SUCCEEDED).count() == 1


def test_an_abandoned_run_counts_what_its_items_say_it_did_before_it_died(now):
    Kind, Outcome = RunItem.Kind, RunItem.Outcome
    with time_machine.travel(now - timedelta(minutes=181), tick=False):
        dead = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
        other = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND)
        date = now + timedelta(days=7)
        for n, (kind, outcome, days) in enumerate((
                (Kind.SOFT_DELETE, Outcome.DONE, None), (Kind.SOFT_DELETE, Outcome.DONE, None),
                (Kind.HARD_DELETE, Outcome.DONE, None), (Kind.HARD_DELETE, Outcome.PENDING, None),
                (Kind.WARNING, Outcome.DONE, 7), (Kind.WARNING, Outcome.DONE, 30), (Kind.NOTICE, Outcome.DONE, 0),
                (Kind.WARNING, Outcome.FAILED, 1), (Kind.WARNING, Outcome.PENDING, 1))):
            RunItem.objects.create(run=dead, kind=kind, object_id=n, survey_id=n, survey_name=f"S{n}", date=date,
                                   threshold_days=days, outcome=outcome,
                                   error="550 5.1.1 No such user" if outcome == Outcome.FAILED else "")

    with time_machine.travel(now, tick=False):
        assert abandon_stale_runs(Job.DATA_GOVERNANCE) == 1

    dead.refresh_from_db()
    assert (dead.status, dead.finished_at) == (RunStatus.ABANDONED, now)
    assert {k: dead.counts[k] for k in ("soft_deleted", "hard_deleted", "emails_sent", "soft_deletion_notices_sent",
                                        "emails_failed", "failed_items", "pending_items")} == {
        "soft_deleted": 2, "hard_deleted": 1, "emails_sent": 2, "soft_deletion_notices_sent": 1,
        "emails_failed": 1, "failed_items": 1, "pending_items": 2}
    assert dead.details["failures"] == [{"kind": "warning", "id": 7, "error": "550 5.1.1 No such user"}]
    other.refresh_from_db()
    assert other.status == RunStatus.RUNNING  # each job is abandoned on its own


def test_a_running_row_within_the_stale_period_still_holds_the_lock(now, settings):
    settings.CHECKTICK_RUN_STALE_AFTER_MINUTES = 60
    with time_machine.travel(now - timedelta(minutes=59), tick=False):
        alive = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND)
    with time_machine.travel(now, tick=False):
        with pytest.raises(RunRefused) as refused:
            open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.COMMAND)
    assert refused.value.existing == alive
    alive.refresh_from_db()
    assert alive.status == RunStatus.RUNNING


def test_a_beat_run_is_unique_per_job_and_scheduled_day(now):
    day = date(2026, 1, 5)
    first = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=day)
    close_run(first, counts={})

    with pytest.raises(RunRefused, match=f"scheduled run for 2026-01-05 already happened: run #{first.pk}"):
        open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=day)

    # The next day, the other job, a dry run and a manual run are all still allowed.
    for kwargs in (
        {"job": Job.DATA_GOVERNANCE, "trigger": Trigger.BEAT, "scheduled_for": date(2026, 1, 6)},
        {"job": Job.PROGRESS_CLEANUP, "trigger": Trigger.BEAT, "scheduled_for": day},
        {"job": Job.DATA_GOVERNANCE, "trigger": Trigger.BEAT, "scheduled_for": day, "dry_run": True},
        {"job": Job.DATA_GOVERNANCE, "trigger": Trigger.COMMAND},
    ):
        job = kwargs.pop("job")
        close_run(open_run(job, **kwargs), counts={})
    assert GovernanceRun.objects.filter(trigger=Trigger.BEAT, dry_run=False, scheduled_for=day,
                                        job=Job.DATA_GOVERNANCE).exclude(status=RunStatus.REFUSED).count() == 1
    assert GovernanceRun.objects.get(status=RunStatus.REFUSED).deferred_to == first


# --- R19 -----------------------------------------------------------------------------------------

def snapshot():
    return (
        sorted(Survey.objects.values_list("pk", "deleted_at", "hard_deletion_date", "deletion_date")),
        SurveyProgress.objects.count(),
        DeletionWarning.objects.count(),
        AuditEvent.objects.count(),
    )


def test_dry_run_changes_nothing_sends_nothing_and_lists_what_a_real_run_would_do(smtp_server, now):
    warn30 = closed_survey(now + timedelta(days=25), name="Thirty")
    warn7 = closed_survey(now + timedelta(days=6), name="Seven")
    soft = closed_survey(now - timedelta(hours=3), name="Soft")
    draft(soft, now - timedelta(days=1))
    hard = soft_deleted_survey(now - timedelta(days=32), name="Hard")
    held = closed_survey(now - timedelta(days=2), name="Held")
    active_hold(held)
    before = snapshot()

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance", "--dry-run", "--verbose")

    assert snapshot() == before
    assert smtp_server.messages == []
    assert "Would send 2 deletion warnings:" in output
    assert "  - 30-day warnings: 1" in output and "  - 7-day warnings: 1" in output
    assert "(2 emails would be sent" in output
    assert "Would soft delete: 1 surveys" in output
    assert "Would hard delete: 1 surveys" in output
    assert "Skipped (legal hold): 1 surveys" in output
    assert "surveys were deleted" not in output
    assert f"- #{warn30.pk} Thirty (2026-01-30 02:00 UTC)" in output
    assert f"- #{warn7.pk} Seven (2026-01-11 02:00 UTC)" in output
    assert f"- #{soft.pk} Soft (2026-01-04 23:00 UTC)" in output
    assert f"- #{hard.pk} Hard (2026-01-03 02:00 UTC)" in output  # its hard-deletion date
    assert f"- #{held.pk} Held" in output
    run = GovernanceRun.objects.get()
    assert run.dry_run and run.details["hard_deleted"][0]["id"] == hard.pk

    # A real run then does exactly what the dry run announced.
    with time_machine.travel(now, tick=False):
        real = run_command_ok("process_data_governance")
    for line in ("Sent 2 deletion warnings:", "Soft deleted: 1 surveys", "Hard deleted: 1 surveys"):
        assert line in real


def test_dry_run_does_not_announce_warnings_that_were_already_sent(smtp_server, now):
    closed_survey(now + timedelta(days=6))
    run_data_governance(now=now)

    report = run_data_governance(now=now + timedelta(hours=1), dry_run=True)

    assert sum(len(v) for v in report.warned.values()) == 0 and report.emails_sent == 0


def test_dry_run_counts_the_soft_deletion_notices_the_real_run_then_sends(smtp_server, now):
    from tests.factories import MembershipFactory, OrganisationFactory

    organisation = OrganisationFactory(owner=UserFactory(email="org-owner@example.org"))
    MembershipFactory(organisation=organisation, user=UserFactory(email="admin@example.org"), role="admin")
    closed_survey(now - timedelta(hours=3), organisation=organisation, owner=UserFactory(email="owner@example.org"))
    closed_survey(now - timedelta(hours=2), owner=UserFactory(email=""))  # no address: no notice

    with time_machine.travel(now, tick=False):
        preview = run_command_ok("process_data_governance", "--dry-run")
        real = run_command_ok("process_data_governance")

    assert "Would soft delete: 2 surveys\n  (3 soft-deletion notices would be sent)" in preview
    assert "Soft deleted: 2 surveys\n  (3 soft-deletion notices sent)" in real
    dry_run, real_run = GovernanceRun.objects.order_by("pk")
    assert dry_run.counts["soft_deletion_notices_sent"] == real_run.counts["soft_deletion_notices_sent"] == 3
    assert sorted(r for m in smtp_server.messages for r in m[0]) == [
        "admin@example.org", "org-owner@example.org", "owner@example.org"]
    # The audit of each soft deletion says how many were told, "nobody" included.
    told = sorted(AuditEvent.objects.filter(action=AuditEvent.Action.SOFT_DELETED)
                  .values_list("details__notice_recipients", flat=True))
    assert told == [0, 3]


def test_without_verbose_the_survey_lines_are_not_listed(smtp_server, now):
    survey = closed_survey(now - timedelta(hours=3), name="Quiet")
    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance", "--dry-run")
    assert "Would soft delete: 1 surveys" in output
    assert f"#{survey.pk}" not in output
