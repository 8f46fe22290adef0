"""Security checks: secrets stay out of logs and run rows, tasks carry ids only, and the governance
admin and Flower refuse whoever may not see them.

The secrets (SECRET_KEY, EMAIL_HOST_PASSWORD, the DATABASE_URL password) are given to every trial
process (harness.SECRETS); each check makes the code take the paths where they could leak (SMTP
refusals, authentication failures, an unreachable database, debug logging) and then searches every
byte of output and every text column of the run history, the ledger and the audit log.
"""

import base64
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.reliability import harness, trials

WORLD = {"soft_due": 2, "hard_due": 1, "warn_7": 2, "warn_1": 1, "held_soft": 1}


def leaked(text):
    return [s for s in harness.SECRETS if s in text]


def run_rows_text(db):
    """Every text a run leaves behind: run rows, item errors, ledger errors, audit details."""
    parts = []
    for sql in (
        "SELECT error, counts::text, details::text, triggered_by FROM governance_governancerun",
        "SELECT error FROM governance_runitem",
        "SELECT last_error, skip_reason, recipient_email FROM governance_deletionwarning",
        "SELECT details::text, actor FROM governance_auditevent",
    ):
        parts += [str(v) for row in db.query(sql) for v in row]
    return "\n".join(parts)


def test_the_trial_processes_really_hold_the_secrets_the_checks_look_for(trial):
    """Control: Django's own diffsettings prints them, so a clean search below means a real absence."""
    result = trial.manage("diffsettings", "--all")
    assert set(leaked(result.stdout)) >= {harness.TRIAL_SECRET_KEY, harness.TRIAL_SMTP_PASSWORD,
                                          harness.TRIAL_DB_PASSWORD}


def test_secrets_never_reach_command_output_or_run_rows_even_when_smtp_fails(trial):
    seed = trial.driver("seed", counts=WORLD)
    owner = next(s for s in seed["surveys"] if s["kind"] == "warn_7")["recipients"][-1]
    trial.mailbox.reject[owner] = "550 5.1.1 No such user"
    trial.mailbox.refuse_all_until = 1e12  # everyone else: 451 for the whole run
    # Every 451 retried through the SMTP retries (their waits scaled, trials.SMTP_RETRY_SCALE), then failed.
    result = trial.manage("process_data_governance", "--verbose", LOG_LEVEL="DEBUG",
                          TRIAL_SMTP_RETRY_SCALE=trials.SMTP_RETRY_SCALE)
    assert result.returncode == 1, result.stdout + result.stderr  # failed items: the run is marked failed
    output = result.stdout + result.stderr
    rows = run_rows_text(trial.db)
    assert "451" in rows and "550" in rows, "the refusals were recorded"
    assert leaked(output) == [] and leaked(rows) == []


def test_secrets_never_reach_output_when_smtp_authentication_is_refused(trial):
    trial.driver("seed", counts={"warn_7": 1})
    trial.mailbox.refuse_logins = True  # the server answers 535 to the login, whatever the password
    # A refused login is the mail server's failure, retried (its waits scaled, trials.SMTP_RETRY_SCALE).
    result = trial.manage("process_data_governance", LOG_LEVEL="DEBUG", EMAIL_HOST_USER="governance",
                          TRIAL_SMTP_RETRY_SCALE=trials.SMTP_RETRY_SCALE)
    output = result.stdout + result.stderr
    rows = run_rows_text(trial.db)
    assert trial.mailbox.logins >= 1 and "535" in rows, "the login attempt (with the password) was made and refused"
    assert leaked(output) == [] and leaked(rows) == []


def test_the_database_password_is_not_printed_when_the_database_is_unreachable(trial):
    missing = harness._db_url("trial_no_such_database", password=harness.TRIAL_DB_PASSWORD)
    for args in (["process_data_governance"], ["cleanup_survey_progress"], ["migrate", "--check"]):
        result = trial.manage(*args, DATABASE_URL=missing, LOG_LEVEL="DEBUG")
        assert result.returncode != 0
        assert "trial_no_such_database" in result.stderr, "the error names the database, not the password"
        assert leaked(result.stdout + result.stderr) == []


# --- with the Celery runtime (teammate B) -------------------------------------------------------------------


def decode_bodies(raw_messages):
    """Kombu's Redis messages are JSON envelopes with a base64 body: [args, kwargs, embed]."""
    bodies = []
    for raw in raw_messages:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        bodies.append({"task": envelope["headers"].get("task"), "argsrepr": envelope["headers"].get("argsrepr"),
                       "kwargsrepr": envelope["headers"].get("kwargsrepr"), "body": body})
    return bodies


def queued_messages(redis):
    """Every message waiting in any list of the trial's Redis (the queues), and those delivered but unacked."""
    raw = []
    for key in redis.command("KEYS", "*").split():
        kind = redis.command("TYPE", key).strip()
        if kind == "list":
            raw += [m for m in redis.command("LRANGE", key, "0", "-1").splitlines() if m.startswith("{")]
        elif kind == "hash" and key == "unacked":
            for line in redis.command("HVALS", key).splitlines():
                if line.startswith("["):
                    raw.append(json.dumps(json.loads(line)[0]))
    return decode_bodies(raw)


def test_task_messages_carry_ids_only_no_addresses_and_no_survey_names(trial):
    tasks = pytest.importorskip("checktick_app.governance.tasks", reason="the Celery tasks have not landed yet")

    seed = trial.driver("seed", counts=WORLD)
    names = [s["name"] for s in seed["surveys"]]
    # Only the orchestrator is consumed: everything it enqueues stays in Redis to be read.
    trial.start_worker(queues=[trials.QUEUE_GOVERNANCE], concurrency=1)
    trials.start_run(trial)
    harness.wait_until(lambda: len([m for m in queued_messages(trial.redis) if m["task"] != tasks.__name__ +
                                    ".run_data_governance"]) >= 2, 30, what="per-item tasks to be enqueued")
    messages = queued_messages(trial.redis)
    kinds = {m["task"].rsplit(".", 1)[-1] for m in messages}
    assert {"execute_email_item", "execute_deletion_item"} <= kinds, kinds
    for m in messages:
        assert json.loads(m["body"])[0] == [], f"positional arguments in {m}"
        assert set(json.loads(m["body"])[1]) <= {"item_id", "run_id", "dry_run", "batch_size", "continued"}, m
        text = json.dumps(m, ensure_ascii=False)
        assert "@" not in text, f"an address in a task message: {text}"
        assert not [n for n in names if n in text], f"a survey name in a task message: {text}"
        assert leaked(text) == []


# --- Flower (teammate C2's flowerconfig.py) -----------------------------------------------------------------

FLOWER_CREDENTIALS = "ops:trial-flower-Pw-93kd"


def flower_status(url, method="GET", credentials=None):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def start_flower(trial, **env):
    port = harness.free_port()
    args = [harness.CELERY, "-A", "celery_app", "flower", f"--port={port}", "--address=127.0.0.1"]
    env = {"FLOWER_BASIC_AUTH": None, "FLOWER_ALLOW_UNAUTHENTICATED": None, **env}
    proc = harness.Proc("flower", args, trial.env(**env), trial._log("flower"))
    trial.procs.append(proc)
    return proc, f"http://127.0.0.1:{port}"


def test_flower_refuses_to_start_without_credentials(trial):
    if not (harness.ROOT / "flowerconfig.py").exists():
        pytest.skip("Flower's configuration has not landed yet")
    proc, _ = start_flower(trial)
    harness.wait_until(lambda: not proc.alive(), 30, what="Flower to refuse to start")
    assert proc.popen.returncode != 0
    assert "Refusing to start Flower" in proc.output() and "FLOWER_BASIC_AUTH" in proc.output()


def test_flower_refuses_unauthenticated_reads_and_task_launches(trial):
    if not (harness.ROOT / "flowerconfig.py").exists():
        pytest.skip("Flower's configuration has not landed yet")
    proc, base = start_flower(trial, FLOWER_BASIC_AUTH=FLOWER_CREDENTIALS)
    harness.wait_until(lambda: flower_status(base + "/healthcheck") == 200 or not proc.alive(), 30,
                       what="Flower to answer")
    assert proc.alive(), proc.output()[-2000:]
    launch = base + "/api/task/async-apply/checktick_app.governance.tasks.run_data_governance"
    for path, method in (("/", "GET"), ("/tasks", "GET"), ("/api/tasks", "GET"), ("/api/workers", "GET"),
                         ("/broker", "GET"), ("/api/queues/length", "GET")):
        assert flower_status(base + path, method) == 401, path
        assert flower_status(base + path, method, "ops:wrong-password") == 401, path
    assert flower_status(launch, "POST") == 401, "an anonymous request must not start a governance run"
    assert flower_status(base + "/api/workers", credentials=FLOWER_CREDENTIALS) == 200
    assert trial.redis.command("LLEN", "governance").strip() in ("0", ""), "nothing was enqueued"
    proc.stop()
    assert leaked(proc.output()) == [] and "trial-flower-Pw-93kd" not in proc.output()


# --- the governance admin (teammate C1) ----------------------------------------------------------------------

def governance_admin_urls(ids):
    """Every admin URL of the governance app and of the survey retention forms, found in the URLconf,
    so that a view added later is covered without editing this test."""
    from django.contrib import admin
    from django.urls import URLPattern, URLResolver, reverse

    found = []

    def walk(patterns):
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns)
            elif isinstance(p, URLPattern) and p.name:
                if p.name.startswith("governance_") or p.name in (
                        "surveys_survey_extend", "surveys_survey_place_hold", "surveys_survey_remove_hold"):
                    found.append((p.name, p.pattern.converters))

    walk(admin.site.get_urls())
    urls = []
    for name, converters in found:
        args = []
        for key, converter in converters.items():
            args.append("data_governance" if key == "job" else
                        ids["survey"] if key == "survey_id" else ids.get(name.split("_")[1], ids["run"]))
        try:
            urls.append((name, reverse(f"admin:{name}", args=args)))
        except Exception:  # noqa: BLE001 - a pattern this test cannot fill in is listed, not skipped silently
            urls.append((name, None))
    return urls


@pytest.mark.django_db
def test_every_governance_admin_view_refuses_users_without_the_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    from checktick_app.audit.models import AuditEvent
    from checktick_app.governance.models import DeletionWarning, GovernanceRun
    from checktick_app.surveys.models import LegalHold
    from tests.factories import active_hold, closed_survey

    survey = closed_survey(timezone.now() + timedelta(days=3))
    active_hold(survey)
    run = GovernanceRun.objects.create(job="data_governance", trigger="command", status="succeeded",
                                     finished_at=timezone.now())
    warning = DeletionWarning.objects.create(survey_id=survey.pk, survey_name=survey.name,
                                             deletion_date=survey.deletion_date, threshold_days=7, recipient_id=1)
    audit = AuditEvent.objects.create(action="closed", survey_id=survey.pk)
    ids = {"survey": survey.pk, "run": run.pk, "governancerun": run.pk, "deletionwarning": warning.pk,
           "auditevent": audit.pk, "runitem": run.pk}
    urls = governance_admin_urls(ids)
    assert [n for n, u in urls if u is None] == []
    assert any("start" in n for n, _ in urls), "the Run now view is among them"
    staff = django_user_model.objects.create_user("staff-no-perm", "s@example.org", "x", is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="view_survey"))
    viewer = django_user_model.objects.create_user("viewer-only", "v@example.org", "x", is_staff=True)
    viewer.user_permissions.add(*Permission.objects.filter(codename__in=["view_governance", "view_survey"]))
    before = (GovernanceRun.objects.count(), LegalHold.objects.count(), AuditEvent.objects.count())

    for name, url in urls:
        client.logout()
        for method in ("get", "post"):
            response = getattr(client, method)(url)
            assert response.status_code == 302 and "/login/" in response["Location"], (name, method, "anonymous")
        client.force_login(staff)
        for method in ("get", "post"):
            assert getattr(client, method)(url).status_code in (403, 405), (name, method, "staff without permission")
    client.force_login(viewer)
    for name, url in urls:
        if "start" in name or name.startswith("surveys_survey_"):
            assert client.post(url, {"reason": "x", "authority": "y", "months": "1"}).status_code == 403, name
    assert (GovernanceRun.objects.count(), LegalHold.objects.count(), AuditEvent.objects.count()) == before


def test_secrets_never_reach_worker_logs_or_run_rows(trial):
    pytest.importorskip("checktick_app.governance.tasks", reason="the Celery tasks have not landed yet")

    seed = trial.driver("seed", counts=WORLD)
    trial.mailbox.reject[seed["surveys"][0]["recipients"][0]] = "550 5.1.1 No such user"
    worker = trials.start_worker(trial, LOG_LEVEL="DEBUG", EMAIL_HOST_USER="")
    run_id = trials.start_run(trial)
    assert trials.wait_run(trial, run_id) in ("succeeded", "failed")
    worker.stop()
    output = worker.output()
    assert "Task checktick_app.governance.tasks.execute_email_item" in output, "the log is the worker's"
    assert leaked(output) == [] and leaked(run_rows_text(trial.db)) == []
    assert "@example.org" not in "\n".join(line for line in output.splitlines() if "received" in line)


# --- django-celery-beat's schedule admin (issue 13, point 2) ----------------------------------------------

BEAT_CHANGELIST = "/admin/django_celery_beat/periodictask/"
GOVERNANCE_TASK = "checktick_app.governance.tasks.run_data_governance"


@pytest.fixture
def test_broker():
    """The Celery app publishes to the test Redis under a key prefix of this test's own; yields the
    messages waiting in a queue, decoded, so a test sees what the admin really sent."""
    import os
    import uuid

    import redis

    from celery_app import app
    from tests.celery.conftest import TEST_REDIS_URL, reset_broker_connections

    prefix = f"checktick-security-{os.getpid()}-{uuid.uuid4().hex[:8]}:"
    saved = {key: app.conf[key] for key in ("broker_url", "broker_transport_options")}
    app.conf.update(broker_url=TEST_REDIS_URL,
                    broker_transport_options={**app.conf.broker_transport_options, "global_keyprefix": prefix})
    reset_broker_connections()
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)

    def waiting(queue="governance"):
        raw = [m.decode() for m in client.lrange(prefix + queue, 0, -1)]
        return [{**m, "kwargs": json.loads(m["body"])[1]} for m in decode_bodies(raw)]

    yield waiting
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    app.conf.update(**saved)
    reset_broker_connections()


def beat_action(client, action, tasks):
    return client.post(BEAT_CHANGELIST, {"action": action, "_selected_action": [t.pk for t in tasks]})


def schedules():
    from django_celery_beat.models import PeriodicTask

    return list(PeriodicTask.objects.order_by("pk").values("pk", "enabled", "kwargs", "crontab_id"))


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize("action", ["enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks"])
def test_beat_admin_actions_are_refused_to_a_user_who_may_only_view_schedules(client, test_broker, action,
                                                                              django_capture_on_commit_callbacks):
    from django_celery_beat.models import PeriodicTask

    from checktick_app.audit.models import AuditEvent
    from checktick_app.governance.models import GovernanceRun
    from tests.admin.conftest import make_user

    viewer = make_user("schedule-viewer", permissions=["django_celery_beat.view_periodictask",
                                                       "governance.view_governance", "governance.run_governance"])
    PeriodicTask.objects.filter(task=GOVERNANCE_TASK).update(enabled=False)  # so enabling would change it too
    before = schedules()
    client.force_login(viewer)

    with django_capture_on_commit_callbacks(execute=True):
        response = beat_action(client, action, PeriodicTask.objects.all())

    assert response.status_code in (200, 302, 403)
    assert schedules() == before
    assert not GovernanceRun.objects.exists() and not AuditEvent.objects.exists()
    assert test_broker("governance") == []


@pytest.mark.django_db
def test_running_a_governance_schedule_needs_the_run_permission(client, test_broker, django_capture_on_commit_callbacks):
    from django_celery_beat.models import PeriodicTask

    from checktick_app.governance.models import GovernanceRun
    from tests.admin.conftest import make_user

    editor = make_user("schedule-editor", permissions=["django_celery_beat.view_periodictask",
                                                       "django_celery_beat.change_periodictask"])
    client.force_login(editor)

    with django_capture_on_commit_callbacks(execute=True):
        response = beat_action(client, "run_tasks", PeriodicTask.objects.filter(task=GOVERNANCE_TASK))

    assert response.status_code == 302
    assert not GovernanceRun.objects.exists() and test_broker("governance") == []


@pytest.mark.django_db
def test_running_a_governance_schedule_from_the_beat_admin_is_a_run_now(client, operator_user, test_broker,
                                                                        django_capture_on_commit_callbacks):
    from django_celery_beat.models import PeriodicTask

    from checktick_app.governance.models import GovernanceRun

    client.force_login(operator_user)
    nightly = PeriodicTask.objects.filter(task=GOVERNANCE_TASK)

    with django_capture_on_commit_callbacks(execute=True):
        beat_action(client, "run_tasks", nightly)
    with django_capture_on_commit_callbacks(execute=True):
        second = client.post(BEAT_CHANGELIST, {"action": "run_tasks", "_selected_action": [nightly.get().pk]},
                             follow=True)

    # One run: the second was refused, the first being still in progress; the refusal has its own row.
    run = GovernanceRun.objects.exclude(status=GovernanceRun.Status.REFUSED).get()
    assert (run.job, run.trigger, run.triggered_by, run.dry_run, run.scheduled_for) == (
        "data_governance", "admin", operator_user.username, False, None)
    refusal = GovernanceRun.objects.get(status=GovernanceRun.Status.REFUSED)
    assert (refusal.job, refusal.trigger, refusal.triggered_by, refusal.deferred_to_id) == (
        "data_governance", "admin", operator_user.username, run.pk)
    [message] = test_broker("governance")
    assert message["task"] == GOVERNANCE_TASK and message["kwargs"] == {"run_id": run.pk, "dry_run": False}
    notes = " ".join(str(m) for m in second.context["messages"])
    assert f"Not started: run #{run.pk} of data governance (" in notes
    assert f"by {operator_user.username}, started" in notes and "is still in progress" in notes


@pytest.fixture
def operator_user(db):
    from tests.admin.conftest import make_user

    return make_user("beat-operator", group=True)


def inline_management_form(crontab):
    """The read-only inline of the tasks using a crontab still posts its management form."""
    from django_celery_beat.models import PeriodicTask

    tasks = list(PeriodicTask.objects.filter(crontab=crontab).order_by("pk"))
    form = {"periodictask_set-TOTAL_FORMS": str(len(tasks)), "periodictask_set-INITIAL_FORMS": str(len(tasks))}
    for n, task in enumerate(tasks):
        form.update({f"periodictask_set-{n}-id": str(task.pk), f"periodictask_set-{n}-crontab": str(crontab.pk)})
    return form


@pytest.mark.django_db
def test_every_beat_schedule_change_is_audited_with_the_user(client, operator_user):
    from django.contrib.auth.models import Permission
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    from checktick_app.audit.models import AuditEvent

    operator_user.user_permissions.add(Permission.objects.get(codename="change_crontabschedule"))
    nightly = PeriodicTask.objects.get(task=GOVERNANCE_TASK)
    client.force_login(operator_user)

    beat_action(client, "disable_tasks", [nightly])
    beat_action(client, "toggle_tasks", [nightly])
    form = client.get(f"{BEAT_CHANGELIST}{nightly.pk}/change/").context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(regtask=GOVERNANCE_TASK, task="", kwargs='{"batch_size": 200}', args="[]",
                start_time_0="", start_time_1="", expires_0="", expires_1="")
    assert client.post(f"{BEAT_CHANGELIST}{nightly.pk}/change/", data).status_code == 302
    crontab = CrontabSchedule.objects.get(pk=nightly.crontab_id)
    crontab_form = {"minute": "30", "hour": "4", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*",
                    "timezone": "UTC", **inline_management_form(crontab)}
    response = client.post(f"/admin/django_celery_beat/crontabschedule/{crontab.pk}/change/", crontab_form)
    assert response.status_code == 302, response.context["inline_admin_formsets"][0].formset.errors

    events = list(AuditEvent.objects.filter(action="schedule_changed").order_by("id"))
    assert {(e.actor, e.actor_id) for e in events} == {(operator_user.username, operator_user.pk)}
    assert [e.details["fields"] for e in events] == [
        {"enabled": [True, False]},
        {"enabled": [False, True]},
        {"kwargs": ["{}", '{"batch_size": 200}']},
        {"minute": ["0", "30"], "hour": ["2", "4"]},
    ]
    assert all(e.details["periodic_task"] == nightly.name for e in events)


# --- production switches (issue 13, point 8) ----------------------------------------------------------------

def readme_production_environment():
    """The `sh` block of docs/deploying.md's "Production environment" section, as a dict (secrets filled in)."""
    import re
    import secrets

    text = (harness.ROOT / "docs" / "deploying.md").read_text()
    section = text.split("### Production environment", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)
    env = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    return {name: secrets.token_urlsafe(50) if value.startswith("<") else value for name, value in env.items()}


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path):
    import subprocess

    production = readme_production_environment()
    assert {"SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER",
            "SECURE_HSTS_SECONDS"} <= set(production)
    env = harness.base_env(f"sqlite:///{tmp_path / 'db.sqlite3'}", **production)
    result = subprocess.run([harness.PYTHON, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
                            cwd=harness.ROOT, env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_production_switches_come_from_the_environment_and_reach_the_responses(monkeypatch, settings):
    """The documented environment turns on secure cookies, HSTS and the proxy header; a request shows them,
    and an in-cluster probe over plain http is never redirected."""
    import runpy

    from django.test import Client

    for name, value in readme_production_environment().items():
        monkeypatch.setenv(name, value)
    loaded = runpy.run_path(str(harness.ROOT / "checktick_app" / "settings.py"))
    switches = ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
                "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER",
                "SECURE_REDIRECT_EXEMPT")
    assert [loaded[name] for name in switches[:-1]] == [True, True, True, 31536000, True, True,
                                                        ("HTTP_X_FORWARDED_PROTO", "https")]
    for name in switches:
        setattr(settings, name, loaded[name])

    plain = Client().get("/admin/login/")
    proxied = Client().get("/admin/login/", headers={"X-Forwarded-Proto": "https"})
    probe = Client().get("/health/live/")

    assert plain.status_code == 301 and plain["Location"].startswith("https://")
    assert proxied.status_code == 200 and proxied["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload")
    assert probe.status_code == 200, "an in-cluster probe over plain http is never redirected"


def test_a_proxy_header_that_is_not_a_header_name_is_refused(monkeypatch):
    import runpy

    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto: https")
    with pytest.raises(ImproperlyConfigured, match="SECURE_PROXY_SSL_HEADER='X-Forwarded-Proto: https' is not a header"):
        runpy.run_path(str(harness.ROOT / "checktick_app" / "settings.py"))


# --- fail closed on secrets (issue 13, point 7) ---------------------------------------------------------------

PLACEHOLDER_KEY = "REPLACE_ME_with_50_random_characters"  # ops/k8s/secret.example.yaml's


def process_output(args, env, cwd=harness.ROOT, timeout=45):
    """Run a process to its end; one still running after `timeout` seconds started (returncode None)."""
    import subprocess

    try:
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        return None, output


@pytest.mark.parametrize("key", [None, "", PLACEHOLDER_KEY, "insecure-development-key-set-SECRET_KEY-in-production"],
                         ids=["unset", "empty", "placeholder", "the-old-published-default"])
def test_every_process_refuses_to_start_without_a_real_secret_key_outside_debug(trial, key):
    port = harness.free_port()
    starts = {
        "command": [harness.PYTHON, "manage.py", "process_data_governance", "--dry-run"],
        "check": [harness.PYTHON, "manage.py", "check"],
        "web": [harness.ROOT / ".venv" / "bin" / "gunicorn", "checktick_app.wsgi", "--bind", f"127.0.0.1:{port}"],
        "worker": [harness.CELERY, "-A", "celery_app", "worker", "--pool", "solo"],
        "beat": [harness.CELERY, "-A", "celery_app", "beat"],
    }
    for name, args in starts.items():
        code, output = process_output([str(a) for a in args], trial.env(SECRET_KEY=key))
        assert code not in (None, 0), f"{name} started without a real SECRET_KEY:\n{output[-2000:]}"
        assert f"SECRET_KEY {'is not set' if not key else 'is a published development key'}" in output, name
        if key:
            assert key not in output, f"{name} printed the key"
    assert trial.manage("check", SECRET_KEY=None, DEBUG="true").returncode == 0, "DEBUG runs keep a local key"


FLOWER_REFUSALS = {
    "no-login-from-another-folder": ({}, "tmp", []),
    "no-login-with-another-conf": ({}, "root", ["--conf=EMPTY"]),
    "common-password": ({"FLOWER_BASIC_AUTH": "ops:password1"}, "root", []),
    "example-placeholder": ({"FLOWER_BASIC_AUTH": "ops:REPLACE_ME_with_a_long_password"}, "root", []),
    "white-space": ({"FLOWER_BASIC_AUTH": "ops: Trial-flower-9kd-x"}, "root", []),
}


@pytest.mark.parametrize("case", FLOWER_REFUSALS, ids=list(FLOWER_REFUSALS))
def test_flower_refuses_to_start_open_or_with_a_weak_login_from_anywhere(trial, tmp_path, case):
    env_extra, where, extra_args = FLOWER_REFUSALS[case]
    (tmp_path / "empty.py").write_text("# a configuration file without the project's check\n")
    args = [harness.CELERY, "-A", "celery_app", "flower", f"--port={harness.free_port()}", "--address=127.0.0.1",
            *[a.replace("EMPTY", str(tmp_path / "empty.py")) for a in extra_args]]
    env = trial.env(**{"FLOWER_BASIC_AUTH": None, "FLOWER_ALLOW_UNAUTHENTICATED": None, **env_extra})
    code, output = process_output([str(a) for a in args], env, cwd=tmp_path if where == "tmp" else harness.ROOT,
                                  timeout=30)

    assert code == 2, f"Flower did not refuse ({code}):\n{output[-2000:]}"
    assert "Refusing to start Flower" in output and "FLOWER_BASIC_AUTH" in output
    assert "password1" not in output and "REPLACE_ME" not in output and "Trial-flower" not in output


# Built from parts, so that the page's own source excerpts (it quotes the lines around each frame) cannot
# be where a secret is found.
PAGE_SECRETS = {name: name + "-" + "pw-73hd" for name in ("broker", "ping", "db", "other", "env")}


def settings_with_secret_urls(settings):
    settings.DEBUG = True
    broker = "redis://:" + PAGE_SECRETS["broker"] + "@redis.internal:6379/0"
    settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = settings.REDIS_URL = broker
    settings.GOVERNANCE_PING_URL = "https://hc-ping.com/" + PAGE_SECRETS["ping"] + "/checktick-{job}"
    settings.DATABASES["default"]["PASSWORD"] = PAGE_SECRETS["db"]
    settings.SOME_OTHER_URL = "postgres://reporting:" + PAGE_SECRETS["other"] + "@db.internal/r"


def request_from_runserver(rf):
    request = rf.get("/admin/")
    request.META["DATABASE_URL"] = "postgres://app:" + PAGE_SECRETS["env"] + "@db.internal/c"  # runserver copies the env
    return request


def a_view_that_fails():
    raise RuntimeError("boom")


def test_the_debug_500_page_never_shows_a_url_password_or_the_ping_key(settings, rf):
    import sys

    from django.views.debug import technical_500_response

    settings_with_secret_urls(settings)
    request = request_from_runserver(rf)
    try:
        a_view_that_fails()
    except RuntimeError:
        page = technical_500_response(request, *sys.exc_info()).content.decode()

    assert "redis.internal" in page and "db.internal" in page, "the page does list the settings and environment"
    assert [name for name, secret in PAGE_SECRETS.items() if secret in page] == []


# --- the evidence is append-only in the database (issue 13, point 5) --------------------------------------------

def refused(conn, sql):
    """True when PostgreSQL refuses the statement (a trigger's exception or a missing privilege)."""
    import psycopg

    try:
        with conn.transaction():
            conn.execute(sql)
        return False
    except (psycopg.errors.RaiseException, psycopg.errors.InsufficientPrivilege) as exc:
        return str(exc).split("\n")[0] or True


def test_holds_extensions_and_the_audit_log_refuse_deletion_and_change_whoever_connects(trial):
    """Connected as the owner (the server's superuser here): the triggers hold even where grants do not."""
    trial.driver("seed", counts={"held_soft": 1, "warn_7": 1})
    trial.manage("process_data_governance")  # audit rows
    hold_id = trial.db.scalar("SELECT id FROM surveys_legalhold WHERE removed_at IS NULL")
    survey_id = trial.db.scalar("SELECT survey_id FROM surveys_legalhold WHERE id = %s", [hold_id])
    with trial.db.connect() as conn:
        conn.execute("INSERT INTO surveys_retentionextension (survey_id, survey_name, extended_at, months_added, "
                     "reason, previous_deletion_date, new_deletion_date) "
                     f"VALUES ({survey_id}, 'x', now(), 1, 'Audit', now(), now() + interval '1 month')")
        assert conn.execute("SELECT count(*) FROM governance_auditevent").fetchone()[0] > 0

        for sql in (f"DELETE FROM surveys_legalhold WHERE id = {hold_id}",
                    "TRUNCATE surveys_legalhold",
                    f"UPDATE surveys_legalhold SET reason = 'rewritten' WHERE id = {hold_id}",
                    f"UPDATE surveys_legalhold SET survey_id = survey_id + 1000 WHERE id = {hold_id}",
                    "DELETE FROM surveys_retentionextension",
                    "TRUNCATE surveys_retentionextension",
                    "UPDATE surveys_retentionextension SET months_added = 12",
                    "TRUNCATE governance_auditevent",
                    "TRUNCATE governance_auditevent CASCADE"):
            assert refused(conn, sql), f"allowed: {sql}"

        # A hold ends once, by its removal; a removed hold stays removed as recorded.
        assert not refused(conn, f"UPDATE surveys_legalhold SET removed_at = now(), removal_reason = 'Court order "
                                 f"lifted' WHERE id = {hold_id}")
        for sql in (f"UPDATE surveys_legalhold SET removed_at = NULL WHERE id = {hold_id}",
                    f"UPDATE surveys_legalhold SET removal_reason = 'other' WHERE id = {hold_id}"):
            assert refused(conn, sql), f"allowed: {sql}"
    assert trial.db.scalar("SELECT count(*) FROM surveys_legalhold") >= 1


def test_the_models_refuse_to_delete_holds_and_extensions(db):
    from checktick_app.audit.models import AppendOnlyError
    from checktick_app.surveys.models import LegalHold, RetentionExtension

    with pytest.raises(AppendOnlyError):
        LegalHold.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        RetentionExtension.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        RetentionExtension.objects.update(months_added=1)
