"""The runs page's two pictures, as server-side SVG (pygal): the last 90 nights and the next 90 days.

pygal is a maintained SVG plotting library; rendered here, in the request, with no JavaScript (js=[]),
so the admin works offline and needs no CDN. Each chart comes with its numbers as rows, for the text
table under it (and for anyone who would rather read).
"""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

import pygal
from pygal.style import Style

from .models import GovernanceRun

NIGHTS = 90
Status = GovernanceRun.Status
# Colour per series, in order; red for what went wrong, so a bad night stands out.
HISTORY_SERIES = (("Surveys warned", "#417690"), ("Soft deleted", "#e0a526"), ("Hard deleted", "#8a4b08"),
                  ("Held (legal hold)", "#7b68a6"), ("Failed items", "#ba2121"), ("No run (missed night)", "#ff7f7f"))
FORECAST_SERIES = (("Warnings", "#417690"), ("Soft deletions", "#e0a526"), ("Hard deletions", "#8a4b08"))


@dataclass
class Night:
    day: object
    warned: int = 0
    soft: int = 0
    hard: int = 0
    held: int = 0
    failed: int = 0
    ran: bool = False
    missed: bool = False

    @property
    def values(self):
        return (self.warned, self.soft, self.hard, self.held, self.failed)


def night_history(now, nights=NIGHTS):
    """The last `nights` nights of real data-governance runs, newest last. A night with no finished run
    after the first one on record is missed; a failed or abandoned run counts at least one failure."""
    first_day = (now - timedelta(days=nights - 1)).date()
    runs = (GovernanceRun.objects.filter(job=GovernanceRun.Job.DATA_GOVERNANCE, dry_run=False)
            .filter(status__in=[Status.SUCCEEDED, Status.FAILED, Status.ABANDONED])
            .values_list("started_at", "status", "counts"))
    by_day = defaultdict(list)
    first_on_record = None
    for started_at, status, counts in runs.filter(started_at__date__gte=first_day):
        by_day[started_at.date()].append((status, counts or {}))
    earliest = (GovernanceRun.objects.filter(job=GovernanceRun.Job.DATA_GOVERNANCE, dry_run=False)
                .exclude(status=Status.REFUSED).order_by("started_at").values_list("started_at", flat=True).first())
    if earliest:
        first_on_record = earliest.date()
    history = []
    for offset in range(nights):
        day = first_day + timedelta(days=offset)
        night = Night(day)
        for status, counts in by_day.get(day, []):
            night.ran = True
            night.warned += counts.get("warnings", 0)
            night.soft += counts.get("soft_deleted", 0)
            night.hard += counts.get("hard_deleted", 0)
            night.held += counts.get("skipped_legal_hold", 0)
            failed = counts.get("failed_items", 0)
            night.failed += max(failed, 1) if status != Status.SUCCEEDED else failed
        # Today's run may be yet to come; before the first run on record the service was not running.
        night.missed = (not night.ran and first_on_record is not None and first_on_record <= day < now.date())
        history.append(night)
    return history


def _chart(title, labels, series, rows, colors):
    chart = pygal.StackedBar(
        title=title, js=[], disable_xml_declaration=True, width=1100, height=300, legend_at_bottom=True,
        legend_at_bottom_columns=len(series), x_label_rotation=0, show_minor_x_labels=False,
        truncate_label=-1, margin=12, spacing=8, print_values=False, include_x_axis=True, min_scale=2,
        no_data_text="Nothing on any of these nights",
        style=Style(colors=colors, background="transparent", plot_background="transparent", font_family="sans-serif",
                    title_font_size=15, legend_font_size=12, label_font_size=11, major_label_font_size=11,
                    no_data_font_size=16),
    )
    tallest = max([sum(v or 0 for v in row) for row in rows] + [1])
    step = max(1, math.ceil(tallest / 5))
    chart.y_labels = list(range(0, tallest + step, step))  # whole surveys, never 0.2 of one
    chart.x_labels = labels
    chart.x_labels_major = labels[::7]
    for index, name in enumerate(series):
        chart.add(name, [row[index] or None for row in rows])
    return chart.render(is_unicode=True)


def history_chart(history):
    tallest = max([sum(n.values) for n in history] + [1])
    rows = [(*n.values, tallest if n.missed else 0) for n in history]
    return _chart(f"Last {len(history)} nights (data governance)", [f"{n.day:%d %b}" for n in history],
                  [name for name, _ in HISTORY_SERIES], rows, tuple(c for _, c in HISTORY_SERIES))


def forecast_rows(now, days=NIGHTS):
    """(day, warnings, soft, hard) for each of the next `days` nights, each survey counted on the first night
    the rules select it (as if each night's run acts on what it selects). Warnings come from the dry run's
    own path (ledger-aware, engine.surveys_a_run_would_warn); deletions from the same due-queries as the forecast."""
    from checktick_app.surveys.models import Survey

    from .engine import surveys_a_run_would_warn

    seen_warnings, seen_soft, seen_hard = set(), set(), set()
    rows = []
    for offset in range(days):
        at = now + timedelta(days=offset)
        warned = {(days_, survey_id) for days_, ids in surveys_a_run_would_warn(at).items() for survey_id in ids}
        soft = set(Survey.objects.due_for_soft_delete(at).values_list("pk", flat=True))
        hard = set(Survey.objects.due_for_hard_delete(at).values_list("pk", flat=True))
        rows.append((at.date(), len(warned - seen_warnings), len(soft - seen_soft), len(hard - seen_hard)))
        seen_warnings |= warned
        seen_soft |= soft
        seen_hard |= hard
    return rows


def forecast_chart(rows):
    return _chart(f"Next {len(rows)} days (forecast: each survey on the first night it is due)", [f"{day:%d %b}" for day, *_ in rows],
                  [name for name, _ in FORECAST_SERIES], [values for _, *values in rows],
                  tuple(c for _, c in FORECAST_SERIES))
