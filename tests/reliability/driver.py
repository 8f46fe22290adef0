"""The Django side of a trial, run as a subprocess against the trial's own database.

    python -m tests.reliability.driver <action> '<json params>'

prints `RESULT <json>` on its last line. The trial (in the pytest process) never opens a Django
connection to the trial database itself, so pytest-django's test database is never touched.
"""

import json
import os
import sys
import time
from datetime import timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from checktick_app.surveys.models import (  # noqa: E402
    LegalHold, Organisation, OrganisationMembership, Survey, SurveyAccessToken, SurveyProgress, SurveyResponse,
)

ACTIONS = {}


def action(fn):
    ACTIONS[fn.__name__] = fn
    return fn


# Survey kinds a scenario is made of: (deletion date, soft-deleted at, hard-deletion date, held) from now.
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
KINDS = {
    # due now
    "soft_due": dict(deletion=-HOUR),
    "hard_due": dict(deletion=-31 * DAY, deleted=-HOUR - 30 * DAY, hard=-HOUR),
    "warn_7": dict(deletion=5 * DAY),  # the 7-day warning is due
    "warn_1": dict(deletion=2 * HOUR),  # the 1-day warning is due; must not be soft-deleted (never early)
    # not due: the never-early guards
    "soft_not_hard": dict(deletion=-2 * DAY, deleted=-2 * DAY, hard=28 * DAY),
    "future": dict(deletion=200 * DAY),
    "held_soft": dict(deletion=-HOUR, held=True),
    "held_hard": dict(deletion=-31 * DAY, deleted=-HOUR - 30 * DAY, hard=-HOUR, held=True),
    "held_warn": dict(deletion=5 * DAY, held=True),
}


@action
def seed(counts, admins_per_org=2, name_suffix="", no_email_owner=0, reject_domain=None, start=None):
    """A world of surveys of each kind; every survey has an owner, an org owner and `admins_per_org` admins."""
    User = get_user_model()
    now = timezone.now()
    run_tag = f"{os.getpid()}"
    with transaction.atomic():
        org_owner = User.objects.create_user(f"orgowner{run_tag}", f"orgowner{run_tag}@example.org")
        org = Organisation.objects.create(name="Trial Trust", owner=org_owner)
        admins = [User.objects.create_user(f"admin{i}x{run_tag}", f"admin{i}x{run_tag}@example.org")
                  for i in range(admins_per_org)]
        OrganisationMembership.objects.bulk_create([
            OrganisationMembership(organisation=org, user=a, role=OrganisationMembership.Role.ADMIN) for a in admins
        ])
        surveys, owners = [], []
        n = 0
        for kind, count in counts.items():
            spec = KINDS[kind]
            for i in range(count):
                n += 1
                email = "" if n <= no_email_owner else f"owner{n}x{run_tag}@example.org"
                owner = User(username=f"owner{n}x{run_tag}", email=email, is_active=True)
                owners.append(owner)
                deletion = now + spec["deletion"]
                surveys.append(Survey(
                    name=f"{kind} {i} Zürich–Ørsted{name_suffix}", owner=owner, organisation=org,
                    status=Survey.Status.CLOSED, retention_months=6, closed_at=deletion - 182 * DAY,
                    deletion_date=deletion,
                    deleted_at=now + spec["deleted"] if "deleted" in spec else None,
                    hard_deletion_date=now + spec["hard"] if "hard" in spec else None,
                ))
        User.objects.bulk_create(owners)
        owners = list(User.objects.filter(username__in=[o.username for o in owners]).order_by("id"))
        by_name = {o.username: o for o in owners}
        for s in surveys:
            s.owner = by_name[s.owner.username]
        Survey.objects.bulk_create(surveys)
        surveys = list(Survey.objects.filter(organisation=org).order_by("id"))
        holds = []
        for s in surveys:
            kind = s.name.split(" ", 1)[0]
            if KINDS[kind].get("held"):
                holds.append(LegalHold(survey=s, survey_name=s.name, reason="Litigation", authority="Trust legal",
                                       placed_at=now - DAY))
            SurveyResponse.objects.create(survey=s, answers={"q1": "confidential answer"})
            token = SurveyAccessToken.objects.create(survey=s, token=f"tok-{s.pk}-{run_tag}")
            if s.deleted_at is None:
                SurveyProgress.objects.create(survey=s, access_token=token, expires_at=now + 10 * DAY)
        LegalHold.objects.bulk_create(holds)
    recipients = [a.email for a in admins] + [org_owner.email]
    return {
        "seeded_at": now.isoformat(),
        "surveys": [
            {
                "id": s.pk, "kind": s.name.split(" ", 1)[0], "name": s.name,
                "deletion_date": s.deletion_date.isoformat(),
                "deleted_at": s.deleted_at.isoformat() if s.deleted_at else None,
                "hard_deletion_date": s.hard_deletion_date.isoformat() if s.hard_deletion_date else None,
                "held": bool(KINDS[s.name.split(" ", 1)[0]].get("held")),
                "recipients": sorted({e.lower() for e in [s.owner.email, *recipients] if e}),
                "recipients_without_address": 0 if s.owner.email else 1,
            }
            for s in surveys
        ],
    }


@action
def place_hold(survey_id, reason="Subpoena", authority="Court order"):
    """Place a hold through the service, and say what state the survey was in when the hold committed."""
    from checktick_app.surveys.services import place_legal_hold

    with transaction.atomic():
        survey = Survey.objects.filter(pk=survey_id).first()
        if survey is None:
            return {"survey_id": survey_id, "state": "missing", "hold_id": None}
        try:
            hold = place_legal_hold(survey, reason=reason, authority=authority)
        except Survey.DoesNotExist:
            return {"survey_id": survey_id, "state": "missing", "hold_id": None}
        # Still inside the transaction that holds the survey's row lock: this is the state the hold froze.
        survey = Survey.objects.get(pk=survey_id)
        state = "soft_deleted" if survey.deleted_at else "live"
    return {"survey_id": survey_id, "state": state, "hold_id": hold.pk, "placed_at": hold.placed_at.isoformat(),
            "committed_at": timezone.now().isoformat()}


@action
def place_holds_on_signal(survey_ids, trigger, race_next=0, timeout=120):
    """Django set up, wait for the trigger file, then place each hold at once (in parallel threads)."""
    import threading
    from pathlib import Path

    print("WAITING", flush=True)
    deadline = time.monotonic() + timeout
    while not Path(trigger).exists():
        if time.monotonic() > deadline:
            raise SystemExit("trigger never came")
        time.sleep(0.002)
    if race_next:
        # The surveys the run is about to take (or is taking): smallest ids still due for soft deletion.
        survey_ids = list(survey_ids) + list(
            Survey.objects.filter(deleted_at__isnull=True, deletion_date__lte=timezone.now())
            .order_by("pk").values_list("pk", flat=True)[:race_next])
    holds = []

    def one(sid):
        try:
            holds.append(place_hold(sid))
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(sid,)) for sid in survey_ids]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return {"holds": holds}


@action
def enqueue_run(job="data_governance", trigger="admin", dry_run=False, username=None, age_heartbeats=0,
                age_claims=0):
    """dispatch.enqueue_run as the admin's Run now calls it (optionally after ageing heartbeats/claims)."""
    from checktick_app.governance import dispatch

    if age_heartbeats:
        globals()["age_heartbeats"](minutes=age_heartbeats)
    if age_claims:
        globals()["age_claims"](minutes=age_claims)
    user = None
    if username:
        User = get_user_model()
        user, _ = User.objects.get_or_create(username=username, defaults={"email": f"{username}@example.org",
                                                                          "is_staff": True, "is_superuser": True})
    try:
        result = dispatch.enqueue_run(job, trigger=trigger, user=user, dry_run=dry_run)
    except Exception as exc:  # noqa: BLE001 - the refusal message is what the trial asserts on
        return {"refused": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"refused": False, "result": repr(result), "run_id": getattr(result, "pk", None) or _run_id_of(result)}


def _run_id_of(result):
    for attr in ("run_id", "id"):
        value = getattr(result, attr, None)
        if isinstance(value, int):
            return value
    if isinstance(result, dict):
        return result.get("run_id")
    return None


@action
def send_task(name, args=(), kwargs=None, queue=None):
    """Send a task by name, as beat or the admin would (no worker code runs here)."""
    from celery_app import app

    options = {"queue": queue} if queue else {}
    result = app.send_task(name, args=list(args), kwargs=kwargs or {}, **options)
    return {"task_id": result.id}


@action
def age_claims(minutes):
    """Stand-in for the claim lease passing: move `sending` claims back by `minutes`."""
    from checktick_app.governance.models import DeletionWarning

    aged = DeletionWarning.objects.filter(status=DeletionWarning.Status.SENDING).update(
        claimed_at=timezone.now() - timedelta(minutes=minutes))
    return {"aged": aged}


@action
def age_heartbeats(minutes):
    """Stand-in for the stale-run period passing: move running runs' heartbeats back by `minutes`."""
    from checktick_app.governance.models import GovernanceRun

    aged = GovernanceRun.objects.filter(status=GovernanceRun.Status.RUNNING).update(
        heartbeat_at=timezone.now() - timedelta(minutes=minutes))
    return {"aged": aged}


@action
def delete_survey(survey_id):
    """A survey removed outright (an admin deleting it) while its work is queued."""
    with transaction.atomic():
        SurveyProgress.objects.filter(survey_id=survey_id).delete()
        SurveyAccessToken.objects.filter(survey_id=survey_id).delete()
        deleted, _ = Survey.objects.filter(pk=survey_id).delete()
    return {"deleted": deleted}


@action
def periodic_task(name, task, every_seconds, kwargs=None, queue=None):
    """A django-celery-beat entry firing every few seconds (stands in for tonight's 02:00)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    schedule, _ = IntervalSchedule.objects.get_or_create(every=every_seconds, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name=name).delete()
    pt = PeriodicTask.objects.create(name=name, task=task, interval=schedule, kwargs=json.dumps(kwargs or {}),
                                     queue=queue, enabled=True)
    return {"id": pt.pk}


@action
def disable_periodic_tasks():
    from django_celery_beat.models import PeriodicTask, PeriodicTasks

    n = PeriodicTask.objects.update(enabled=False)
    PeriodicTasks.update_changed()
    return {"disabled": n}


@action
def sql(statement, params=None):
    with connection.cursor() as cursor:
        cursor.execute(statement, params or [])
        rows = cursor.fetchall() if cursor.description else []
    return {"rows": [list(map(str, r)) for r in rows]}


def main():
    name = sys.argv[1]
    params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    started = time.monotonic()
    result = ACTIONS[name](**params)
    if isinstance(result, dict):
        result.setdefault("elapsed", round(time.monotonic() - started, 3))
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
