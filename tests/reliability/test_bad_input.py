"""Bad input, one table: every case gets a clear message naming what is wrong, and leaves data intact.

Two kinds of case:
- `process`: a real `manage.py` or `celery` process with a bad flag or a bad environment, against a
  seeded trial database of this module's own. It must exit non-zero with a message naming the
  variable or flag, and the database's fingerprint (a digest of every governance-relevant table) must
  be the same afterwards.
- `django`: the model, service, form or admin path in this process (pytest-django's database). It
  must raise or return the message, and a snapshot of every governance-relevant row must be unchanged.

A case that exposes a real bug is marked `bug=` (an xfail(strict=True) naming file, line and fix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Callable

import pytest
from django.core.exceptions import ValidationError
from django.forms.models import model_to_dict
from django.utils import timezone

from tests.reliability import harness

# --- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "process" or "django"
    act: Callable
    expect: str
    bug: str | None = None
    also: tuple = field(default=())  # further substrings the message must contain
    code: int | None = None  # the exact exit status, when the case pins one
    one_line: bool = False  # the whole of stderr is one line (a configuration error, not a traceback)
    absent: tuple = field(default=())  # substrings the output must never contain (a secret)


def command(*args, **env):
    return lambda world: world.manage(*args, timeout=60, **env)


def governance(*args, **env):
    return command("process_data_governance", *args, **env)


def check(**env):
    return command("check", **env)


def worker(**env):
    return celery_process("worker", "--pool", "solo", "--loglevel", "INFO", **env)


def beat(**env):
    return celery_process("beat", "--loglevel", "INFO", **env)


def celery_process(*celery_args, **env):
    def act(world):
        args = [harness.CELERY, "-A", "celery_app", *celery_args]
        import subprocess

        try:
            return subprocess.run(args, cwd=harness.ROOT, env=world.env(**env), capture_output=True, text=True,
                                  timeout=45)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(args, 0, exc.stdout or "", "worker kept running: " + str(exc.stderr))
    return act


def configuration_error(id, act, expect, *also, absent=()):
    """A bad variable: exit 2 and one line naming it, from whichever process meets it (issue 13, point 9)."""
    return Case(id, "process", act, expect, also=also, code=2, one_line=True, absent=absent)


URL_SECRET = "hunter2-in-a-url"

SETTINGS_BUG = ("checktick_app/settings.py: {what}. The process dies with a bare {exc} traceback that does not name "
                "{var}; wrap it like the other variables (ImproperlyConfigured naming the variable).")

PROCESS_CASES = [
    # Command flags (both commands), run as real processes: exit code and message.
    Case("governance-batch-size-zero", "process", governance("--batch-size", "0"), "--batch-size 0 is out of range"),
    Case("governance-batch-size-huge", "process", governance("--batch-size", "10001"),
         "--batch-size 10001 is out of range"),
    Case("governance-batch-size-negative", "process", governance("--batch-size", "-5"),
         "--batch-size -5 is out of range"),
    Case("governance-batch-size-text", "process", governance("--batch-size", "lots"),
         "argument --batch-size: invalid int value: 'lots'"),
    Case("governance-verbose-and-silent", "process", governance("--verbose", "--verbosity", "0"),
         "--verbose and --verbosity 0 contradict each other"),
    Case("governance-unknown-flag", "process", governance("--dry-rn"), "unrecognized arguments: --dry-rn"),
    Case("cleanup-batch-size-zero", "process", command("cleanup_survey_progress", "--batch-size", "0"),
         "--batch-size 0 is out of range"),
    Case("cleanup-batch-size-text", "process", command("cleanup_survey_progress", "--batch-size", "1e3"),
         "invalid int value: '1e3'"),
    Case("cleanup-verbose-and-silent", "process", command("cleanup_survey_progress", "--verbose", "--verbosity", "0"),
         "--verbose and --verbosity 0 contradict each other"),
    # Settings: a bad environment stops the process with a message naming the variable.
    Case("database-url-bad-port", "process", check(DATABASE_URL="postgres://u@127.0.0.1:notaport/db"),
         "DATABASE_URL", also=("notaport",)),
    Case("database-url-not-a-url", "process", check(DATABASE_URL="not a url"), "DATABASE_URL",
         also=("not a supported database",)),
    Case("database-url-unknown-scheme", "process", check(DATABASE_URL="foo://user@host/db"), "DATABASE_URL",
         also=("scheme 'foo'",)),
    Case("database-unreachable", "process",
         governance(DATABASE_URL="postgres://postgres@127.0.0.1:5432/trial_no_such_database"), "DATABASE_URL",
         also=("does not exist",)),
    Case("conn-max-age-text", "process", check(CONN_MAX_AGE="forever"), "CONN_MAX_AGE",
         also=("is not a whole number",)),
    Case("redis-url-not-redis", "process", check(REDIS_URL="http://127.0.0.1:6379/0"), "REDIS_URL",
         also=("is not a Redis URL",)),
    Case("site-url-missing", "process", governance(SITE_URL=None), "SITE_URL is not set"),
    Case("site-url-localhost", "process", governance(SITE_URL="http://localhost:8000"), "SITE_URL",
         also=("points at this machine",)),
    Case("site-url-not-http", "process", governance(SITE_URL="ftp://checktick.example.org"), "SITE_URL",
         also=("is not an http(s) URL",)),
    Case("from-email-missing", "process", governance(DEFAULT_FROM_EMAIL=None), "DEFAULT_FROM_EMAIL is not set"),
    Case("email-host-missing", "process", governance(EMAIL_HOST=None), "EMAIL_HOST is not set"),
    Case("email-port-text", "process", governance(EMAIL_PORT="smtp"), "EMAIL_PORT='smtp' is not a whole number"),
    Case("email-tls-ambiguous", "process", governance(EMAIL_USE_TLS="perhaps"), "EMAIL_USE_TLS='perhaps' is ambiguous"),
    Case("debug-ambiguous", "process", check(DEBUG="maybe"), "DEBUG='maybe' is ambiguous"),
    Case("warning-days-text", "process", governance(CHECKTICK_WARNING_DAYS="thirty,seven"),
         "CHECKTICK_WARNING_DAYS='thirty,seven' must be a comma-separated list"),
    Case("warning-days-zero", "process", governance(CHECKTICK_WARNING_DAYS="30,0"), "CHECKTICK_WARNING_DAYS='30,0'"),
    Case("max-retention-over-ceiling", "process", governance(CHECKTICK_MAX_RETENTION_MONTHS="25"),
         "CHECKTICK_MAX_RETENTION_MONTHS=25 is out of range"),
    Case("default-retention-text", "process", governance(CHECKTICK_DEFAULT_RETENTION_MONTHS="six"),
         "CHECKTICK_DEFAULT_RETENTION_MONTHS='six' is not a whole number"),
    Case("grace-days-fraction", "process", governance(CHECKTICK_SOFT_DELETE_GRACE_DAYS="1.5"),
         "CHECKTICK_SOFT_DELETE_GRACE_DAYS='1.5' is not a whole number"),
    Case("claim-lease-zero", "process", governance(CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES="0"),
         "CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES=0 is out of range"),
    Case("run-stale-text", "process", governance(CHECKTICK_RUN_STALE_AFTER_MINUTES="3h"),
         "CHECKTICK_RUN_STALE_AFTER_MINUTES='3h' is not a whole number"),
    Case("claim-lease-below-retry-delay", "process", governance(CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES="10"),
         "CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES=10 is out of range"),
    Case("run-resume-below-retry-delay", "process", governance(CHECKTICK_RUN_RESUME_AFTER_MINUTES="5"),
         "CHECKTICK_RUN_RESUME_AFTER_MINUTES=5 is out of range"),
    Case("progress-expiry-negative", "process", command("cleanup_survey_progress", CHECKTICK_PROGRESS_EXPIRY_DAYS="-1"),
         "CHECKTICK_PROGRESS_EXPIRY_DAYS=-1 is out of range"),
    Case("worker-redis-url-not-redis", "process", worker(REDIS_URL="amqp://guest@127.0.0.1//"), "REDIS_URL",
         also=("is not a Redis URL",)),
    Case("worker-claim-lease-text", "process", worker(CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES="soon"),
         "CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES='soon' is not a whole number"),
    # Flags are matched exactly (point 11): a prefix of a real flag is not that flag.
    Case("governance-force-is-not-force-color", "process", governance("--force"), "unrecognized arguments: --force",
         code=2),
    Case("governance-dry-is-not-dry-run", "process", governance("--dry"), "unrecognized arguments: --dry", code=2),
    Case("cleanup-verb-is-not-verbose", "process", command("cleanup_survey_progress", "--verb"),
         "unrecognized arguments: --verb", code=2),
    Case("health-forc-is-not-force-color", "process", command("governance_health", "--forc"),
         "unrecognized arguments: --forc", code=2),
    # Every configuration error: exit 2, one line naming the variable (point 9), from commands, workers, beat.
    configuration_error("config-email-port-text", governance(EMAIL_PORT="smtp"), "EMAIL_PORT='smtp' is not a whole number"),
    configuration_error("config-redis-url-garbage", governance(REDIS_URL="garbage"), "REDIS_URL is not a Redis URL"),
    configuration_error("config-redis-url-password-never-printed", check(REDIS_URL=f"http://:{URL_SECRET}@h:6379/0"),
                        "REDIS_URL is not a Redis URL", absent=(URL_SECRET,)),
    configuration_error("config-redis-url-bad-port", check(REDIS_URL=f"redis://:{URL_SECRET}@h:port/0"),
                        "REDIS_URL has a port that is not a number", absent=(URL_SECRET,)),
    configuration_error("config-max-retention-out-of-range", governance(CHECKTICK_MAX_RETENTION_MONTHS="25"),
                        "CHECKTICK_MAX_RETENTION_MONTHS=25 is out of range"),
    configuration_error("config-email-backend-unknown", governance(EMAIL_BACKEND="no.such.Backend"),
                        "EMAIL_BACKEND='no.such.Backend' is not an email backend"),
    configuration_error("config-log-level-loud", check(LOG_LEVEL="LOUD"), "LOG_LEVEL='LOUD' is not a log level"),
    configuration_error("config-database-url-scheme", check(DATABASE_URL="foo://user@host/db"), "DATABASE_URL"),
    configuration_error("config-site-url-missing", governance(SITE_URL=None), "SITE_URL is not set"),
    configuration_error("config-cleanup-expiry-negative",
                        command("cleanup_survey_progress", CHECKTICK_PROGRESS_EXPIRY_DAYS="-1"),
                        "CHECKTICK_PROGRESS_EXPIRY_DAYS=-1 is out of range"),
    configuration_error("config-worker-email-port-text", worker(EMAIL_PORT="smtp"), "EMAIL_PORT='smtp'"),
    configuration_error("config-worker-log-level-loud", worker(LOG_LEVEL="LOUD"), "LOG_LEVEL='LOUD'"),
    configuration_error("config-beat-warning-days-zero", beat(CHECKTICK_WARNING_DAYS="30,0"),
                        "CHECKTICK_WARNING_DAYS='30,0'"),
    configuration_error("config-beat-redis-url-garbage", beat(REDIS_URL=f"garbage:{URL_SECRET}"),
                        "REDIS_URL is not a Redis URL", absent=(URL_SECRET,)),
    # Refused settings (point 10).
    configuration_error("stale-days-below-expiry-days", command("cleanup_survey_progress",
                                                                CHECKTICK_PROGRESS_STALE_DAYS="10"),
                        "CHECKTICK_PROGRESS_STALE_DAYS=10 is below CHECKTICK_PROGRESS_EXPIRY_DAYS=30"),
    configuration_error("site-url-loopback-127-0-0-2", governance(SITE_URL="https://127.0.0.2"), "SITE_URL",
                        "points at this machine"),
    configuration_error("site-url-loopback-ipv6", governance(SITE_URL="http://[::1]:8000"), "SITE_URL",
                        "points at this machine"),
    configuration_error("site-url-loopback-ipv4-mapped", governance(SITE_URL="https://[::ffff:127.0.0.1]/"),
                        "SITE_URL", "points at this machine"),
    configuration_error("site-url-localhost-subdomain", governance(SITE_URL="https://app.localhost"), "SITE_URL",
                        "points at this machine"),
    configuration_error("site-url-with-credentials", governance(SITE_URL=f"https://ops:{URL_SECRET}@checktick.example.org"),
                        "SITE_URL carries a user name or password", absent=(URL_SECRET,)),
    configuration_error("from-email-not-an-address", governance(DEFAULT_FROM_EMAIL="governance at example"),
                        "DEFAULT_FROM_EMAIL='governance at example' is not an email address"),
]


# In-process cases: each gets the `cast` (a closed survey, a soft-deleted one, a held one) and returns
# the message it produced, or raises ValidationError (whose message is then what is checked).

def survey_fields(**overrides):
    def make(cast):
        base = dict(name="A survey", owner=cast.user, status="published", retention_months=6)
        return {**base, **overrides}
    return make


def survey_clean(**overrides):
    from checktick_app.surveys.models import Survey

    def act(cast):
        Survey(**survey_fields(**overrides)(cast)).full_clean()
    return act


def crontab_clean(**fields):
    def act(cast):
        from django_celery_beat.models import CrontabSchedule

        CrontabSchedule(**fields).full_clean()
    return act


def service(name, target, **kwargs):
    def act(cast):
        from checktick_app.surveys import services

        return getattr(services, name)(getattr(cast, target), **kwargs)
    return act


def admin_post(url_name, target, data, *, method="post"):
    """Submit an admin form as a superuser; the message is the page's text (errors are shown on the form)."""
    def act(cast):
        import html

        from django.test import Client
        from django.urls import reverse

        client = Client()
        client.force_login(cast.admin)
        args = [getattr(cast, target).pk] if target else []
        url = reverse(f"admin:{url_name}", args=args)
        payload = data(cast) if callable(data) else data
        response = getattr(client, method)(url, payload)
        return f"status={response.status_code} " + html.unescape(response.content.decode())
    return act


def survey_change_data(name):
    def data(cast):
        return {"name": name, "owner": cast.closed.owner_id or "", "organisation": "",
                "legal_holds-TOTAL_FORMS": "0", "legal_holds-INITIAL_FORMS": "0",
                "retention_extensions-TOTAL_FORMS": "0", "retention_extensions-INITIAL_FORMS": "0"}
    return data


def beat_schedule_saved_with(kwargs, args="[]", task="checktick_app.governance.tasks.run_data_governance"):
    """Save a governance schedule in django-celery-beat's admin with these arguments, as a superuser."""
    def act(cast):
        import html

        from django.test import Client
        from django_celery_beat.models import PeriodicTask

        schedule = PeriodicTask.objects.get(task=task)
        url = f"/admin/django_celery_beat/periodictask/{schedule.pk}/change/"
        client = Client()
        client.force_login(cast.admin)
        form = client.get(url).context["adminform"].form
        data = {name: value for name, value in form.initial.items() if value is not None}
        data.update(regtask=task, task="", kwargs=kwargs, args=args, start_time_0="", start_time_1="",
                    expires_0="", expires_1="")
        response = client.post(url, data)
        return f"status={response.status_code} " + html.unescape(response.content.decode())
    return act


def run_now(job, data):
    """The run history's Run now / Preview form, posted by a superuser with these values."""
    def act(cast):
        from django.test import Client

        client = Client()
        client.force_login(cast.admin)
        response = client.post(f"/admin/governance/governancerun/start/{job}/", data)
        return f"status={response.status_code} {response.content.decode()}"
    return act


CRONTAB = {"minute": "0", "hour": "2", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*",
           "timezone": "UTC"}

DJANGO_CASES = [
    Case("retention-zero", "django", survey_clean(retention_months=0), "Retention must be from 1 to 24 months"),
    Case("retention-25", "django", survey_clean(retention_months=25), "Retention must be from 1 to 24 months"),
    Case("survey-name-10000-characters", "django", survey_clean(name="x" * 10000),
         "Ensure this value has at most 255 characters (it has 10000)"),
    Case("extend-over-maximum", "django", service("extend_retention", "closed", months=19, reason="Audit"),
         "the maximum is 24"),
    Case("extend-zero-months", "django", service("extend_retention", "closed", months=0, reason="Audit"),
         "Extend by at least 1 whole month"),
    Case("extend-months-as-text", "django", service("extend_retention", "closed", months="3", reason="Audit"),
         "Extend by at least 1 whole month (got '3')"),
    Case("extend-without-reason", "django", service("extend_retention", "closed", months=3, reason="   "),
         "Give a reason"),
    Case("extend-soft-deleted", "django", service("extend_retention", "soft", months=3, reason="Audit"),
         "restore it (with an extension) instead"),
    Case("restore-live-survey", "django", service("restore_survey", "closed", months=3, reason="Audit"),
         "This survey is not soft-deleted"),
    Case("hold-without-reason", "django", service("place_legal_hold", "closed", reason="", authority="Court"),
         "Give a reason"),
    Case("hold-without-authority", "django", service("place_legal_hold", "closed", reason="Subpoena", authority=" "),
         "Give the authority that requires the hold"),
    Case("hold-removal-without-reason", "django", service("remove_legal_hold", "hold", reason=""), "Give a reason"),
    Case("crontab-minute-61", "django", crontab_clean(minute="61"), "'61', not in 0-59 for Minutes"),
    Case("crontab-hour-25", "django", crontab_clean(hour="25"), "'25', not in 0-23 for Hours"),
    Case("crontab-day-of-week-funday", "django", crontab_clean(day_of_week="funday"),
         "Unrecognised Day of Week: 'funday'"),
    Case("crontab-step-zero", "django", crontab_clean(minute="*/0"), "Sequence can not be divided by zero"),
    # The admin forms (teammate C1's survey admin, django-celery-beat's crontab admin), as a superuser.
    Case("admin-extend-zero-months", "django",
         admin_post("surveys_survey_extend", "closed", {"months": "0", "reason": "Audit"}),
         "Ensure this value is greater than or equal to 1."),
    Case("admin-extend-beyond-24-months", "django",
         admin_post("surveys_survey_extend", "closed", {"months": "19", "reason": "Audit"}), "the maximum is 24"),
    Case("admin-extend-months-not-a-number", "django",
         admin_post("surveys_survey_extend", "closed", {"months": "six", "reason": "Audit"}), "Enter a whole number."),
    Case("admin-extend-without-reason", "django",
         admin_post("surveys_survey_extend", "closed", {"months": "2", "reason": "  "}), "This field is required."),
    Case("admin-hold-without-reason", "django",
         admin_post("surveys_survey_place_hold", "closed", {"reason": "", "authority": "Court"}),
         "This field is required."),
    Case("admin-hold-without-authority", "django",
         admin_post("surveys_survey_place_hold", "closed", {"reason": "Subpoena", "authority": ""}),
         "This field is required."),
    Case("admin-hold-removal-without-reason", "django",
         admin_post("surveys_survey_remove_hold", "held", lambda cast: {"hold": cast.hold.pk, "reason": ""}),
         "This field is required."),
    Case("admin-survey-name-10000-characters", "django",
         admin_post("surveys_survey_change", "closed", survey_change_data("x" * 10000)),
         "Ensure this value has at most 255 characters (it has 10000)."),
    Case("admin-crontab-minute-61", "django",
         admin_post("django_celery_beat_crontabschedule_add", None, {**CRONTAB, "minute": "61"}),
         "'61', not in 0-59 for Minutes"),
    Case("admin-crontab-garbage-day-of-week", "django",
         admin_post("django_celery_beat_crontabschedule_add", None, {**CRONTAB, "day_of_week": "mon-funday"}),
         "Unrecognised Day of Week"),
    # The arguments of the governance schedules (issue 13, point 2): dry_run a boolean, batch_size 1..10000,
    # nothing else, no positional arguments.
    Case("beat-kwargs-dry-run-as-text", "django", beat_schedule_saved_with('{"dry_run": "yes"}'),
         'dry_run must be true or false (got "yes")'),
    Case("beat-kwargs-dry-run-as-number", "django", beat_schedule_saved_with('{"dry_run": 0}'),
         "dry_run must be true or false (got 0)"),
    Case("beat-kwargs-batch-size-zero", "django", beat_schedule_saved_with('{"batch_size": 0}'),
         "batch_size must be a whole number from 1 to 10000 (got 0)"),
    Case("beat-kwargs-batch-size-text", "django", beat_schedule_saved_with('{"batch_size": "500"}'),
         'batch_size must be a whole number from 1 to 10000 (got "500")'),
    Case("beat-kwargs-run-id", "django", beat_schedule_saved_with('{"run_id": 7}'),
         "Unknown keyword argument(s) run_id for run_data_governance (allowed: batch_size, dry_run)"),
    Case("beat-kwargs-cleanup-unknown", "django",
         beat_schedule_saved_with('{"dry_run": false, "force": true}',
                                  task="checktick_app.governance.tasks.cleanup_survey_progress"),
         "Unknown keyword argument(s) force for cleanup_survey_progress"),
    Case("beat-kwargs-watchdog-takes-none", "django",
         beat_schedule_saved_with('{"now": "2030-01-01"}', task="checktick_app.governance.tasks.watch_runs"),
         "Unknown keyword argument(s) now for watch_runs (allowed: none)"),
    Case("beat-positional-arguments", "django", beat_schedule_saved_with("{}", args="[42]"),
         "Governance tasks take no positional arguments"),
    Case("beat-kwargs-not-an-object", "django", beat_schedule_saved_with("[true]"),
         "Keyword Arguments must be a JSON object"),
    # Point 12: dates past the calendar are a form error, not a 500; Run now takes only its own values.
    Case("admin-extend-survey-closed-in-year-9999", "django",
         admin_post("surveys_survey_extend", "far_future", {"months": "2", "reason": "Audit"}),
         "past the last date the calendar holds (31 December 9999)"),
    Case("extend-survey-closed-in-year-9999", "django", service("extend_retention", "far_future", months=2,
                                                                 reason="Audit"),
         "past the last date the calendar holds"),
    Case("run-now-dry-run-yes", "django", run_now("data_governance", {"dry_run": "yes"}),
         "status=400 dry_run must be 0 (Run now) or 1 (Preview)."),
    Case("run-now-dry-run-true", "django", run_now("progress_cleanup", {"dry_run": "true"}), "status=400"),
    Case("run-now-dry-run-empty", "django", run_now("data_governance", {"dry_run": ""}), "status=400"),
    Case("run-now-without-dry-run", "django", run_now("data_governance", {}), "status=400"),
    Case("admin-forecast-days-not-a-number", "django",
         admin_post("governance_governancerun_forecast", None, {"days": "many"}, method="get"),
         "is not a whole number of days"),
    Case("admin-forecast-days-out-of-range", "django",
         admin_post("governance_governancerun_forecast", None, {"days": "1000"}, method="get"),
         "Forecast from 1 to 365 days (got 1000)"),
]



# Bad data met by a real run (in this process, against a real SMTP server): the run names the problem
# and the surveys themselves are left as they were.

def run_governance(cast):
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    out, err = StringIO(), StringIO()
    try:
        call_command("process_data_governance", stdout=out, stderr=err)
    except CommandError as exc:
        err.write(f"CommandError: {exc}")
    return out.getvalue() + err.getvalue()


def survey_without_any_recipient(cast):
    from tests.factories import closed_survey

    closed_survey(timezone.now() + timedelta(days=5), owner=None, name="Orphaned audit")
    return run_governance(cast) + f" mails={len(cast.mailbox.messages)}"


def owner_without_email(cast):
    from checktick_app.governance.models import DeletionWarning
    from tests.factories import UserFactory, closed_survey

    survey = closed_survey(timezone.now() + timedelta(days=5), owner=UserFactory(email=""))
    output = run_governance(cast)
    row = DeletionWarning.objects.get(survey_id=survey.pk)
    return f"{output} ledger={row.status}:{row.skip_reason} mails={len(cast.mailbox.messages)}"


def survey_deleted_while_its_warning_is_queued(cast):
    from checktick_app.governance.models import DeletionWarning
    from checktick_app.governance.emails import recipients_for, send_warning_email, write_ledger_rows
    from checktick_app.surveys.models import Survey
    from tests.factories import closed_survey

    survey = closed_survey(timezone.now() + timedelta(days=5))
    row = {"pk": survey.pk, "name": survey.name, "deletion_date": survey.deletion_date}
    write_ledger_rows([row], 7, recipients_for([survey.pk]))
    warning = DeletionWarning.objects.get(survey_id=survey.pk)
    Survey.objects.filter(pk=survey.pk).delete()  # queued, then the survey went
    result = send_warning_email(warning.pk)
    warning.refresh_from_db()
    return f"{result.outcome.value} ledger={warning.status} mails={len(cast.mailbox.messages)}"


NON_ASCII_NAME = "Étude Ørsted – 日本語 ✓ <b>&amp;"


def non_ascii_name_in_the_email(cast):
    from tests.factories import closed_survey

    closed_survey(timezone.now() + timedelta(days=5), name=NON_ASCII_NAME)
    run_governance(cast)
    [message] = [m for _, m in cast.mailbox.messages]  # parsed with email.policy.default: headers decoded
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    escaped = "Étude Ørsted – 日本語 ✓ &lt;b&gt;&amp;amp;"
    # Django folds a long encoded Subject onto a continuation line; unfolding leaves one leading space.
    return (f"subject={str(message['Subject']).strip()} text_ok={NON_ASCII_NAME in text} "
            f"html_escaped={escaped in html} raw_html={'<b>&amp;' in html}")


def data_case(id, act, expect, *also, bug=None):
    return Case(id, "data", act, expect, bug=bug, also=also)


DATA_CASES = [
    data_case("survey-without-any-recipient", survey_without_any_recipient,
              "1 surveys due for a warning have no recipient at all", "mails=0"),
    data_case("owner-without-email", owner_without_email, "1 recipients skipped without an address",
              "ledger=skipped:no email address"),
    data_case("survey-deleted-while-its-warning-is-queued", survey_deleted_while_its_warning_is_queued,
              "no_longer_due", "ledger=pending", "mails=0"),
    data_case("non-ascii-survey-name-in-email", non_ascii_name_in_the_email, f"subject=[CheckTick] \"{NON_ASCII_NAME}\"",
              "text_ok=True", "html_escaped=True", "raw_html=False"),
]

CASES = PROCESS_CASES + DJANGO_CASES + DATA_CASES


def params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.bug)] if c.bug else [])
            for c in cases]


def test_the_bad_input_table_has_at_least_30_cases():
    assert len(CASES) >= 30, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)


# --- process cases ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(trial_template):
    """A seeded trial database with work due tonight: a command that wrongly ran would change it."""
    with harness.Trial("bad-input", template=trial_template) as t:
        t.driver("seed", counts={"soft_due": 1, "hard_due": 1, "warn_7": 1, "held_soft": 1})
        yield t


@pytest.mark.parametrize("case", params(PROCESS_CASES))
def test_bad_process_input_exits_non_zero_naming_the_problem_and_changes_nothing(world, case):
    before = world.fingerprint()
    result = case.act(world)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"exit 0 for {case.id}:\n{output[-2000:]}"
    if case.code is not None:
        assert result.returncode == case.code, f"exit {result.returncode} for {case.id}:\n{output[-2000:]}"
    if case.one_line:
        assert len(result.stderr.strip().splitlines()) == 1, f"not one line for {case.id}:\n{result.stderr[-2000:]}"
    for secret in case.absent:
        assert secret not in output, f"{case.id} printed a secret:\n{output[-2000:]}"
    # The message itself, not the source lines a traceback happens to quote.
    message = "\n".join(line for line in output.splitlines() if not line.startswith((" ", "Traceback")))
    for needle in (case.expect, *case.also):
        assert needle in message, f"{needle!r} not in the message of {case.id}:\n{output[-2000:]}"
    assert world.fingerprint() == before
    assert world.mailbox.count() == 0


# --- in-process cases ----------------------------------------------------------------------------


@dataclass
class Cast:
    user: object
    closed: object
    soft: object
    held: object
    hold: object
    admin: object = None
    mailbox: object = None
    far_future: object = None  # closed in year 9999: any extension runs past the calendar


@pytest.fixture
def cast(db, smtp_server):
    from tests.factories import UserFactory, active_hold, closed_survey, soft_deleted_survey

    now = timezone.now()
    held = closed_survey(now + timedelta(days=40))
    admin = UserFactory(username="trial-superuser", is_staff=True, is_superuser=True)
    return Cast(user=UserFactory(), admin=admin, closed=closed_survey(now + timedelta(days=40)),
                soft=soft_deleted_survey(now - timedelta(days=2)), held=held, hold=active_hold(held),
                mailbox=smtp_server,
                far_future=closed_survey(datetime(9999, 11, 15, tzinfo=dt_timezone.utc), name="Far future"))


def snapshot():
    from django.apps import apps

    models = ["surveys.Survey", "surveys.LegalHold", "surveys.RetentionExtension", "audit.AuditEvent",
              "governance.DeletionWarning", "governance.GovernanceRun", "django_celery_beat.CrontabSchedule",
              "django_celery_beat.PeriodicTask"]
    return {m: [model_to_dict(o) for o in apps.get_model(m).objects.order_by("pk")] for m in models}


@pytest.mark.parametrize("case", params(DJANGO_CASES + DATA_CASES))
def test_bad_input_in_models_services_forms_and_data_is_a_clear_error_and_changes_nothing(cast, case):
    from checktick_app.surveys.models import Survey

    before = snapshot()
    if case.kind == "data":  # a real run: only the cast's own surveys must be as they were
        before = {"surveys.Survey": before["surveys.Survey"], "surveys.LegalHold": before["surveys.LegalHold"]}
    try:
        message = case.act(cast)
    except ValidationError as exc:
        message = " ".join(exc.messages)
    else:
        assert message, f"{case.id} was accepted"
    if str(message).startswith("status="):  # an admin page: the form came back with its errors
        assert str(message).split()[0] in ("status=200", "status=400"), str(message)[:300]
    for needle in (case.expect, *case.also):
        assert needle in str(message), f"{needle!r} not in {str(message)[:3000]!r}"
    after = snapshot()
    if case.kind == "data":
        cast_ids = {o["id"] for o in before["surveys.Survey"]}
        after = {"surveys.Survey": [o for o in after["surveys.Survey"] if o["id"] in cast_ids],
                 "surveys.LegalHold": after["surveys.LegalHold"]}
        assert Survey.objects.filter(deleted_at__isnull=False).count() == 1  # only the cast's soft-deleted one
    assert after == before


# --- the web endpoints (points 12 and 13) ----------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/health/live/", "/health/governance/"])
def test_health_endpoints_answer_head_as_they_answer_get(client, url):
    get, head = client.get(url), client.head(url)

    assert head.status_code == get.status_code != 405
    assert head["Content-Type"] == get["Content-Type"] and head.content == b""


@pytest.mark.django_db
def test_an_ordinary_403_is_logged_in_one_line(client, caplog):
    import logging

    from tests.factories import UserFactory

    client.force_login(UserFactory(username="staff-without-governance", is_staff=True))
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get("/admin/governance/governancerun/")

    assert response.status_code == 403
    [record] = [r for r in caplog.records if r.name == "django.request"]
    line = logging.Formatter("%(levelname)s %(name)s %(message)s").format(record)
    assert line == "WARNING django.request Forbidden (Permission denied): /admin/governance/governancerun/"
