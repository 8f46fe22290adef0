"""django-celery-beat's "Run selected tasks" on a governance job is a Run now (trigger "admin", never the
night's beat slot) and says what really happened: queued, or refused while a run is in progress (and the
refusal is in the run history)."""

import importlib
import json

import pytest
from django.apps import apps as django_apps
from django.utils.html import strip_tags
from django_celery_beat.models import PeriodicTask

from checktick_app.governance.models import GovernanceRun
from tests.admin.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)
CHANGELIST = "/admin/django_celery_beat/periodictask/"
GOVERNANCE_TASK = "checktick_app.governance.tasks.run_data_governance"
SCHEDULES = importlib.import_module("checktick_app.governance.migrations.0004_beat_schedules")


def run_selected(client, periodic):
    response = client.post(CHANGELIST, {"action": "run_tasks", "_selected_action": [periodic.pk]}, follow=True)
    return [(m.level_tag, strip_tags(str(m))) for m in response.context["messages"]]


def test_running_the_nightly_task_twice_queues_it_once_and_records_the_refusal(client, redis_db):
    operator = make_user("operator", group=True)
    operator.is_superuser = True  # the periodic-task admin is django-celery-beat's, with its own permissions
    operator.save()
    client.force_login(operator)
    SCHEDULES.create_schedules(django_apps, None)  # transactional tests flush the migration's rows
    periodic = PeriodicTask.objects.get(task=GOVERNANCE_TASK)

    first = run_selected(client, periodic)
    second = run_selected(client, periodic)

    running = GovernanceRun.objects.get(status=GovernanceRun.Status.RUNNING)
    assert (running.trigger, running.triggered_by, running.scheduled_for) == (
        GovernanceRun.Trigger.ADMIN, "operator", None)
    [(level, text)] = first
    assert level == "success" and f"queued as run #{running.pk}" in text
    queued = [json.loads(m) for m in redis_db.queued("governance")]
    assert len(queued) == 1 and f"'run_id': {running.pk}" in queued[0]["headers"]["kwargsrepr"]

    refusal = GovernanceRun.objects.get(status=GovernanceRun.Status.REFUSED)
    assert (refusal.deferred_to, refusal.triggered_by, refusal.trigger) == (running, "operator",
                                                                            GovernanceRun.Trigger.ADMIN)
    [(level, text)] = second
    assert level == "warning" and text.startswith("Not started") and f"run #{running.pk}" in text
    assert "successfully run" not in text
