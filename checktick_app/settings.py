"""The one settings module: every value comes from the environment (documented in docs/configuration.md).

A value that cannot be parsed, or that would make governance unsafe, stops start-up with an
ImproperlyConfigured naming the variable and how to fix it.
"""

import warnings
from pathlib import Path
from urllib.parse import urlparse

import environ
from kombu import Queue
from django.core.exceptions import ImproperlyConfigured

from checktick_app.config_checks import is_email_sender, is_importable_class, secret_key_problem

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("CHECKTICK_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()


def _int(name, default, low, high):
    raw = env.str(name, default=str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number; set it to an integer from {low} to {high}.")
    if not low <= value <= high:
        raise ImproperlyConfigured(f"{name}={value} is out of range; set it to an integer from {low} to {high}.")
    return value


def _bool(name, default):
    raw = env.str(name, default="true" if default else "false").strip().lower()
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is ambiguous; set it to true or false.")


def _day_list(name, default):
    raw = env.str(name, default=default)
    try:
        days = sorted({int(part) for part in raw.split(",") if part.strip()}, reverse=True)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} must be a comma-separated list of whole days, e.g. 30,7,1.")
    if not days or any(d < 1 or d > 365 for d in days):
        raise ImproperlyConfigured(f"{name}={raw!r} must list between one and several days, each from 1 to 365.")
    return tuple(days)


DEBUG = _bool("DEBUG", False)
SECRET_KEY = env.str("SECRET_KEY", default="").strip()
if DEBUG and not SECRET_KEY:
    SECRET_KEY = "insecure-development-key"  # local runs only (`make run` sets DEBUG=true)
elif not DEBUG and secret_key_problem(SECRET_KEY):
    # Fail closed: a web admin signed with a key published in the repository (or an example's
    # placeholder) would let anyone forge its sessions. Every process refuses to start instead.
    raise ImproperlyConfigured(f"SECRET_KEY {secret_key_problem(SECRET_KEY)}; outside DEBUG every process refuses "
                               "to start without a real one. Set it to a long random string, e.g. the output of "
                               "python -c 'import secrets; print(secrets.token_urlsafe(50))'.")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "checktick_app.audit",
    "checktick_app.surveys",
    "checktick_app.governance",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's static files from gunicorn in compose/Kubernetes, with no extra web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# --- HTTPS (production switches; docs/deploying.md, "Production environment") ------------------------------
# Off by default so that the quick start and the tests work over plain http; the documented production
# environment turns them on, and `python manage.py check --deploy` is then clean.
SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = _bool("CSRF_COOKIE_SECURE", False)
SECURE_SSL_REDIRECT = _bool("SECURE_SSL_REDIRECT", False)
# Probes and scrapers inside the cluster speak plain http to the pod: never redirect them.
SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
SECURE_HSTS_SECONDS = _int("SECURE_HSTS_SECONDS", 0, 0, 2 * 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = _bool("SECURE_HSTS_PRELOAD", False)
# Behind a TLS-terminating proxy: the header it sets to "https" (e.g. X-Forwarded-Proto). Trust it only
# when the proxy always sets or strips it, or any client could claim https.
_proxy_header = env.str("SECURE_PROXY_SSL_HEADER", default="").strip()
if _proxy_header and not all(part.isalnum() for part in _proxy_header.split("-")):
    raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER={_proxy_header!r} is not a header name; "
                               "set it to e.g. X-Forwarded-Proto, or leave it empty.")
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https") if _proxy_header else None
)

# The DEBUG 500 page and error reports never show a connection URL's password (error_reports.py).
DEFAULT_EXCEPTION_REPORTER_FILTER = "checktick_app.error_reports.SecretUrlsReporterFilter"

ROOT_URLCONF = "checktick_app.urls"
WSGI_APPLICATION = "checktick_app.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "checktick_app" / "templates"],  # templates both apps share (admin styles)
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite under var/ is the quick-start default; production sets DATABASE_URL to PostgreSQL.
_default_db = f"sqlite:///{VAR_DIR / 'checktick.sqlite3'}"
SUPPORTED_DB_ENGINES = {"django.db.backends.postgresql", "django.db.backends.sqlite3"}
_db_hint = "use e.g. postgres://user:password@host:5432/dbname or sqlite:////abs/path/db.sqlite3."
try:
    DATABASES = {"default": env.db_url("DATABASE_URL", default=_default_db)}
except (environ.ImproperlyConfigured, ValueError, KeyError) as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL Django understands ({exc}); {_db_hint}")
if DATABASES["default"].get("ENGINE") not in SUPPORTED_DB_ENGINES:
    # django-environ passes unknown schemes (and non-URLs) through; name the variable, never echo a password.
    scheme = urlparse(env.str("DATABASE_URL", default="")).scheme or "(none)"
    raise ImproperlyConfigured(
        f"DATABASE_URL has scheme {scheme!r}, which is not a supported database (PostgreSQL or SQLite); {_db_hint}"
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The worker, beat and the web admin share the file. WAL lets them read while one writes;
    # IMMEDIATE takes the write lock when a transaction opens, so a reader never has to upgrade
    # (which SQLite refuses without waiting); the timeout makes writers queue instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30, transaction_mode="IMMEDIATE", init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"
    )
else:
    DATABASES["default"]["CONN_MAX_AGE"] = _int("CONN_MAX_AGE", 60, 0, 3600)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"  # fixed: every retention date in SPEC.md is UTC
FORMAT_MODULE_PATH = ["checktick_app.formats"]  # one date format on every page: 2026-01-05 02:00:00
# Emails' Date header in TIME_ZONE (UTC): "+0000", where Django's default writes "-0000" ("zone unknown").
EMAIL_USE_LOCALTIME = True
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# The admin is the only page: serve its files straight from the installed apps, so no collectstatic
# step is needed (run it anyway for compressed copies; whitenoise then serves those).
WHITENOISE_USE_FINDERS = True
# ...so an absent STATIC_ROOT is expected, not worth a warning at every start.
warnings.filterwarnings("ignore", message=r"No directory at: .*static", category=UserWarning)

# --- Email -----------------------------------------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="")
EMAIL_PORT = _int("EMAIL_PORT", 25, 1, 65535)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = _bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = _int("EMAIL_TIMEOUT", 30, 1, 600)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="")
if DEFAULT_FROM_EMAIL and not is_email_sender(DEFAULT_FROM_EMAIL):
    raise ImproperlyConfigured(f"DEFAULT_FROM_EMAIL={DEFAULT_FROM_EMAIL!r} is not an email address; set it to e.g. "
                               "noreply@example.org or 'CheckTick <noreply@example.org>'.")
if not is_importable_class(EMAIL_BACKEND):
    raise ImproperlyConfigured(f"EMAIL_BACKEND={EMAIL_BACKEND!r} is not an email backend that can be imported; "
                               "use e.g. django.core.mail.backends.smtp.EmailBackend.")
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(VAR_DIR / "sent-emails"))  # for the file backend

# Links in warning emails. Validated when a governance run starts (R8), not at import, so that
# migrations and the admin still work on a half-configured host.
SITE_URL = env.str("SITE_URL", default="").rstrip("/")

# --- Redis / Celery --------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    # The URL may carry Redis's password: name the variable and the scheme, never echo the value.
    _redis = urlparse(REDIS_URL)
    if _redis.scheme not in {"redis", "rediss", "redis+socket", "unix"}:
        raise ImproperlyConfigured(
            f"REDIS_URL is not a Redis URL (scheme {_redis.scheme or '(none)'!r}); "
            "use redis://host:6379/0 (or rediss:// for TLS)."
        )
    try:
        _redis.port
    except ValueError:
        raise ImproperlyConfigured("REDIS_URL has a port that is not a number from 1 to 65535; "
                                   "use redis://host:6379/0.") from None

# --- Governance rules (SPEC.md) --------------------------------------------------------------
CHECKTICK_RETENTION_CEILING_MONTHS = 24  # the database check constraint's bound (R2)
CHECKTICK_MAX_RETENTION_MONTHS = _int("CHECKTICK_MAX_RETENTION_MONTHS", 24, 1, CHECKTICK_RETENTION_CEILING_MONTHS)
CHECKTICK_DEFAULT_RETENTION_MONTHS = _int(
    "CHECKTICK_DEFAULT_RETENTION_MONTHS", 6, 1, CHECKTICK_MAX_RETENTION_MONTHS
)
CHECKTICK_WARNING_DAYS = _day_list("CHECKTICK_WARNING_DAYS", "30,7,1")
CHECKTICK_SOFT_DELETE_GRACE_DAYS = _int("CHECKTICK_SOFT_DELETE_GRACE_DAYS", 30, 1, 365)
CHECKTICK_HOLD_RELEASE_NOTICE_DAYS = _int("CHECKTICK_HOLD_RELEASE_NOTICE_DAYS", 7, 1, 90)
CHECKTICK_PROGRESS_EXPIRY_DAYS = _int("CHECKTICK_PROGRESS_EXPIRY_DAYS", 30, 1, 365)
CHECKTICK_PROGRESS_STALE_DAYS = _int("CHECKTICK_PROGRESS_STALE_DAYS", 90, 1, 3650)
if CHECKTICK_PROGRESS_STALE_DAYS < CHECKTICK_PROGRESS_EXPIRY_DAYS:
    # A safety net shorter than the expiry would delete drafts that are still in use.
    raise ImproperlyConfigured(
        f"CHECKTICK_PROGRESS_STALE_DAYS={CHECKTICK_PROGRESS_STALE_DAYS} is below CHECKTICK_PROGRESS_EXPIRY_DAYS="
        f"{CHECKTICK_PROGRESS_EXPIRY_DAYS}; set it to at least {CHECKTICK_PROGRESS_EXPIRY_DAYS}."
    )
# A run whose row still says "running" after this long is taken to have died with its process.
CHECKTICK_RUN_STALE_AFTER_MINUTES = _int("CHECKTICK_RUN_STALE_AFTER_MINUTES", 180, 5, 24 * 60)
# One clock (runs.run_clock): a run's "now" is the database server's. A host whose clock differs from it by
# more than this refuses to start a run, rather than delete early (a fast clock) or late.
CHECKTICK_MAX_CLOCK_SKEW_SECONDS = _int("CHECKTICK_MAX_CLOCK_SKEW_SECONDS", 300, 1, 24 * 3600)
# "database" (production) or "host": the tests move the host's clock to the nights they test, which the
# database's clock cannot follow, so they read the host's.
CHECKTICK_CLOCK = env.str("CHECKTICK_CLOCK", default="database").strip().lower()
if CHECKTICK_CLOCK not in ("database", "host"):
    raise ImproperlyConfigured(f"CHECKTICK_CLOCK={CHECKTICK_CLOCK!r} is not a clock; set it to database or host.")
# A Celery run that lands no outcome for this long is waiting for messages that are gone (Redis restarted
# without its data): the watchdog re-sends them. Above the longest email retry delay (10 minutes).
CHECKTICK_RUN_RESUME_AFTER_MINUTES = _int("CHECKTICK_RUN_RESUME_AFTER_MINUTES", 20, 11, 24 * 60)
# An email claimed ("sending") but never confirmed after this long is offered again (at-least-once).
# Longer than the longest email retry delay (10 minutes), so a retry finds its own claim still standing.
CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES = _int("CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES", 15, 11, 24 * 60)

# Hard deletions are also recorded here, outside the database, so a restored backup cannot bring them
# back unnoticed (governance/deletion_record.py; README "Restoring a backup"). Keep it off the database's
# disk and out of its backups' restore path; back it up with the host, never restore it with the database.
CHECKTICK_DELETION_RECORD_DIR = env.str("CHECKTICK_DELETION_RECORD_DIR", default=str(VAR_DIR / "deletion-record"))
if not CHECKTICK_DELETION_RECORD_DIR.strip():
    raise ImproperlyConfigured("CHECKTICK_DELETION_RECORD_DIR is empty; set it to a folder outside the database's "
                               "backups, e.g. /var/lib/checktick/deletion-record, or unset it for <var>/deletion-record.")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").strip().upper()
if LOG_LEVEL not in LOG_LEVELS:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r} is not a log level; set it to one of {', '.join(LOG_LEVELS)}.")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"one_line_forbidden": {"()": "checktick_app.log_filters.OneLineForbidden"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # "Forbidden (Permission denied): /admin/..." in one line, without a traceback.
        "django.request": {"filters": ["one_line_forbidden"]},
    },
}

# --- Operations ------------------------------------------------------------------------------
# Health, pings and metrics (docs/operations.md, "Admin, health and metrics").
# `manage.py governance_health` and /health/governance/ turn unhealthy when a job's last real
# success is older than this: a daily job plus two hours of slack.
CHECKTICK_HEALTH_MAX_AGE_HOURS = _int("CHECKTICK_HEALTH_MAX_AGE_HOURS", 26, 1, 24 * 14)

# A healthchecks.io-style check pinged at the start (/start), success and failure (/fail) of each real
# run; `{job}` in the URL becomes data_governance or progress_cleanup. Empty: no pings.
GOVERNANCE_PING_URL = env.str("GOVERNANCE_PING_URL", default="").strip()
if GOVERNANCE_PING_URL:
    _ping = urlparse(GOVERNANCE_PING_URL.replace("{job}", "job"))
    if _ping.scheme not in {"http", "https"} or not _ping.hostname:
        # The URL usually embeds the check's secret key: name the variable, never echo the value.
        raise ImproperlyConfigured(
            "GOVERNANCE_PING_URL is not an http(s) URL; set it to e.g. https://hc-ping.com/<uuid> "
            "or https://hc-ping.com/<ping-key>/checktick-{job}, or leave it empty."
        )

# /metrics needs `Authorization: Bearer <METRICS_TOKEN>` when set; when empty, only loopback clients.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if METRICS_TOKEN and (len(METRICS_TOKEN) < 16 or any(c.isspace() for c in METRICS_TOKEN)):
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be at least 16 characters without spaces (e.g. the output of "
        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or empty for loopback-only /metrics."
    )

# --- Celery ----------------------------------------------------------------------------------
# celery_app.py reads every CELERY_* name below (namespace "CELERY"). docs/deploying.md, "Running with Celery".
# Docs: https://docs.celeryq.dev/en/stable/userguide/configuration.html and, for the Redis caveats,
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html

# REDIS_URL unset: the local Redis (development on this machine; `make run` sets REDIS_URL to its
# embedded Redis, and the Celery tests use CHECKTICK_TEST_REDIS_URL). Celery itself lets the
# CELERY_BROKER_URL / CELERY_RESULT_BACKEND environment variables override these two.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CELERY_BROKER_URL = REDIS_URL or DEFAULT_REDIS_URL  # the queues live in Redis
CELERY_RESULT_BACKEND = REDIS_URL or DEFAULT_REDIS_URL  # task states for Flower and `AsyncResult`
CELERY_RESULT_EXPIRES = 24 * 3600  # results are only for watching a night's work; the run row is the record

# JSON only: messages carry ids and ISO dates, and nothing can smuggle a pickle into a worker.
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_ACCEPT_CONTENT = ["json"]

CELERY_TIMEZONE = "UTC"  # beat's crontabs (02:00, 03:00) are UTC, like every retention date
CELERY_ENABLE_UTC = True

# Ack after the task ran, and requeue when the worker process dies mid-task: every task is idempotent
# (state guards, compare-and-set claims, unique run items), so a second delivery is a recorded no-op.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process: a long deletion never sits on queued emails another worker could send.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A worker that loses Redis lets its running tasks finish and record their outcomes (the database does not
# depend on Redis). Cancelling them would ack them unfinished (the cancel goes to the same lost Redis),
# and their run would wait for outcomes that never come. Their late acks are lost instead ("Couldn't ack"
# in the log) and Redis redelivers them after the visibility timeout, as recorded no-ops.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Celery's Django fixup closes the database connection before and after every task unless this is set: a
# new PostgreSQL connection per email was a third of the email task's time (bench/RESULTS.md). With it, the
# fixup closes them every 1,000 tasks, and governance/tasks.py applies Django's own rule around each task
# (close_if_unusable_or_obsolete: CONN_MAX_AGE, CONN_HEALTH_CHECKS, a connection that errored).
CELERY_DB_REUSE_MAX = 1000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # a worker started before Redis waits for it
# A message published while Redis restarts or fails over (seconds) waits for it, about 50 s at most,
# instead of being lost: a soft deletion's notices, the orchestrator's items, a retry. (Celery's
# default gives up after 0.6 s.) The admin's Run now publishes with a short policy of its own
# (dispatch.QUICK_PUBLISH), so an operator is told at once that Redis is down.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 12, "interval_start": 0, "interval_step": 1, "interval_max": 5}

# Routes (by task name, not task attributes): orchestrators, deletions and emails scale separately.
CELERY_TASK_DEFAULT_QUEUE = "governance"  # nothing unrouted can strand in a queue no worker reads
CELERY_TASK_ROUTES = {
    "checktick_app.governance.tasks.run_data_governance": {"queue": "governance"},
    "checktick_app.governance.tasks.cleanup_survey_progress": {"queue": "governance"},
    "checktick_app.governance.tasks.execute_deletion_item": {"queue": "deletion"},
    "checktick_app.governance.tasks.execute_email_item": {"queue": "email"},
    "checktick_app.governance.tasks.watch_runs": {"queue": "governance"},
}
# The three queues, declared, so that whatever lists queues knows all three before any message or
# worker exists (Flower's queue list falls back to this; a worker started without -Q reads all three).
CELERY_TASK_QUEUES = [Queue(name) for name in ("governance", "deletion", "email")]

# Time limits per task, (soft, hard) seconds: the soft limit raises inside the task so it records its
# failure in the run; the hard limit kills the process (the message is then redelivered).
TASK_TIME_LIMITS = {
    # Plans the night for dispatch.PLANNING_TIME_BUDGET_SECONDS (selection, ledger rows, items, sending),
    # then re-sends itself to carry on from the plan's cursor.
    "checktick_app.governance.tasks.run_data_governance": (4 * 60, 5 * 60),
    # Works for CLEANUP_TIME_BUDGET_SECONDS (tasks.py), then re-enqueues itself.
    "checktick_app.governance.tasks.cleanup_survey_progress": (5 * 60, 6 * 60),
    # One survey's set-based deletes in one transaction.
    "checktick_app.governance.tasks.execute_deletion_item": (4 * 60, 5 * 60),
    # One email: SMTP connect and send, each bounded by EMAIL_TIMEOUT.
    "checktick_app.governance.tasks.execute_email_item": (EMAIL_TIMEOUT * 3, EMAIL_TIMEOUT * 4),
    # A few set-based queries, and the re-sending of a stalled run's missing items.
    "checktick_app.governance.tasks.watch_runs": (2 * 60, 3 * 60),
}
CELERY_TASK_ANNOTATIONS = {
    name: {"soft_time_limit": soft, "time_limit": hard} for name, (soft, hard) in TASK_TIME_LIMITS.items()
}
CELERY_TASK_SOFT_TIME_LIMIT = 5 * 60  # any other task (e.g. celery.ping)
CELERY_TASK_TIME_LIMIT = 6 * 60

# Redis redelivers a message not acked within the visibility timeout, so it must outlast the longest
# task plus the longest retry delay (a retried email waits unacked in the worker until its ETA), or a
# slow task would run twice. Celery's Redis caveats ask for the same value in all three places.
# The longest wait between two attempts of an item (engine.RETRY_POLICIES derive from it), so the
# longest a healthy run goes without settling an item.
LONGEST_RETRY_DELAY_SECONDS = 10 * 60
VISIBILITY_TIMEOUT_SECONDS = max(hard for _, hard in TASK_TIME_LIMITS.values()) + LONGEST_RETRY_DELAY_SECONDS + 20 * 60
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}

# Events for Flower: task-started/succeeded/failed from workers, task-sent from producers.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# No STARTED state in the result backend: that write comes before the task runs, and when Redis drops it
# the worker gives the task up unrun (found by the Redis trials). Flower shows "started" from the
# workers' task events all the same.
CELERY_TASK_TRACK_STARTED = False

# Soft shutdown: on a cold shutdown, running tasks get this long to finish before the worker stops;
# whatever is cut off is requeued (acks_late), including ETA'd email retries held by an idle worker.
CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT = 20.0
CELERY_WORKER_ENABLE_SOFT_SHUTDOWN_ON_IDLE = True

# Beat reads its schedule from the database (django-celery-beat): an edit in the admin reaches a
# running beat within seconds, without a restart. Migration governance/0004 creates the two jobs.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
