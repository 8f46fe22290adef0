"""A night's run through Redis and a real worker: what is due is warned and deleted, once.

Real Redis (CHECKTICK_TEST_REDIS_URL), a real in-process Celery worker, the real SMTP server of
tests/conftest.py. No mock stands in for any of them.
"""

import base64
import json
import time

import pytest
from django.utils import timezone

from checktick_app.governance import dispatch, tasks
from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning, GovernanceRun, RunItem
from checktick_app.surveys.models import Survey, SurveyProgress, SurveyResponse
from checktick_app.surveys.services import place_legal_hold
from tests.celery.conftest import running_worker, wait_for, wait_for_run
from tests.celery.world import EXPECTED_COUNTS, expected_recipients, seed_world

pytestmark = [pytest.mark.celery, pytest.mark.django_db(transaction=True)]

Status = GovernanceRun.Status
Action = AuditEvent.Action


def test_a_run_through_redis_and_a_worker_warns_and_deletes_exactly_what_is_due(worker, smtp_server):
    world = seed_world("Night", timezone.now())

    started = time.monotonic()
    run = dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND)
    run = wait_for_run(run.pk)
    elapsed = time.monotonic() - started

    assert run.status == Status.SUCCEEDED, run.error
    assert smtp_server.recipients == expected_recipients("Night")
    assert {k: run.counts.get(k) for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    # Every item the orchestrator planned (and the notice its soft deletion added) landed once.
    assert run.expected_items == RunItem.objects.filter(run=run).count() == 5 + 1 + 2
    assert not Survey.objects.filter(pk=world["hard"].pk).exists()
    assert SurveyResponse.objects.filter(survey_id=world["hard"].pk).count() == 0
    soft = Survey.objects.get(pk=world["soft"].pk)
    assert soft.deleted_at is not None and SurveyProgress.objects.filter(survey=soft).count() == 0
    for role in ("held", "warn30", "warn7", "warn1", "nobody", "later"):
        assert Survey.objects.get(pk=world[role].pk).deleted_at is None, role
    assert run.details["soft_deleted"][0]["name"] == "Night Stroke audit"
    assert run.details["skipped_legal_hold"][0]["name"] == "Night Litigated audit"
    print(f"\nrun #{run.pk}: {len(smtp_server.messages)} emails, {run.counts['soft_deleted']} soft and "
          f"{run.counts['hard_deleted']} hard deletions, {run.expected_items} items, {elapsed:.2f} s end to end")


def test_dispatching_the_nightly_orchestrator_twice_for_one_day_yields_one_run(worker, smtp_server):
    seed_world("Twice", timezone.now())

    first = tasks.run_data_governance.apply_async()
    second = tasks.run_data_governance.apply_async()
    results = [first.get(timeout=30), second.get(timeout=30)]

    runs = GovernanceRun.objects.filter(job=GovernanceRun.Job.DATA_GOVERNANCE).exclude(
        status=GovernanceRun.Status.REFUSED)
    assert runs.count() == 1
    run = wait_for_run(runs.get().pk)
    assert (run.trigger, run.scheduled_for) == (GovernanceRun.Trigger.BEAT, timezone.now().date())
    assert sorted("refused" in r for r in results) == [False, True]
    refusal = next(r["refused"] for r in results if "refused" in r)
    assert f"run #{run.pk}" in refusal
    recorded = GovernanceRun.objects.get(status=GovernanceRun.Status.REFUSED)  # in the run history, not only a log
    assert recorded.deferred_to == run and recorded.pk == next(
        r["recorded_as_run_id"] for r in results if "refused" in r)
    assert smtp_server.recipients == expected_recipients("Twice")


def test_every_item_message_delivered_twice_still_deletes_once_and_emails_once(transactional_db, redis_db,
                                                                                smtp_server):
    """Each deletion and email message is in Redis twice (as a redelivery leaves it): no second effect."""
    world = seed_world("Twin", timezone.now())
    with running_worker(queues=["governance"]):
        run = dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND)
        wait_for(lambda: GovernanceRun.objects.get(pk=run.pk).expected_items is not None, 30, "the plan")
        wait_for(lambda: len(redis_db.queued("deletion")) == 2 and len(redis_db.queued("email")) == 5, 30,
                 "the orchestrator to enqueue 2 deletions and 5 emails")
    for queue in ("deletion", "email"):
        messages = redis_db.queued(queue)
        redis_db.push_again(queue, messages)  # the very same messages (same task ids), a second time
        assert len(redis_db.queued(queue)) == 2 * len(messages)
    for message in map(json.loads, redis_db.queued("email")):
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert (args, sorted(kwargs)) == ([], ["run_id", "warning_id"])  # ids only: no address, no name
        assert "@" not in message["headers"]["kwargsrepr"]

    with running_worker():
        run = wait_for_run(run.pk)

    assert run.status == Status.SUCCEEDED, run.error
    assert smtp_server.recipients == expected_recipients("Twin")  # each address once, the notice included
    assert {k: run.counts.get(k) for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert AuditEvent.objects.filter(survey_id=world["soft"].pk, action=Action.SOFT_DELETED).count() == 1
    assert AuditEvent.objects.filter(survey_id=world["hard"].pk, action=Action.HARD_DELETED).count() == 1
    assert AuditEvent.objects.filter(action=Action.WARNING_SENT).count() == 6
    assert run.expected_items == RunItem.objects.filter(run=run).count()


def test_a_deletion_or_email_sent_again_after_the_run_does_nothing_twice(worker, smtp_server):
    world = seed_world("Again", timezone.now())
    run = wait_for_run(dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND).pk)
    sent = DeletionWarning.objects.filter(status=DeletionWarning.Status.SENT).order_by("pk").first()
    mails, audits = len(smtp_server.messages), AuditEvent.objects.count()

    def send_again(run_id):
        return [r.get(timeout=30) for r in (
            tasks.soft_delete_survey.apply_async(kwargs={"survey_id": world["soft"].pk, "run_id": run_id}),
            tasks.hard_delete_survey.apply_async(kwargs={"survey_id": world["hard"].pk, "run_id": run_id}),
            tasks.send_deletion_warning.apply_async(kwargs={"warning_id": sent.pk, "run_id": run_id}),
        )]

    # A message of the closed run is not even attempted; one outside any run meets each service's own guard.
    assert send_again(run.pk) == ["run_over", "run_over", "run_over"]
    assert send_again(None) == ["not_due", "missing", "not_claimed"]
    assert len(smtp_server.messages) == mails
    assert AuditEvent.objects.count() == audits
    assert GovernanceRun.objects.get(pk=run.pk).counts == run.counts
    assert RunItem.objects.filter(run=run).count() == run.expected_items


def test_a_hold_placed_after_the_plan_makes_the_queued_deletion_a_recorded_no_op(transactional_db, redis_db,
                                                                                 smtp_server):
    world = seed_world("Hold", timezone.now())
    with running_worker(queues=["governance"]):
        run = dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND)
        wait_for(lambda: len(redis_db.queued("deletion")) == 2, 30, "the deletions to be queued")
    # Between the plan and the deletion worker, a legal hold lands on the survey due for soft deletion.
    place_legal_hold(Survey.objects.get(pk=world["soft"].pk), reason="Subpoena", authority="Court")

    with running_worker():
        run = wait_for_run(run.pk)

    assert run.status == Status.SUCCEEDED, run.error
    assert Survey.objects.get(pk=world["soft"].pk).deleted_at is None
    item = RunItem.objects.get(run=run, kind="soft_delete", object_id=world["soft"].pk)
    assert item.outcome == RunItem.Outcome.NOOP
    assert AuditEvent.objects.filter(run_id=run.pk, survey_id=world["soft"].pk,
                                     action=Action.SKIPPED_FOR_HOLD).count() == 1
    assert sorted(line["name"] for line in run.details["skipped_legal_hold"]) == ["Hold Litigated audit",
                                                                                   "Hold Stroke audit"]
    assert (run.counts["soft_deleted"], run.counts["soft_deletion_notices_sent"]) == (0, 0)
    assert "hold-stroke@example.org" not in smtp_server.recipients
