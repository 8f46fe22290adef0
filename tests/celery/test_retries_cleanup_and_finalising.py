"""Transient SMTP failures retried, permanent ones recorded; the cleanup in bounded slices; the sweep."""

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from checktick_app.governance import dispatch, engine, tasks
from checktick_app.governance.models import DeletionWarning, GovernanceRun, RunItem
from checktick_app.governance.runs import Job, Trigger, open_run
from checktick_app.surveys.models import SurveyProgress
from tests.celery.conftest import wait_for_run
from tests.support import wait_until
from tests.domain.helpers import run_command
from tests.factories import SurveyFactory, UserFactory, closed_survey, draft

Status = GovernanceRun.Status
Ledger = DeletionWarning.Status


@pytest.fixture
def quick_email_retries(monkeypatch):
    """The email retry policy's number of retries and its full jitter, with delays of at most 2 s.

    Production waits 30 s, 60 s, ... (engine.RETRY_POLICIES); a test cannot. Only the delays change.
    """
    retries = engine.DEFAULT_RETRY_POLICIES["smtp"].retries
    monkeypatch.setitem(engine.RETRY_POLICIES, "smtp", engine.RetryPolicy(first=2, longest=2, retries=retries))


@pytest.mark.django_db(transaction=True)
def test_a_refused_email_is_retried_until_the_server_takes_it_and_a_rejected_one_fails_at_once(
        quick_email_retries, worker, smtp_server):
    later = closed_survey(timezone.now() + timedelta(days=5), owner=UserFactory(email="later@example.org"))
    never = closed_survey(timezone.now() + timedelta(days=20), owner=UserFactory(email="never@example.org"))
    smtp_server.refuse["later@example.org"] = "451 4.3.0 Mailbox busy, try again later"
    smtp_server.refuse["never@example.org"] = "550 5.1.1 No such user"

    run = dispatch.enqueue_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
    wait_until(lambda: DeletionWarning.objects.filter(survey_id=later.pk, attempts__gte=1, last_error__contains="451")
               .exists(), 30, what="the first, refused attempt")
    del smtp_server.refuse["later@example.org"]  # the server recovers
    run = wait_for_run(run.pk)

    retried = DeletionWarning.objects.get(survey_id=later.pk)
    assert (retried.status, retried.attempts >= 2) == (Ledger.SENT, True)
    assert [m["To"] for m in smtp_server.to("later@example.org")] == ["later@example.org"]
    rejected = DeletionWarning.objects.get(survey_id=never.pk)
    assert (rejected.status, rejected.attempts) == (Ledger.FAILED, 1)  # 5xx: not retried
    assert "550" in rejected.last_error and smtp_server.to("never@example.org") == []
    # The run fails (R12) with the rejected email as its failed item, and counts the retried one as sent.
    assert run.status == Status.FAILED
    assert list(RunItem.objects.filter(run=run, outcome=RunItem.Outcome.FAILED).values_list("object_id", flat=True)) \
        == [rejected.pk]
    assert (run.counts["emails_sent"], run.counts["emails_failed"]) == (1, 1)


def test_transient_failures_are_retried_with_exponential_backoff_and_jitter_up_to_a_bound(settings):
    """One retry policy for both transports: the tasks leave the count to it (no Celery limit of their own)."""
    smtp, database = engine.DEFAULT_RETRY_POLICIES["smtp"], engine.DEFAULT_RETRY_POLICIES["database"]
    assert (smtp.first, smtp.longest, smtp.retries) == (30, settings.LONGEST_RETRY_DELAY_SECONDS, 5)
    assert (database.first, database.longest, database.retries) == (2, 60, 6)
    for attempt in range(smtp.retries):
        bound = min(smtp.longest, smtp.first * 2 ** attempt)
        delays = {smtp.delay(attempt) for _ in range(50)}
        assert all(0 <= d <= bound for d in delays) and len(delays) > 1  # full jitter, never past the bound
    assert tasks.execute_email_item.max_retries is None and tasks.execute_deletion_item.max_retries is None


@pytest.mark.django_db(transaction=True)
def test_the_cleanup_continues_in_re_enqueued_tasks_until_done_and_closes_its_one_run(worker):
    now = timezone.now()
    survey = SurveyFactory()
    for kind in ("user", "token", "session"):
        draft(survey, now - timedelta(days=40), kind=kind)
    fresh = draft(survey, now)

    # As beat sends it, with a batch of one and no time budget: every slice stops after one batch.
    result = tasks.clean_up_progress.apply_async(kwargs={"batch_size": 1, "time_budget": 0})
    run_id = result.get(timeout=30)["run_id"]
    run = wait_for_run(run_id)

    assert (run.status, run.trigger, run.job) == (Status.SUCCEEDED, Trigger.BEAT, Job.PROGRESS_CLEANUP)
    assert run.counts == {"found": 3, "deleted": 3, "deleted_user": 1, "deleted_token": 1, "deleted_session": 1,
                          "complete": True, "failed_items": 0}
    assert RunItem.objects.filter(run=run, kind="cleanup_batch").count() == 3  # three slices, one run
    assert GovernanceRun.objects.count() == 1
    assert list(SurveyProgress.objects.all()) == [fresh]


def settled_run_left_open(**fields):
    """A planned run whose last item was settled, and whose worker died before it could close the run."""
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, on_celery=True)
    GovernanceRun.objects.filter(pk=run.pk).update(planned_at=timezone.now(), **fields)
    RunItem.objects.create(run=run, kind=RunItem.Kind.WARNING, object_id=1, survey_id=1, survey_name="Audit",
                           date=timezone.now(), threshold_days=7, outcome=RunItem.Outcome.DONE)
    return run


@pytest.mark.django_db
def test_a_run_whose_last_item_settled_without_closing_it_is_closed_by_the_next_dispatch():
    lost = settled_run_left_open()

    result = run_command("process_data_governance", "--async")  # the next dispatch closes finished runs first

    assert result.returncode == 0, result.error
    lost.refresh_from_db()
    assert (lost.status, lost.counts["emails_sent"], lost.counts["warnings_7d"]) == (Status.SUCCEEDED, 1, 1)
    assert GovernanceRun.objects.filter(status=Status.RUNNING).count() == 1  # the new run could open


# --- The watchdog: a run whose messages are gone ------------------------------------------------

def planned_run_whose_messages_were_lost(now):
    """The orchestrator saved its plan and enqueued its items; then Redis restarted without its data."""
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, on_celery=True, now=now)
    items = [item for chunk in engine.plan_run(run) for item in chunk]
    GovernanceRun.objects.filter(pk=run.pk).update(heartbeat_at=now - timedelta(minutes=21))  # nothing settled since
    return run, items


@pytest.mark.django_db(transaction=True)
def test_a_run_waiting_for_messages_lost_with_redis_is_resumed_by_the_watchdog_and_finishes(worker, smtp_server):
    now = timezone.now()
    gone = closed_survey(now - timedelta(days=1), owner=UserFactory(email="gone@example.org"))
    closed_survey(now + timedelta(days=7), owner=UserFactory(email="warned@example.org"))
    run, items = planned_run_whose_messages_were_lost(now)
    assert sorted(item.kind for item in items) == ["notice", "soft_delete", "warning"]

    result = tasks.watch_runs.apply_async().get(timeout=30)  # as beat sends it, every five minutes

    assert result["resumed"] == {str(run.pk): 3}
    run = wait_for_run(run.pk)
    assert (run.status, run.resumes) == (Status.SUCCEEDED, 1)
    assert (run.counts["soft_deleted"], run.counts["emails_sent"], run.counts["soft_deletion_notices_sent"]) == (1, 1, 1)
    assert len(smtp_server.to("warned@example.org")) == 1 and len(smtp_server.to("gone@example.org")) == 1
    gone.refresh_from_db()
    assert gone.deleted_at is not None


@pytest.mark.django_db
def test_the_watchdog_resumes_a_quiet_run_once_per_period_and_never_keeps_it_from_being_abandoned(redis_db,
                                                                                                  settings):
    settings.CHECKTICK_RUN_RESUME_AFTER_MINUTES = 20
    now = timezone.now()
    closed_survey(now - timedelta(days=1))
    run, _ = planned_run_whose_messages_were_lost(now)
    lively = now - timedelta(minutes=19)

    assert dispatch.resume_stalled_runs(now) == {run.pk: 2}
    assert len(redis_db.queued("deletion")) == 1  # the soft deletion, sent again (no worker reads it here)
    assert len(redis_db.queued("email")) == 1  # and its notice
    assert dispatch.resume_stalled_runs(now + timedelta(minutes=5)) == {}  # once per quiet period
    # Still queued 21 minutes later: the workers are down or behind, and another copy would not help.
    assert dispatch.resume_stalled_runs(now + timedelta(minutes=21)) == {}
    redis_db.client.delete(*redis_db.client.keys("*deletion*"), *redis_db.client.keys("*email*"))
    assert dispatch.resume_stalled_runs(now + timedelta(minutes=21)) == {run.pk: 2}  # ...lost with Redis: sent again
    run.refresh_from_db()
    assert (run.resumes, run.status, run.heartbeat_at < lively) == (2, Status.RUNNING, True)

    # A run that lands an outcome is not quiet: nothing to resume.
    GovernanceRun.objects.filter(pk=run.pk).update(heartbeat_at=now + timedelta(minutes=40))
    assert dispatch.resume_stalled_runs(now + timedelta(minutes=45)) == {}
    # One that never progresses is still abandoned after the stale period: resuming did not touch its heartbeat.
    GovernanceRun.objects.filter(pk=run.pk).update(heartbeat_at=now - timedelta(minutes=181))
    assert dispatch.watch_runs()["abandoned"] == 1
    run.refresh_from_db()
    assert run.status == Status.ABANDONED


@pytest.mark.django_db(transaction=True)
def test_a_message_of_a_run_that_is_over_does_nothing_and_leaves_the_work_to_the_next_run(worker):
    now = timezone.now()
    due = closed_survey(now - timedelta(days=1))
    over = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, now=now)
    item = next(i for chunk in engine.plan_run(over) for i in chunk if i.kind == RunItem.Kind.SOFT_DELETE)
    GovernanceRun.objects.filter(pk=over.pk).update(status=Status.ABANDONED, finished_at=now)

    outcome = tasks.execute_deletion_item.apply_async(kwargs={"item_id": item.pk}).get(timeout=30)

    assert outcome == "pending"  # not attempted: the abandoned run's record stays what it did
    due.refresh_from_db()
    assert due.deleted_at is None


@pytest.mark.django_db(transaction=True)
def test_an_email_task_that_lost_the_database_after_the_server_took_the_message_retries_without_resending(
        worker, smtp_server, monkeypatch):
    from checktick_app.governance import emails

    record_sent, attempts = emails._record_sent, []

    def database_drops_the_first_time(*args, **kwargs):
        attempts.append(args[0].pk)
        if len(attempts) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return record_sent(*args, **kwargs)

    monkeypatch.setattr(emails, "_record_sent", database_drops_the_first_time)
    closed_survey(timezone.now() + timedelta(days=7), owner=UserFactory(email="once@example.org"))

    run = wait_for_run(dispatch.enqueue_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN).pk)

    assert (run.status, run.counts["emails_sent"]) == (Status.SUCCEEDED, 1)
    assert len(attempts) == 2 and len(smtp_server.to("once@example.org")) == 1
    assert DeletionWarning.objects.get().status == Ledger.SENT


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_orchestrator_message_was_lost_is_planned_when_the_watchdog_resends_it(worker, smtp_server):
    now = timezone.now()
    closed_survey(now + timedelta(days=7), owner=UserFactory(email="warned@example.org"))
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, on_celery=True)  # its message never arrived
    GovernanceRun.objects.filter(pk=run.pk).update(heartbeat_at=now - timedelta(minutes=21))

    assert dispatch.resume_stalled_runs(now) == {run.pk: 1}

    run = wait_for_run(run.pk)
    assert (run.status, run.resumes, run.counts["emails_sent"]) == (Status.SUCCEEDED, 1, 1)
    assert len(smtp_server.to("warned@example.org")) == 1


@pytest.mark.django_db
def test_the_watchdog_leaves_an_inline_command_run_to_its_own_process(redis_db):
    now = timezone.now()
    inline = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)  # on_celery=False
    GovernanceRun.objects.filter(pk=inline.pk).update(heartbeat_at=now - timedelta(minutes=60))

    assert dispatch.resume_stalled_runs(now) == {}
    assert redis_db.queued("governance") == []


@pytest.mark.django_db
def test_the_watchdog_closes_a_run_whose_items_all_settled_and_only_such_a_run():
    run = settled_run_left_open()
    unplanned = open_run(Job.PROGRESS_CLEANUP, trigger=Trigger.ADMIN, on_celery=True)

    assert [r.pk for r in engine.finish_planned_runs()] == [run.pk]
    run.refresh_from_db()
    assert (run.status, run.counts["emails_sent"]) == (Status.SUCCEEDED, 1)
    assert engine.finish_planned_runs() == []  # closed once
    unplanned.refresh_from_db()
    assert unplanned.status == Status.RUNNING


@pytest.mark.django_db
def test_a_retry_holding_the_claim_of_an_accepted_email_records_it_even_after_its_run_closed(smtp_server):
    from tests.domain.test_r04_r06_warning_thresholds_and_ledger import pending_warning

    warning = pending_warning(timezone.now())
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, on_celery=True)
    # The delivery claimed the row, the SMTP server took the message, the database went away; meanwhile
    # another copy gave up on the row and the run closed.
    DeletionWarning.objects.filter(pk=warning.pk).update(status=Ledger.SENDING, claimed_at=timezone.now(),
                                                         claim_token="t0ken")
    GovernanceRun.objects.filter(pk=run.pk).update(status=Status.SUCCEEDED, finished_at=timezone.now())

    item = RunItem.objects.create(run=run, kind=RunItem.Kind.WARNING, object_id=warning.pk, survey_id=warning.survey_id,
                                  survey_name=warning.survey_name, date=warning.deletion_date, threshold_days=7)

    # Without the claim, a message of the closed run does nothing.
    assert engine.execute_item(item.pk) == RunItem.Outcome.PENDING
    assert engine.execute_item(item.pk, claim_token="t0ken", accepted=True) == RunItem.Outcome.DONE
    warning.refresh_from_db()
    assert warning.status == Ledger.SENT and smtp_server.messages == []  # recorded, not sent again
