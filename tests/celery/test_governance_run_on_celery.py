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
from checktick_app.governance.models import GovernanceRun, RunItem
from checktick_app.surveys.models import Survey, SurveyProgress, SurveyResponse
from checktick_app.surveys.services import place_legal_hold
from tests.celery.conftest import running_worker, wait_for_run
from tests.support import wait_until
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
    # Every item the orchestrator planned (5 warnings, the soft deletion, its notice, the hard deletion)
    # was done once, and nothing is left pending.
    items = RunItem.objects.filter(run=run)
    assert not items.filter(outcome=RunItem.Outcome.PENDING).exists()
    assert items.exclude(kind=RunItem.Kind.HELD).filter(outcome=RunItem.Outcome.DONE).count() == 5 + 1 + 1 + 1
    assert not Survey.objects.filter(pk=world["hard"].pk).exists()
    assert SurveyResponse.objects.filter(survey_id=world["hard"].pk).count() == 0
    soft = Survey.objects.get(pk=world["soft"].pk)
    assert soft.deleted_at is not None and SurveyProgress.objects.filter(survey=soft).count() == 0
    for role in ("held", "warn30", "warn7", "warn1", "nobody", "later"):
        assert Survey.objects.get(pk=world[role].pk).deleted_at is None, role
    assert run.details["soft_deleted"][0]["name"] == "Night Stroke audit"
    assert run.details["skipped_legal_hold"][0]["name"] == "Night Litigated audit"
    print(f"\nrun #{run.pk}: {len(smtp_server.messages)} emails, {run.counts['soft_deleted']} soft and "
          f"{run.counts['hard_deleted']} hard deletions, {items.count()} items, {elapsed:.2f} s end to end")


def test_dispatching_the_nightly_orchestrator_twice_for_one_day_yields_one_run(worker, smtp_server):
    seed_world("Twice", timezone.now())

    first = tasks.plan_governance_run.apply_async()
    second = tasks.plan_governance_run.apply_async()
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
        wait_until(lambda: GovernanceRun.objects.get(pk=run.pk).planned_at is not None, 30, what="the plan")
        # The soft deletion's notice is not among them: the deletion sends it once it is done, so the doubled
        # deletion message may send it twice as well.
        wait_until(lambda: len(redis_db.queued("deletion")) == 2 and len(redis_db.queued("email")) == 5, 30,
                   what="the orchestrator to enqueue 2 deletions and 5 warning emails")
    for queue in ("deletion", "email"):
        messages = redis_db.queued(queue)
        redis_db.push_again(queue, messages)  # the very same messages (same task ids), a second time
        assert len(redis_db.queued(queue)) == 2 * len(messages)
    for message in map(json.loads, redis_db.queued("email")):
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert (args, sorted(kwargs)) == ([], ["item_id"])  # an id only: no address, no name
        assert "@" not in message["headers"]["kwargsrepr"]

    with running_worker():
        run = wait_for_run(run.pk)

    assert run.status == Status.SUCCEEDED, run.error
    assert smtp_server.recipients == expected_recipients("Twin")  # each address once, the notice included
    assert {k: run.counts.get(k) for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert AuditEvent.objects.filter(survey_id=world["soft"].pk, action=Action.SOFT_DELETED).count() == 1
    assert AuditEvent.objects.filter(survey_id=world["hard"].pk, action=Action.HARD_DELETED).count() == 1
    assert AuditEvent.objects.filter(action=Action.WARNING_SENT).count() == 6
    assert not RunItem.objects.filter(run=run, outcome=RunItem.Outcome.PENDING).exists()


def test_a_deletion_or_email_sent_again_after_the_run_does_nothing_twice(worker, smtp_server):
    world = seed_world("Again", timezone.now())
    run = wait_for_run(dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND).pk)
    items = RunItem.objects.filter(run=run)
    soft = items.get(kind=RunItem.Kind.SOFT_DELETE, survey_id=world["soft"].pk)
    hard = items.get(kind=RunItem.Kind.HARD_DELETE, survey_id=world["hard"].pk)
    email = items.filter(kind=RunItem.Kind.WARNING, outcome=RunItem.Outcome.DONE).order_by("pk").first()
    mails, audits, settled = len(smtp_server.messages), AuditEvent.objects.count(), list(items.values())

    # Each item's message delivered again after the run closed: the item is settled, so nothing is done twice.
    assert [r.get(timeout=30) for r in (
        tasks.execute_deletion_item.apply_async(kwargs={"item_id": soft.pk}),
        tasks.execute_deletion_item.apply_async(kwargs={"item_id": hard.pk}),
        # The email task's result is not stored in production (ignore_result); here it is, to wait for it.
        tasks.execute_email_item.apply_async(kwargs={"item_id": email.pk}, ignore_result=False),
    )] == ["done", "done", "done"]
    assert len(smtp_server.messages) == mails
    assert AuditEvent.objects.count() == audits
    assert GovernanceRun.objects.get(pk=run.pk).counts == run.counts
    assert list(items.values()) == settled


def test_a_hold_placed_after_the_plan_makes_the_queued_deletion_a_recorded_no_op(transactional_db, redis_db,
                                                                                 smtp_server):
    world = seed_world("Hold", timezone.now())
    with running_worker(queues=["governance"]):
        run = dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND)
        wait_until(lambda: len(redis_db.queued("deletion")) == 2, 30, what="the deletions to be queued")
    # Between the plan and the deletion worker, a legal hold lands on the survey due for soft deletion.
    place_legal_hold(Survey.objects.get(pk=world["soft"].pk), reason="Subpoena", authority="Court")

    with running_worker():
        run = wait_for_run(run.pk)

    assert run.status == Status.SUCCEEDED, run.error
    assert Survey.objects.get(pk=world["soft"].pk).deleted_at is None
    item = RunItem.objects.get(run=run, kind="soft_delete", object_id=world["soft"].pk)
    assert (item.outcome, item.reason) == (RunItem.Outcome.SKIPPED, RunItem.ON_HOLD)
    notice = RunItem.objects.get(run=run, kind="notice", survey_id=world["soft"].pk)
    assert notice.outcome == RunItem.Outcome.SKIPPED  # planned with the deletion, never sent without it
    assert AuditEvent.objects.filter(run_id=run.pk, survey_id=world["soft"].pk,
                                     action=Action.SKIPPED_FOR_HOLD).count() == 1
    assert sorted(line["name"] for line in run.details["skipped_legal_hold"]) == ["Hold Litigated audit",
                                                                                   "Hold Stroke audit"]
    assert (run.counts["soft_deleted"], run.counts["soft_deletion_notices_sent"]) == (0, 0)
    assert "hold-stroke@example.org" not in smtp_server.recipients


def test_a_hard_deletion_warning_is_sent_through_the_email_queue_like_any_warning(worker, smtp_server):
    """R23 on Celery: lifting a hold from a soft-deleted survey past its hard deletion warns its owner of
    the new date, through an `email` task like every other email of the run."""
    from datetime import timedelta

    from checktick_app.surveys.services import remove_legal_hold
    from tests.factories import UserFactory, active_hold, soft_deleted_survey

    now = timezone.now()
    survey = soft_deleted_survey(now - timedelta(days=60), owner=UserFactory(email="released@example.org"))
    remove_legal_hold(active_hold(survey), reason="Case closed", now=now)

    run = wait_for_run(dispatch.enqueue_run("data_governance", trigger=GovernanceRun.Trigger.COMMAND).pk)

    assert run.status == Status.SUCCEEDED, run.error
    assert run.counts["hard_deletion_warnings_sent"] == 1
    assert [m["To"] for m in smtp_server.to("released@example.org")] == ["released@example.org"]
    assert Survey.objects.filter(pk=survey.pk).exists()  # warned, not deleted: the new date is a week out
