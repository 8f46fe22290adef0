"""Is the nightly work actually happening? One verdict, shared by the command, the endpoint and metrics.

A missed night is silent by nature: nothing fails, nothing is logged. So the verdict looks at the
run history instead: for each job, the last real (not dry-run) run that finished must have succeeded,
and the last success must be younger than CHECKTICK_HEALTH_MAX_AGE_HOURS (26 by default: a daily job
plus two hours of slack). A run still marked running without a heartbeat for
CHECKTICK_RUN_STALE_AFTER_MINUTES has lost its process and is reported too.

The verdict carries run ids, statuses and times only: no survey names, no user names, no settings,
because the HTTP endpoint serving it is open to uptime monitors.

This module also sends the optional healthchecks.io-style pings (GOVERNANCE_PING_URL), so that an
outside service notices a missed night even when this host is down.
"""

import logging
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .models import GovernanceRun

logger = logging.getLogger(__name__)

Job = GovernanceRun.Job
RunStatus = GovernanceRun.Status
FINISHED = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.ABANDONED]


@dataclass
class JobHealth:
    job: str
    healthy: bool
    reason: str
    last_success_run_id: int | None = None
    last_success_at: datetime | None = None
    last_run_id: int | None = None
    last_run_status: str | None = None
    last_run_finished_at: datetime | None = None

    @property
    def label(self):
        return Job(self.job).label.lower()


@dataclass
class HealthVerdict:
    healthy: bool
    checked_at: datetime
    max_age_hours: int
    jobs: list[JobHealth] = field(default_factory=list)

    @property
    def summary(self):
        """One line for a monitor: every job's reason, unhealthy ones first."""
        if self.healthy:
            return "healthy: " + "; ".join(f"{j.label}: {j.reason}" for j in self.jobs)
        bad = [j for j in self.jobs if not j.healthy]
        return "unhealthy: " + "; ".join(f"{j.label}: {j.reason}" for j in bad)

    def as_json(self):
        def iso(value):
            return value.isoformat() if isinstance(value, datetime) else value

        return {
            "status": "healthy" if self.healthy else "unhealthy",
            "summary": self.summary,
            "checked_at": iso(self.checked_at),
            "max_age_hours": self.max_age_hours,
            "jobs": {j.job: {k: iso(v) for k, v in asdict(j).items() if k != "job"} for j in self.jobs},
        }


def _hours(delta):
    return delta.total_seconds() / 3600


def _ago(delta):
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} minutes ago" if minutes < 60 else f"{_hours(delta):.1f} hours ago"


def _job_health(job, now, max_age):
    real = GovernanceRun.objects.filter(job=job, dry_run=False)
    fields = ("pk", "status", "started_at", "finished_at", "heartbeat_at")
    latest = (F("finished_at").desc(nulls_last=True), "-pk")
    last_success = real.filter(status=RunStatus.SUCCEEDED).order_by(*latest).values(*fields).first()
    last_finished = real.filter(status__in=FINISHED).order_by(*latest).values(*fields).first()
    stale_cutoff = now - timedelta(minutes=settings.CHECKTICK_RUN_STALE_AFTER_MINUTES)
    stuck = real.filter(status=RunStatus.RUNNING, heartbeat_at__lt=stale_cutoff).order_by("started_at")
    stuck = stuck.values(*fields).first()
    health = JobHealth(job=job, healthy=False, reason="")
    if last_success:
        health.last_success_run_id, health.last_success_at = last_success["pk"], last_success["finished_at"]
    if last_finished:
        health.last_run_id, health.last_run_status = last_finished["pk"], last_finished["status"]
        health.last_run_finished_at = last_finished["finished_at"]

    if last_finished is None:
        health.reason = "has never completed a real (non-dry-run) run"
    elif last_finished["status"] != RunStatus.SUCCEEDED:
        health.reason = (f"last run #{last_finished['pk']} {last_finished['status']} at "
                         f"{last_finished['finished_at']:%Y-%m-%d %H:%M} UTC")
    elif stuck:
        health.reason = (f"run #{stuck['pk']} started {stuck['started_at']:%Y-%m-%d %H:%M} UTC has had no heartbeat "
                         f"for {settings.CHECKTICK_RUN_STALE_AFTER_MINUTES} minutes (its process died)")
    elif now - last_success["finished_at"] > max_age:
        age = _hours(now - last_success["finished_at"])
        health.reason = (f"last success run #{last_success['pk']} finished {age:.1f} hours ago, "
                         f"more than {_hours(max_age):g} (CHECKTICK_HEALTH_MAX_AGE_HOURS)")
    else:
        health.healthy = True
        health.reason = f"last success run #{last_success['pk']} finished {_ago(now - last_success['finished_at'])}"
    return health


def governance_health(*, now=None, max_age_hours=None):
    """The verdict for both jobs; healthy only if each job is."""
    now = now or timezone.now()
    max_age_hours = max_age_hours or settings.CHECKTICK_HEALTH_MAX_AGE_HOURS
    jobs = [_job_health(job, now, timedelta(hours=max_age_hours)) for job in Job.values]
    return HealthVerdict(healthy=all(j.healthy for j in jobs), checked_at=now, max_age_hours=max_age_hours, jobs=jobs)


# --- Outbound pings (optional) -----------------------------------------------------------------

# Short: a ping must never hold up a run noticeably, and the monitor only needs to hear from us.
PING_TIMEOUT_SECONDS = 5
PING_SUFFIX = {"start": "/start", "success": "", "fail": "/fail"}


def ping_url(job, event):
    """The healthchecks.io convention: <url>/start, <url> on success, <url>/fail.

    A `{job}` placeholder in GOVERNANCE_PING_URL gives each job its own check; without one, only
    the data-governance job pings (one check cannot tell two jobs apart).
    """
    base = settings.GOVERNANCE_PING_URL
    if not base:
        return None
    if "{job}" in base:
        base = base.replace("{job}", job)
    elif job != Job.DATA_GOVERNANCE:
        return None
    return base.rstrip("/") + PING_SUFFIX[event]


def _send_ping(url):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=PING_TIMEOUT_SECONDS):
            pass
    except (urllib.error.URLError, OSError, ValueError) as exc:
        # Never fail a run over its monitor; the monitor will notice the missing ping on its own.
        logger.warning("Governance ping to the monitor failed: %s", type(exc).__name__)


def ping_run(run, event):
    """Tell the outside monitor that a real run started, succeeded or failed (dry runs never ping).

    Sent after the surrounding transaction commits, so a run row rolled back never pings.
    """
    if run.dry_run:
        return
    url = ping_url(run.job, event)
    if url:
        transaction.on_commit(lambda: _send_ping(url))
