"""The governance admin: run history with Run now / Preview, audit log, warning ledger and forecast.

Everything here is evidence, so it is read-only: no add, change or delete, whoever asks. Seeing it
needs `governance.view_governance`; starting a run or a preview also needs `governance.run_governance`
(superusers have both). The `create_governance_operator` command makes a group with both.

Runs started here go through Celery (`dispatch.enqueue_run`): the admin request opens the run row
and returns at once; the run's page refreshes itself until the worker has finished it.
"""

from datetime import date, datetime, timedelta

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import DatabaseError
from django.http import HttpResponse, HttpResponseBadRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join, strip_tags
from django.utils.safestring import mark_safe

from checktick_app.admin_helpers import ReadOnlyAdminMixin, search_by_id

from django_celery_beat.models import PeriodicTask

from .beat_admin import TruthfulPeriodicTaskAdmin
from . import evidence
from .health import governance_health
from checktick_app.audit.models import AuditEvent
from .models import DeletionWarning, GovernanceRun, RunItem
from .runs import RunRefused, describe
from .services import forecast

VIEW_PERMISSION = "governance.view_governance"
RUN_PERMISSION = "governance.run_governance"
FORECAST_DEFAULT_DAYS, FORECAST_MAX_DAYS = 30, 365
# A run page lists at most this many surveys under each heading (the counts above stay exact).
DETAIL_LIST_LIMIT = 200
REFRESH_SECONDS = 2


def can_view(user):
    return bool(user.is_active and user.is_staff and user.has_perm(VIEW_PERMISSION))


def can_run(user):
    return can_view(user) and user.has_perm(RUN_PERMISSION)


class EvidenceAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only for holders of governance.view_governance, invisible to every other staff user."""

    def has_module_permission(self, request):
        return can_view(request.user)

    def has_view_permission(self, request, obj=None):
        return can_view(request.user)

    def get_search_results(self, request, queryset, search_term):
        """Search by survey name, and by survey id when the term is a number (an indexed exact match)."""
        searched, duplicates = super().get_search_results(request, queryset, search_term)
        if any(f.name == "survey_id" for f in self.model._meta.fields):
            searched |= search_by_id(queryset, search_term, "survey_id")
        return searched, duplicates


def short_datetime(value, seconds=False):
    """Compact and unambiguous in a list column (the admin runs in UTC)."""
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def survey_link(survey_id, name, *, link=True):
    label = f"#{survey_id} {name}"
    if not link or survey_id is None:
        return label
    try:
        url = reverse("admin:surveys_survey_change", args=[survey_id])
    except NoReverseMatch:
        return label
    return format_html('<a href="{}">{}</a>', url, label)


# --- Run history -------------------------------------------------------------------------------

TRIGGER_SHORT = {"beat": "beat", "admin": "admin", "command": "command"}
PREVIEW_HIDES = object()  # a count that means nothing in a preview (it sends and deletes nothing)
COUNT_LABELS = {  # in the order a run page lists them: (a real run's label, a preview's label)
    "warnings": ("Surveys warned", "Surveys to warn"),
    "emails_sent": ("Emails sent", "Emails to send"),
    "emails_failed": ("Emails failed", PREVIEW_HIDES),
    "recipients_skipped": ("Recipients skipped (no address)", "Recipients to skip (no address)"),
    "surveys_without_recipients": ("Surveys without any recipient", None),
    "soft_deleted": ("Soft deleted", "Would soft delete"),
    "soft_deletion_notices_sent": ("Soft-deletion notices sent", "Soft-deletion notices to send"),
    "hard_deleted": ("Hard deleted", "Would hard delete"),
    "skipped_legal_hold": ("Skipped (legal hold)", None),
    "found": ("Expired drafts found", "Expired drafts to delete"),
    "deleted": ("Drafts deleted", PREVIEW_HIDES),
    "deleted_user": ("Drafts of logged-in users", "of them, drafts of logged-in users"),
    "deleted_token": ("Drafts of access tokens", "of them, drafts of access tokens"),
    "deleted_session": ("Drafts of anonymous sessions", "of them, drafts of anonymous sessions"),
    "complete": ("Complete (not stopped by the time budget)", PREVIEW_HIDES),
    "failed_items": ("Failed items", None),
}


def _threshold(key):
    """`warnings_30d` -> 30; None for any other key."""
    if key.startswith("warnings_") and key.endswith("d") and key[9:-1].isdigit():
        return int(key[9:-1])
    return None


def count_rows(counts, dry_run):
    """(label, value) in a stable order: the database may store JSON keys in any order (jsonb does)."""
    order = list(COUNT_LABELS)
    thresholds = sorted((k for k in counts if _threshold(k) is not None), key=_threshold, reverse=True)
    known = [k for k in order if k in counts]
    rest = sorted(k for k in counts if k not in known and k not in thresholds)
    rows = []
    for key in thresholds + known + rest:
        if key in thresholds:
            label = f"{_threshold(key)}-day warnings" + (" to send" if dry_run else "")
        elif key in COUNT_LABELS:
            real, dry = COUNT_LABELS[key]
            if dry_run and dry is PREVIEW_HIDES:
                continue
            label = (dry if dry_run and dry else real)
        else:
            label = key.replace("_", " ").capitalize()
        rows.append((label, counts[key]))
    return rows


class FailedItemInline(ReadOnlyAdminMixin, admin.TabularInline):
    """Each failed item of the run with its error (R12); successful items are only counted."""

    model = RunItem
    verbose_name = "failed item"
    verbose_name_plural = "Failed items"
    fields = ("kind", "object_id", "error", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request):
        return super().get_queryset(request).filter(outcome=RunItem.Outcome.FAILED).order_by("kind", "object_id")

    def has_view_permission(self, request, obj=None):
        return can_view(request.user)


@admin.register(GovernanceRun)
class GovernanceRunAdmin(EvidenceAdmin):
    list_display = ("run_label", "job_label", "trigger_short", "started", "finished", "status_label",
                    "counts_summary")
    list_display_links = ("run_label",)
    list_filter = ("job", "status", "dry_run", "trigger", "started_at")
    date_hierarchy = "started_at"
    list_per_page = 50
    inlines = [FailedItemInline]
    fieldsets = [
        (None, {"fields": ("job", "kind", "trigger_label", "scheduled_for", "status_label", "deferred_to_link", "started_full",
                           "heartbeat_full", "resumed_label", "finished_full", "duration_label", "error")}),
        ("Counts", {"fields": ("counts_table",)}),
        ("Surveys acted on (a preview lists what a real run would act on)", {"fields": ("details_html",)}),
    ]
    readonly_fields = ("job", "kind", "trigger_label", "scheduled_for", "status_label", "deferred_to_link", "started_full",
                       "heartbeat_full", "resumed_label", "finished_full", "duration_label", "error", "counts_table", "details_html")

    @admin.display(description="Run", ordering="pk")
    def run_label(self, run):
        return f"#{run.pk}"

    @admin.display(description="Kind", ordering="dry_run")
    def kind(self, run):
        return "Preview (dry run)" if run.dry_run else "Real run"

    @admin.display(description="Job", ordering="job")
    def job_label(self, run):
        if run.dry_run:
            return format_html('{}<br><span class="run-preview-badge">preview</span>', run.get_job_display())
        return run.get_job_display()

    @admin.display(description="Trigger", ordering="trigger")
    def trigger_short(self, run):
        who = f" ({run.triggered_by})" if run.triggered_by else ""
        return f"{TRIGGER_SHORT.get(run.trigger, run.trigger)}{who}"

    @admin.display(description="Started")
    def started_full(self, run):
        return f"{short_datetime(run.started_at, seconds=True)} UTC"

    @admin.display(description="Last heartbeat")
    def heartbeat_full(self, run):
        return f"{short_datetime(run.heartbeat_at, seconds=True)} UTC"

    @admin.display(description="Resumed by the watchdog")
    def resumed_label(self, run):
        if not run.resumes:
            return "never"
        times = "once" if run.resumes == 1 else f"{run.resumes} times"
        return f"{times}, last at {short_datetime(run.resumed_at, seconds=True)} UTC (its queued items were lost)"

    @admin.display(description="Finished")
    def finished_full(self, run):
        return f"{short_datetime(run.finished_at, seconds=True)} UTC" if run.finished_at else "not yet"

    @admin.display(description="Started (UTC)", ordering="started_at")
    def started(self, run):
        return short_datetime(run.started_at, seconds=True)

    @admin.display(description="Finished (took)", ordering="finished_at")
    def finished(self, run):
        if run.finished_at is None:
            return self.duration_label(run)
        same_day = run.finished_at.date() == run.started_at.date()  # then the time says it all
        at = f"{run.finished_at:%H:%M:%S}" if same_day else short_datetime(run.finished_at, seconds=True)
        return format_html('{}<br><span class="run-detail-date">({})</span>', at, self.duration_label(run))

    @admin.display(description="Trigger", ordering="trigger")
    def trigger_label(self, run):
        who = f" ({run.triggered_by})" if run.triggered_by else ""
        return f"{run.get_trigger_display()}{who}"

    @admin.display(description="Duration")
    def duration_label(self, run):
        took = run.duration
        if took is None:
            return "running…" if run.status == GovernanceRun.Status.RUNNING else "—"
        seconds = took.total_seconds()
        if seconds < 60:
            return f"{seconds:.1f} s"
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"

    @admin.display(description="Status", ordering="status")
    def status_label(self, run):
        return format_html('<span class="run-status run-status-{}">{}</span>', run.status, run.get_status_display())

    @admin.display(description="Deferred to")
    def deferred_to_link(self, run):
        """A refused run: the run that held the job (in progress, or tonight's run already done)."""
        if run.deferred_to_id is None:
            return "—"
        url = reverse("admin:governance_governancerun_change", args=[run.deferred_to_id])
        return format_html('<a href="{}">run #{}</a>', url, run.deferred_to_id)

    @admin.display(description="Counts")
    def counts_summary(self, run):
        if run.status == GovernanceRun.Status.REFUSED:
            if run.deferred_to_id is None:
                return "nothing ran"
            url = reverse("admin:governance_governancerun_change", args=[run.deferred_to_id])
            return format_html('<span class="run-counts-summary">nothing ran: deferred to '
                               '<a href="{}">#{}</a></span>', url, run.deferred_to_id)
        return format_html('<span class="run-counts-summary">{}</span>', self._counts_text(run))

    def _counts_text(self, run):
        c = run.counts or {}
        if run.job == GovernanceRun.Job.PROGRESS_CLEANUP and run.dry_run:
            parts = [f"would delete {c.get('found', 0)}"]
        elif run.job == GovernanceRun.Job.PROGRESS_CLEANUP:
            parts = [f"found {c.get('found', 0)}", f"deleted {c.get('deleted', 0)}"]
        else:
            parts = [f"warned {c.get('warnings', 0)}", f"soft {c.get('soft_deleted', 0)}",
                     f"hard {c.get('hard_deleted', 0)}", f"held {c.get('skipped_legal_hold', 0)}"]
        if c.get("failed_items"):
            parts.append(f"failed {c['failed_items']}")
        return " · ".join(part.replace(" ", "\u00a0") for part in parts) if c else "—"

    @admin.display(description="Counts")
    def counts_table(self, run):
        if run.status == GovernanceRun.Status.REFUSED:
            return "Nothing ran: the run was refused (see Error and Deferred to)."
        if not run.counts:
            return "No counts yet: the run has not finished." if run.status == GovernanceRun.Status.RUNNING else "—"
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", count_rows(run.counts, run.dry_run))
        return format_html('<table class="run-counts">{}</table>', rows)

    @admin.display(description="Details")
    def details_html(self, run):
        details = run.details or {}
        if not details:
            if run.job == GovernanceRun.Job.PROGRESS_CLEANUP:
                return "The progress cleanup deletes drafts by expiry: see the counts above (no survey is acted on)."
            return "Nothing recorded yet." if run.status == GovernanceRun.Status.RUNNING else "Nothing recorded."
        would = run.dry_run
        sections = []
        for threshold, lines in sorted((details.get("warnings") or {}).items(), key=lambda kv: -int(kv[0])):
            verb = "Would send" if would else "Sent"
            sections.append((f"{verb} {threshold}-day warnings", lines, True))
        sections += [
            ("Due for a warning but without any recipient", details.get("without_recipients") or [], True),
            ("Would soft delete" if would else "Soft deleted", details.get("soft_deleted") or [], True),
            ("Would hard delete" if would else "Hard deleted", details.get("hard_deleted") or [], would),
            ("Skipped (legal hold)", details.get("skipped_legal_hold") or [], True),
        ]
        parts = []
        for title, lines, link in sections:
            parts.append(format_html('<h4 class="run-detail-heading">{} ({})</h4>', title, len(lines)))
            if lines:
                shown = lines[:DETAIL_LIST_LIMIT]
                items = format_html_join(
                    "", "<li>{} <span class=\"run-detail-date\">{}</span></li>",
                    ((survey_link(line.get("id"), line.get("name", ""), link=link), _date(line.get("date")))
                     for line in shown),
                )
                more = ""
                if len(lines) > len(shown):
                    more = format_html("<li>… and {} more</li>", len(lines) - len(shown))
                parts.append(format_html('<ul class="run-detail-list">{}{}</ul>', items, more))
        failures = details.get("failures") or []
        if failures:
            parts.append(format_html('<h4 class="run-detail-heading">Failures ({})</h4>', len(failures)))
            parts.append(format_html('<ul class="run-detail-list">{}</ul>', format_html_join(
                "", "<li>{} {}: {}</li>", ((f.get("kind"), f.get("id"), f.get("error")) for f in failures))))
        return format_html('<div class="run-details">{}</div>', mark_safe("".join(str(p) for p in parts)))

    # --- Run now / Preview and the forecast ------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("start/<str:job>/", self.admin_site.admin_view(self.start_view), name="%s_%s_start" % info),
            path("start/<str:job>/confirm/", self.admin_site.admin_view(self.confirm_view),
                 name="%s_%s_confirm" % info),
            path("forecast/", self.admin_site.admin_view(self.forecast_view), name="%s_%s_forecast" % info),
            path("report/", self.admin_site.admin_view(self.report_view), name="%s_%s_report" % info),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        today = timezone.now().date()
        extra = {"can_run": can_run(request.user), "jobs": GovernanceRun.Job.choices,
                 "report_from": today.replace(day=1) - timedelta(days=365), "report_to": today}
        try:
            extra["health"] = governance_health()
        except DatabaseError:
            extra["health"] = None
        extra.update(self._charts(timezone.now()))
        return super().changelist_view(request, {**extra, **(extra_context or {})})

    @staticmethod
    def _charts(now):
        """The last 90 nights and the next 90 days, as SVG with their numbers (charts.py)."""
        from . import charts

        history = charts.night_history(now)
        coming = charts.forecast_rows(now)
        return {
            "history_svg": mark_safe(charts.history_chart(history)),  # pygal escapes the labels it draws
            "history": history,
            "forecast_svg": mark_safe(charts.forecast_chart(coming)),
            "coming": coming,
        }

    def get_inline_instances(self, request, obj=None):
        """The failed-items table only when there are failed items (the counts say "Failed items 0")."""
        if obj is None or not obj.items.filter(outcome=RunItem.Outcome.FAILED).exists():
            return []
        return super().get_inline_instances(request, obj)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        run = self.get_object(request, object_id)
        extra = {"refresh_seconds": REFRESH_SECONDS if run and run.status == GovernanceRun.Status.RUNNING else None}
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def start_view(self, request, job):
        """POST only, CSRF-protected (admin_view): queue a real run or a preview of one job."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not can_run(request.user):
            raise PermissionDenied
        if job not in GovernanceRun.Job.values:
            raise PermissionDenied
        dry_run = request.POST.get("dry_run") == "1"
        label = GovernanceRun.Job(job).label.lower()
        changelist = reverse("admin:governance_governancerun_changelist")
        try:
            from . import dispatch  # imported here so the rest of the admin works on a host without Celery
        except ImportError as exc:
            self.message_user(request, f"Not started: runs cannot be queued on this host ({exc}).", messages.ERROR)
            return HttpResponseRedirect(changelist)
        try:
            result = dispatch.enqueue_run(job, trigger=GovernanceRun.Trigger.ADMIN, user=request.user, dry_run=dry_run)
        except RunRefused as exc:
            if exc.existing is not None and exc.existing.status == GovernanceRun.Status.RUNNING:
                self.message_user(request, f"Not started: {describe(exc.existing)} is still in progress. "
                                           "Please wait for it to finish, then try again.", messages.WARNING)
            else:
                self.message_user(request, f"Not started. {exc}", messages.WARNING)
            if exc.existing is not None:
                return HttpResponseRedirect(reverse("admin:governance_governancerun_change", args=[exc.existing.pk]))
            return HttpResponseRedirect(changelist)
        except ImproperlyConfigured as exc:
            self.message_user(request, f"Not started: {exc}", messages.ERROR)
            return HttpResponseRedirect(changelist)
        run_id = getattr(result, "pk", result)
        what = "A preview (dry run, nothing is changed or sent)" if dry_run else "A run"
        self.message_user(request, f"{what} of {label} is queued as run #{run_id}. This page refreshes until it "
                                   "finishes.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:governance_governancerun_change", args=[run_id]))

    def confirm_view(self, request, job):
        """Run now, step one: what a real run would do now (the preview's counts), and a button to confirm."""
        if not can_run(request.user) or job not in GovernanceRun.Job.values:
            raise PermissionDenied
        from .preview import what_a_run_would_do

        now = timezone.now()
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Run {GovernanceRun.Job(job).label.lower()} now?",
            "job": job, "job_label": GovernanceRun.Job(job).label,
            "is_cleanup": job == GovernanceRun.Job.PROGRESS_CLEANUP,
            "now": now, "counts": what_a_run_would_do(job, now),
        }
        return TemplateResponse(request, "admin/governance/run_confirm.html", context)

    def forecast_view(self, request):
        if not can_view(request.user):
            raise PermissionDenied
        raw = request.GET.get("days", str(FORECAST_DEFAULT_DAYS))
        error, nights = None, []
        try:
            days = int(raw)
        except ValueError:
            days, error = None, f"“{raw}” is not a whole number of days."
        if days is not None and not 1 <= days <= FORECAST_MAX_DAYS:
            error = f"Forecast from 1 to {FORECAST_MAX_DAYS} days (got {days})."
        thresholds = sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True)
        now = timezone.now()
        if not error:
            previous = None
            for night in forecast(days=days, now=now):
                cells = [night["warnings"][t] for t in thresholds] + [night["soft_delete"], night["hard_delete"]]
                rises = [previous is not None and c > p for c, p in zip(cells, previous or cells)]
                nights.append({"at": night["at"], "cells": list(zip(cells, rises))})
                previous = cells
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Governance forecast",
            "days": raw if error else days,
            "max_days": FORECAST_MAX_DAYS,
            "error": error,
            "now": now,
            "thresholds": thresholds,
            "nights": nights,
        }
        return TemplateResponse(request, "admin/governance/forecast.html", context, status=400 if error else 200)


    def report_view(self, request):
        """The compliance report (governance.evidence) as a download: ?from=&to=&format=md|csv|json[&survey=]."""
        if not can_view(request.user):
            raise PermissionDenied
        fmt = request.GET.get("format", "md")
        try:
            start = date.fromisoformat(request.GET.get("from", ""))
            end = date.fromisoformat(request.GET.get("to", ""))
            survey = int(request.GET["survey"]) if request.GET.get("survey") else None
        except ValueError:
            return HttpResponseBadRequest("Give the period as from=YYYY-MM-DD and to=YYYY-MM-DD (and survey as a number).",
                                          content_type="text/plain")
        if fmt not in evidence.FORMATS or end < start:
            return HttpResponseBadRequest("The format is md, csv or json, and the period ends after it starts.",
                                          content_type="text/plain")
        report = evidence.build_report(None if survey else start, None if survey else end, survey_id=survey)
        content_type = {"md": "text/markdown", "csv": "text/csv", "json": "application/json"}[fmt]
        response = HttpResponse(evidence.render(report, fmt, single=survey is not None),
                                content_type=f"{content_type}; charset=utf-8")
        name = f"survey-{survey}" if survey else f"{start}-to-{end}"
        response["Content-Disposition"] = f'attachment; filename="checktick-governance-report-{name}.{fmt}"'
        return response


def _date(value):
    if not value:
        return ""
    return f"{str(value)[:16].replace('T', ' ')} UTC"


# --- Audit log and warning ledger --------------------------------------------------------------

AUDIT_DETAIL_LABELS = {  # in the order the details are shown
    "threshold_days": "Warning", "recipient_id": "Recipient (user id)", "warning_id": "Ledger row",
    "deletion_date": "Deletion date", "hard_deletion_date": "Hard deletion date", "permanent": "Permanent failure",
    "error": "Error", "reason": "Reason", "months": "Months", "old_deletion_date": "Deletion date before",
    "new_deletion_date": "Deletion date after",
}


def run_link(run_id):
    if run_id is None:
        return "—"
    return format_html('<a href="{}">#{}</a>', reverse("admin:governance_governancerun_change", args=[run_id]), run_id)


def audit_action_label(event):
    """A soft-deletion notice is named as one, not as a warning with threshold 0."""
    notice = (event.details or {}).get("threshold_days") == DeletionWarning.SOFT_DELETION_NOTICE
    if notice and event.action == AuditEvent.Action.WARNING_SENT:
        return "Soft-deletion notice sent"
    if notice and event.action == AuditEvent.Action.WARNING_FAILED:
        return "Soft-deletion notice failed"
    return event.get_action_display()


def audit_detail_value(key, value):
    if key == "threshold_days" and isinstance(value, int):
        return "soft-deletion notice" if value == DeletionWarning.SOFT_DELETION_NOTICE else f"{value}-day warning"
    if key == "warning_id" and value is not None:
        url = reverse("admin:governance_deletionwarning_change", args=[value])
        return format_html('<a href="{}">#{}</a>', url, value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] == "T":
        try:
            return f"{short_datetime(datetime.fromisoformat(value), seconds=True)} UTC"
        except ValueError:
            return value
    return value


def audit_detail_rows(event):
    """(label, value) per detail: readable labels, dates to the second in UTC, links to ledger rows."""
    details = event.details or {}
    known = list(AUDIT_DETAIL_LABELS)  # a stable order: jsonb keeps keys in an order of its own
    keys = sorted(details, key=lambda k: (known.index(k) if k in known else len(known), k))
    return [(AUDIT_DETAIL_LABELS.get(key, key.replace("_", " ").capitalize()), audit_detail_value(key, details[key]))
            for key in keys]

@admin.register(AuditEvent)
class AuditEventAdmin(EvidenceAdmin):
    list_display = ("created_at", "action_label", "survey_label", "actor", "run_link", "details_short")
    list_filter = ("action", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("survey_name",)
    search_help_text = "Survey name, or a survey id."
    fields = ("created_at", "action_label", "survey_label", "actor", "actor_id", "run_link", "details_pretty")
    readonly_fields = fields

    @admin.display(description="Action", ordering="action")
    def action_label(self, event):
        return audit_action_label(event)

    @admin.display(description="Survey", ordering="survey_id")
    def survey_label(self, event):
        return survey_link(event.survey_id, event.survey_name)

    @admin.display(description="Run", ordering="run_id")
    def run_link(self, event):
        return run_link(event.run_id)

    @admin.display(description="Details")
    def details_short(self, event):
        text = " · ".join(f"{label}: {strip_tags(str(value))}" for label, value in audit_detail_rows(event))
        return text if len(text) <= 100 else text[:99] + "…"

    @admin.display(description="Details")
    def details_pretty(self, event):
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", audit_detail_rows(event))
        return format_html('<table class="run-counts">{}</table>', rows) if event.details else "—"


@admin.register(DeletionWarning)
class DeletionWarningAdmin(EvidenceAdmin):
    list_display = ("survey_label", "deletion_date", "threshold_label", "recipient_email", "status", "attempts",
                    "sent_at", "created_at")
    list_filter = ("status", "threshold_days", "created_at", "sent_at")
    date_hierarchy = "created_at"
    search_fields = ("survey_name",)
    search_help_text = "Survey name, or a survey id."
    readonly_fields = [f.name for f in DeletionWarning._meta.fields]

    @admin.display(description="Survey", ordering="survey_id")
    def survey_label(self, warning):
        return survey_link(warning.survey_id, warning.survey_name)

    @admin.display(description="Threshold", ordering="threshold_days")
    def threshold_label(self, warning):
        if warning.threshold_days == DeletionWarning.SOFT_DELETION_NOTICE:
            return "Soft-deletion notice"
        return f"{warning.threshold_days}-day warning"


# django-celery-beat's periodic tasks, with a "Run selected tasks" that tells the truth (beat_admin.py).
admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, TruthfulPeriodicTaskAdmin)
