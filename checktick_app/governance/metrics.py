"""Prometheus metrics, read from the run history at scrape time.

The runs happen in Celery workers and cron processes, not in the web process that serves /metrics,
so in-process counters would only ever see this process. A custom Collector instead asks the
database on each scrape, with a handful of aggregate queries whatever the size of the history.
"""

from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, OuterRef, Subquery, Sum
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from .models import GovernanceRun, RunItem

Job = GovernanceRun.Job
RunStatus = GovernanceRun.Status


class GovernanceCollector:
    """Runs by job and status, items by outcome, last success and last duration per job."""

    def collect(self):
        yield from self._runs()
        yield from self._items()
        yield from self._last_runs()

    def _runs(self):
        finished = CounterMetricFamily(
            "checktick_governance_runs", "Finished governance runs by job, status and dry run (refused: asked for, but another run held the job).",
            labels=["job", "status", "dry_run"],
        )
        running = GaugeMetricFamily(
            "checktick_governance_runs_in_progress", "Governance runs currently marked running.", labels=["job"],
        )
        resumes = CounterMetricFamily(
            "checktick_governance_run_resumes",
            "Times the watchdog re-sent what a run waited for (its messages were lost with the broker).",
            labels=["job"],
        )
        rows = list(GovernanceRun.objects.values("job", "status", "dry_run")
                    .annotate(n=Count("pk"), resumes=Sum("resumes")).order_by())
        seen = {(r["job"], r["status"], r["dry_run"]): r["n"] for r in rows}
        for job in Job.values:
            resumes.add_metric([job], sum(r["resumes"] or 0 for r in rows if r["job"] == job))
            for status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.ABANDONED, RunStatus.REFUSED):
                for dry in (False, True):
                    finished.add_metric([job, status, str(dry).lower()], seen.get((job, status, dry), 0))
            running.add_metric([job], sum(seen.get((job, RunStatus.RUNNING, dry), 0) for dry in (False, True)))
        yield finished
        yield running
        yield resumes

    def _items(self):
        items = CounterMetricFamily(
            "checktick_governance_run_items", "Items acted on by runs, by job, kind and outcome.",
            labels=["job", "kind", "outcome"],
        )
        # What real runs did: a preview's items are what a run would do, and a pending item has no outcome yet.
        settled = RunItem.objects.exclude(outcome=RunItem.Outcome.PENDING).filter(run__dry_run=False)
        rows = settled.values("run__job", "kind", "outcome").annotate(n=Count("pk")).order_by()
        for row in rows:
            items.add_metric([row["run__job"], row["kind"], row["outcome"]], row["n"])
        yield items

    def _last_runs(self):
        last_success = GaugeMetricFamily(
            "checktick_governance_last_success_timestamp_seconds",
            "Unix time the last real (non-dry-run) successful run of the job finished; 0 if never.",
            labels=["job"],
        )
        duration = GaugeMetricFamily(
            "checktick_governance_last_run_duration_seconds",
            "Duration of the last finished real run of the job.", labels=["job"],
        )
        succeeded = GaugeMetricFamily(
            "checktick_governance_last_run_succeeded",
            "1 if the last finished real run of the job succeeded, 0 if it failed or was abandoned.",
            labels=["job"],
        )
        # A refused run did nothing: it is counted above, but is never "the last run".
        real_finished = GovernanceRun.objects.filter(dry_run=False, finished_at__isnull=False).exclude(
            status=RunStatus.REFUSED)
        successes = dict(
            real_finished.filter(status=RunStatus.SUCCEEDED).values("job").annotate(at=Max("finished_at"))
            .order_by().values_list("job", "at")
        )
        latest_pk = real_finished.filter(job=OuterRef("job")).order_by("-finished_at", "-pk").values("pk")[:1]
        last = {
            row["job"]: row
            for row in real_finished.filter(pk=Subquery(latest_pk))
            .annotate(took=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField()))
            .values("job", "status", "took")
        }
        for job in Job.values:
            at = successes.get(job)
            last_success.add_metric([job], at.timestamp() if at else 0)
            if job in last:
                duration.add_metric([job], last[job]["took"].total_seconds())
                succeeded.add_metric([job], 1 if last[job]["status"] == RunStatus.SUCCEEDED else 0)
        yield last_success
        yield duration
        yield succeeded


# Our own registry: /metrics serves the governance metrics only, not this web process's internals.
registry = CollectorRegistry(auto_describe=False)
registry.register(GovernanceCollector())
