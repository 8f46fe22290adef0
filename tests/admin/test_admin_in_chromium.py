"""The admin flows an operator relies on, driven in a real headless Chromium against a live server.

Run now and Preview go through Celery for real: the admin request queues the run, an in-process
Celery worker (solo pool, real Redis at CHECKTICK_TEST_REDIS_URL) runs it, and the run's page
refreshes itself until it shows the result. Screenshots of the run history, a preview and the
forecast are written to /tmp for a human look.
"""

import importlib
import os
import re
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning, GovernanceRun
from checktick_app.governance.runs import Job, RunRefused, Trigger, close_run, open_run
from checktick_app.surveys.models import LegalHold, Survey
from tests.admin.conftest import PASSWORD, make_user
from tests.factories import OrganisationFactory, active_hold, closed_survey, soft_deleted_survey

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REDIS_URL = os.environ.get("CHECKTICK_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
SCREENSHOTS = os.environ.get("CHECKTICK_TEST_SCREENSHOTS_DIR", "/tmp")  # where the tests save their pictures
RUN_TIMEOUT_MS = 60_000  # generous: a loaded CI machine, not the normal case (about 2 s)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    # Playwright's sync API keeps an event loop in this thread; the ORM calls the tests make around it are
    # plain synchronous code, which Django only allows with this flag.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server, monkeypatch):
    monkeypatch.setattr("checktick_app.governance.admin.REFRESH_SECONDS", 1)  # a running run's page, sooner
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1440, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    try:
        yield tab
    finally:
        context.close()


@pytest.fixture(scope="module")
def celery_worker_for_admin(django_db_blocker):
    """Celery's in-process worker (solo pool) against the real Redis named by CHECKTICK_TEST_REDIS_URL."""
    import redis
    from celery.contrib.testing.worker import start_worker
    from celery.signals import task_postrun

    from celery_app import app

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()  # no stale messages from a dead run
    except redis.RedisError as exc:
        pytest.fail(f"Run now / Preview need Redis at CHECKTICK_TEST_REDIS_URL={REDIS_URL}: {exc}")
    # Celery lets these two variables win over the configuration, so set both places.
    saved_env = {k: os.environ.get(k) for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    saved_conf = {k: app.conf.get(k) for k in ("broker_url", "result_backend")}
    os.environ["CELERY_BROKER_URL"] = os.environ["CELERY_RESULT_BACKEND"] = REDIS_URL
    app.conf.update(broker_url=REDIS_URL, result_backend=REDIS_URL)
    app.loader.import_default_modules()
    _reset_pool(app)
    queues = sorted({q.name for q in app.amqp.queues.values()} | _routed_queues(app))
    task_postrun.connect(_close_thread_connections, weak=False)
    try:
        # Solo, one task at a time: enough for the admin's runs, and what the SQLite quick start does.
        with start_worker(app, pool="solo", perform_ping_check=False, queues=queues, shutdown_timeout=30,
                          loglevel="WARNING") as worker:
            yield worker
    finally:
        task_postrun.disconnect(_close_thread_connections)
        app.conf.update(saved_conf)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_pool(app)


def _reset_pool(app):
    """Forget the app's broker pools, so the next message uses the broker configured now.

    Dropped, not closed: kombu keeps pools in a registry keyed by broker URL, and a closed one
    would be handed to the next user of that URL ("Acquire on closed pool").
    """
    app._pool = None
    app.amqp._producer_pool = None


def _close_thread_connections(**kwargs):
    # The worker thread would otherwise keep a PostgreSQL connection open to the test database,
    # which pytest-django drops at the end of the session.
    from django.db import connections

    connections.close_all()


def _routed_queues(app):
    routes = app.conf.task_routes or {}
    if isinstance(routes, dict):
        return {r["queue"] for r in routes.values() if isinstance(r, dict) and r.get("queue")}
    return set()


AUDIT_TRIGGERS = importlib.import_module("checktick_app.governance.migrations.0002_audit_append_only")


@pytest.fixture(autouse=True)
def flushable_audit_log_on_sqlite(request):
    """A transactional test ends with a flush; on SQLite that is a DELETE, which R20's trigger refuses.

    The trigger is lifted for that flush only (after the test body and its assertions) and put back
    before the next test. PostgreSQL flushes with TRUNCATE, which row triggers do not see.
    """
    from django.db import connection

    if connection.vendor != "sqlite":
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up first, so its flush runs after this teardown
    _restore_audit_triggers()
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS governance_audit_no_delete")


@pytest.fixture(scope="module", autouse=True)
def audit_triggers_back_after_the_last_test(django_db_blocker):
    yield
    from django.db import connection

    if connection.vendor == "sqlite":
        with django_db_blocker.unblock():
            _restore_audit_triggers()


def _restore_audit_triggers():
    from django.db import connection

    with connection.cursor() as cursor:
        for statement in AUDIT_TRIGGERS.SQLITE:
            cursor.execute(statement.replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS", 1))


def log_in(page, username):
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")


def run_id_from(page):
    match = re.search(r"/admin/governance/governancerun/(\d+)/change/", page.url)
    assert match, f"not on a run page: {page.url}"
    return int(match.group(1))


FINAL = ".field-status_label .run-status-succeeded, .field-status_label .run-status-failed"


def wait_until_finished(page):
    """The run page refreshes itself while the run is in progress; wait until it shows a final status."""
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        try:
            page.wait_for_selector(FINAL, timeout=5_000)
            return
        except playwright_api.TimeoutError:
            page.wait_for_load_state()  # a refresh may have been under way
            if page.locator("#run-in-progress").count() == 0 and page.locator(FINAL).count() == 0:
                pytest.fail(f"run page {page.url} shows neither progress nor a final status:\n"
                            f"{page.inner_text('body')[:2000]}")
    pytest.fail(f"run page {page.url} did not show a final status within {RUN_TIMEOUT_MS / 1000:.0f} s")


def press(page, job, button):
    """Preview is one click; Run now shows what the run would do and needs a second click to confirm."""
    page.goto("/admin/governance/governancerun/")
    page.click(f"#start-{job} button[name={button}]")
    if button == "run":
        page.click("#confirm-run button[name=confirm]")


def section(page, title_start):
    """The survey names listed under a heading of the run's details."""
    heading = page.locator("h4.run-detail-heading", has_text=title_start).first
    text = heading.inner_text()
    count = int(re.search(r"\((\d+)\)$", text).group(1))
    if not count:
        return []
    return [li.strip() for li in heading.locator("xpath=following-sibling::ul[1]/li").all_inner_texts()]


@pytest.fixture
def operator_user(db):
    return make_user("operator", group=True)


@pytest.fixture
def due_surveys():
    """A survey in the 7-day window, one past its deletion date, one past its grace period, one held."""
    now = timezone.now()
    org = OrganisationFactory(name="Royal Infirmary audit team")
    return {
        "warn": closed_survey(now + timedelta(days=5), name="Sepsis six compliance", organisation=org),
        "soft": closed_survey(now - timedelta(hours=3), name="Theatre checklist audit", organisation=org),
        "hard": soft_deleted_survey(now - timedelta(days=31), name="Pressure ulcer survey 2024", organisation=org),
        "held": active_hold(closed_survey(now - timedelta(days=2), name="Medication errors review",
                                          organisation=org)).survey,
    }


# --- Run now and Preview (through Celery) ------------------------------------------------------

def test_run_now_completes_and_shows_its_counts(page, operator_user, due_surveys, celery_worker_for_admin):
    log_in(page, "operator")

    press(page, "data_governance", "run")
    run_id = run_id_from(page)
    assert "is queued as run" in page.locator("ul.messagelist").inner_text()
    wait_until_finished(page)

    assert page.locator(".field-status_label").inner_text().strip().endswith("Succeeded")
    counts = page.locator("table.run-counts").inner_text()
    assert re.search(r"Soft deleted\s+1", counts) and re.search(r"Hard deleted\s+1", counts)
    assert re.search(r"Skipped \(legal hold\)\s+1", counts)
    assert "Admin user (operator)" in page.locator(".field-trigger_label").inner_text()
    assert section(page, "Soft deleted")[0].startswith(f"#{due_surveys['soft'].pk} Theatre checklist audit")
    run = GovernanceRun.objects.get(pk=run_id)
    assert (run.status, run.trigger, run.triggered_by, run.dry_run) == ("succeeded", "admin", "operator", False)
    assert Survey.objects.get(pk=due_surveys["soft"].pk).deleted_at is not None
    assert not Survey.objects.filter(pk=due_surveys["hard"].pk).exists()

    page.goto("/admin/governance/governancerun/")
    row = page.locator("#result_list tbody tr").first
    assert f"#{run_id}" in row.inner_text() and "Succeeded" in row.inner_text()
    page.screenshot(path=f"{SCREENSHOTS}/checktick-run-history.png", full_page=True)


def test_run_now_shows_what_it_would_do_and_cancel_starts_nothing(page, operator_user, due_surveys):
    log_in(page, "operator")
    page.goto("/admin/governance/governancerun/")

    page.click("#start-data_governance button[name=run]")

    counts = page.locator("#confirm-counts").inner_text()
    assert re.search(r"7-day warnings to send \(surveys\)\s+1", counts)
    assert re.search(r"Surveys to soft delete\s+1", counts) and re.search(r"Surveys to hard delete \(for good\)\s+1", counts)
    assert re.search(r"Surveys held back by a legal hold\s+1", counts)
    page.screenshot(path=f"{SCREENSHOTS}/checktick-run-now-confirmation.png", full_page=True)
    page.click("#confirm-run a.cancel-link")
    assert page.url.endswith("/admin/governance/governancerun/")
    assert not GovernanceRun.objects.exists()


def test_a_refused_beat_run_shows_in_the_run_history_with_the_run_it_deferred_to(page, operator_user):
    today = timezone.now().date()
    tonight = close_run(open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=today), counts={})
    with pytest.raises(RunRefused):
        open_run(Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=today, on_celery=True)
    log_in(page, "operator")

    page.goto("/admin/governance/governancerun/")

    row = page.locator("#result_list tbody tr").first
    assert "Refused" in row.inner_text() and f"nothing ran: deferred to #{tonight.pk}" in row.inner_text()
    page.screenshot(path=f"{SCREENSHOTS}/checktick-refused-beat-run.png", full_page=True)
    row.locator("th a").click()
    assert page.locator(".field-deferred_to_link").inner_text().strip().endswith(f"run #{tonight.pk}")
    assert "already happened" in page.locator(".field-error").inner_text()


def test_preview_lists_the_due_surveys_and_changes_nothing(page, operator_user, due_surveys,
                                                           celery_worker_for_admin):
    before = list(Survey.objects.order_by("pk").values())
    log_in(page, "operator")

    press(page, "data_governance", "preview")
    run_id = run_id_from(page)
    wait_until_finished(page)

    assert "changed and sent nothing" in page.locator("#run-is-preview").inner_text()
    assert section(page, "Would send 7-day warnings")[0].startswith(f"#{due_surveys['warn'].pk} Sepsis six")
    assert section(page, "Would soft delete")[0].startswith(f"#{due_surveys['soft'].pk} Theatre checklist")
    assert section(page, "Would hard delete")[0].startswith(f"#{due_surveys['hard'].pk} Pressure ulcer")
    assert section(page, "Skipped (legal hold)")[0].startswith(f"#{due_surveys['held'].pk} Medication errors")
    page.screenshot(path=f"{SCREENSHOTS}/checktick-preview.png", full_page=True)
    # Nothing changed, nothing sent, nothing audited.
    assert list(Survey.objects.order_by("pk").values()) == before
    assert not DeletionWarning.objects.exists() and not AuditEvent.objects.exists() and mail.outbox == []
    assert GovernanceRun.objects.get(pk=run_id).dry_run is True


def test_a_hold_placed_in_the_admin_shows_as_skipped_in_the_next_preview(page, operator_user, due_surveys,
                                                                          celery_worker_for_admin):
    survey = due_surveys["soft"]
    log_in(page, "operator")

    page.goto(f"/admin/surveys/survey/{survey.pk}/change/")
    page.click("#place-legal-hold")
    page.fill("#id_reason", "Complaint under investigation")
    page.fill("#id_authority", "Trust legal services")
    page.click("input[name=_submit]")
    assert "Legal hold placed on “Theatre checklist audit”" in page.locator("ul.messagelist").inner_text()
    assert "Complaint under investigation" in page.locator("#legal_holds-group").inner_text()
    hold = LegalHold.objects.get(survey_id=survey.pk)
    assert hold.placed_by == operator_user
    assert AuditEvent.objects.get(action="hold_placed").actor == "operator"

    press(page, "data_governance", "preview")
    wait_until_finished(page)

    skipped = section(page, "Skipped (legal hold)")
    assert any(line.startswith(f"#{survey.pk} Theatre checklist audit") for line in skipped)
    assert section(page, "Would soft delete") == []
    assert Survey.objects.get(pk=survey.pk).deleted_at is None


def test_run_now_while_a_run_is_in_progress_names_it_and_starts_nothing(page, operator_user,
                                                                         celery_worker_for_admin):
    running = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
    log_in(page, "operator")

    press(page, "data_governance", "run")

    message = page.locator("ul.messagelist").inner_text()
    assert f"Not started: run #{running.pk} of data governance (management command" in message
    assert "still in progress" in message
    assert run_id_from(page) == running.pk
    assert GovernanceRun.objects.exclude(status=GovernanceRun.Status.REFUSED).get() == running
    assert GovernanceRun.objects.get(status=GovernanceRun.Status.REFUSED).deferred_to == running


def test_progress_cleanup_preview_then_run_now(page, operator_user, celery_worker_for_admin):
    from checktick_app.surveys.models import SurveyProgress
    from tests.factories import SurveyFactory, draft

    live = SurveyFactory(name="Staff wellbeing (live)")
    draft(live, timezone.now() - timedelta(days=45))  # expired 15 days ago
    draft(live, timezone.now() - timedelta(days=2))   # still fresh
    log_in(page, "operator")

    press(page, "progress_cleanup", "preview")
    wait_until_finished(page)
    preview_counts = page.locator("table.run-counts").inner_text()
    assert re.search(r"Expired drafts to delete\s+1", preview_counts)  # a preview says what it would do
    assert "Drafts deleted" not in preview_counts and "Complete" not in preview_counts
    assert SurveyProgress.objects.count() == 2

    press(page, "progress_cleanup", "run")
    wait_until_finished(page)
    assert re.search(r"Drafts deleted\s+1", page.locator("table.run-counts").inner_text())
    assert SurveyProgress.objects.count() == 1


# --- Forms and refusals (no Celery needed) -----------------------------------------------------

def test_extend_retention_with_a_bad_value_shows_the_error(page, operator_user):
    survey = closed_survey(timezone.now() + timedelta(days=20), name="Falls prevention audit", retention_months=6)
    log_in(page, "operator")

    page.goto(f"/admin/surveys/survey/{survey.pk}/change/")
    page.click("#extend-retention")
    page.fill("#id_months", "30")
    page.fill("#id_reason", "Longer follow-up")
    page.click("input[name=_submit]")

    errors = page.locator(".form-row.errors .errorlist").inner_text()
    assert "Retention would become 36 months; the maximum is 24" in errors
    assert Survey.objects.get(pk=survey.pk).retention_months == 6

    page.fill("#id_months", "6")
    page.click("input[name=_submit]")
    assert "retention is now 12 months" in page.locator("ul.messagelist").inner_text()


def test_a_user_who_is_not_staff_cannot_log_in_to_the_admin(page):
    make_user("notstaff", staff=False, permissions=["governance.view_governance"])

    log_in(page, "notstaff")

    assert "Please enter the correct username and password for a staff account" in page.content()
    page.goto("/admin/governance/governancerun/")
    assert page.url.split("?")[0].endswith("/admin/login/")


def test_staff_without_the_governance_permission_is_refused(page):
    make_user("plainstaff", permissions=["surveys.view_survey"])

    log_in(page, "plainstaff")
    index = page.locator("#content-main").inner_text()
    response = page.goto("/admin/governance/governancerun/")

    assert "Surveys" in index and "Governance runs" not in index
    assert response.status == 403
    assert page.goto("/admin/governance/governancerun/forecast/").status == 403
    assert page.goto("/admin/audit/auditevent/").status == 403


def test_forecast_page_reads_well(page, operator_user, due_surveys):
    closed_survey(timezone.now() + timedelta(days=12), name="Discharge summary quality")
    log_in(page, "operator")

    page.goto("/admin/governance/governancerun/")
    page.click("#forecast-link")
    rows = page.locator("#forecast-table tbody tr")

    assert rows.count() == 30
    first = rows.first.locator("td").all_inner_texts()
    assert first[1:] == ["1", "1", "0", "1", "1"]  # 30-day, 7-day, 1-day warnings; soft; hard (held: none)
    page.screenshot(path=f"{SCREENSHOTS}/checktick-forecast.png", full_page=True)
    page.goto("/admin/governance/governancerun/forecast/?days=400")  # the number field's max stops the form itself
    assert "Forecast from 1 to 365 days (got 400)." in page.locator("#forecast-error").inner_text()


WIDE_PAGES = ["/admin/governance/governancerun/", "/admin/surveys/survey/", "/admin/audit/auditevent/",
              "/admin/governance/deletionwarning/", "/admin/governance/governancerun/forecast/"]


def test_the_wide_tables_fit_a_1366_pixel_screen(browser, live_server, operator_user, due_surveys):
    from django.core.management import call_command

    from checktick_app.governance.services import run_data_governance

    call_command("load_demo_data")  # the quick start's data: realistic names and addresses
    run_data_governance(now=timezone.now())  # a run, audit entries and ledger rows to list
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        log_in(page, "operator")
        too_wide = {}
        for url in WIDE_PAGES:
            page.goto(url)
            # The page, and each sideways-scrolling box (the admin's .results) around a table: nothing hidden.
            width = page.evaluate("Math.max(document.documentElement.scrollWidth, ...[...document.querySelectorAll("
                                  "'.results, #content-main')].map(e => e.scrollWidth - e.clientWidth + 1366))")
            if width > 1366:
                too_wide[url] = width
    finally:
        context.close()

    assert too_wide == {}


# --- The runs page's charts (server-side SVG) ---------------------------------------------------

BARS = """selector => new Set([...document.querySelectorAll(selector)]
    .filter(r => parseFloat(r.getAttribute("height")) > 0).map(r => r.getAttribute("x"))).size"""


def test_the_runs_page_charts_show_one_bar_per_night_of_a_known_history_and_forecast(page, operator_user):
    now = timezone.now()

    def night(days_ago, status, counts):
        at = now - timedelta(days=days_ago)
        GovernanceRun.objects.create(job=Job.DATA_GOVERNANCE, trigger=Trigger.BEAT, scheduled_for=at.date(),
                                     started_at=at, heartbeat_at=at, finished_at=at, status=status, counts=counts)

    night(10, "succeeded", {"warnings": 2, "soft_deleted": 1})
    night(5, "succeeded", {"hard_deleted": 1, "skipped_legal_hold": 1})
    night(2, "failed", {"warnings": 1, "failed_items": 1})
    night(1, "succeeded", {})  # a quiet night: it ran, with nothing to do, so no bar
    closed_survey(now + timedelta(days=3, hours=1), name="Warned at 7 days tonight, at 1 day on day 2")
    log_in(page, "operator")

    page.goto("/admin/governance/governancerun/")

    # Nights -10, -5 and -2 ran with work; -9..-6, -4 and -3 are missed (after the first run on record).
    assert page.evaluate(BARS, "#history-chart svg rect.rect") == 3 + 6
    assert page.evaluate(BARS, "#history-chart svg .serie-5 rect.rect") == 6  # "No run (missed night)"
    assert page.evaluate(BARS, "#history-chart svg .serie-4 rect.rect") == 1  # the failed night
    # Tonight's 7-day warning, the 1-day warning two nights later, the soft deletion on day 4.
    assert page.evaluate(BARS, "#forecast-chart svg rect.rect") == 3
    assert page.locator("#history-chart details table tbody tr").count() == 90  # the text table fallback
    assert page.locator("#forecast-chart details table tbody tr").count() == 90
    assert not page.locator("script[src*='//'], link[href*='//']").count()  # no CDN: the admin works offline
    page.screenshot(path=f"{SCREENSHOTS}/checktick-runs-page-charts.png", full_page=True)


def test_a_viewer_downloads_the_compliance_report_from_the_runs_page(page):
    from checktick_app.governance.deletion import hard_delete_survey

    make_user("viewer", permissions=["governance.view_governance"])
    survey = soft_deleted_survey(timezone.now() - timedelta(days=31), name="Audit of discharge letters")
    hard_delete_survey(survey.pk)
    log_in(page, "viewer")

    page.goto("/admin/governance/governancerun/")
    page.select_option("#report-form select[name=format]", "csv")
    with page.expect_download() as download:
        page.click("#report-download")
    saved = download.value
    text = open(saved.path(), encoding="utf-8").read()

    assert saved.suggested_filename.startswith("checktick-governance-report-") and saved.suggested_filename.endswith(".csv")
    assert "# audit_head_hash: " + AuditEvent.objects.order_by("-id").first().entry_hash in text
    assert f"{survey.pk},Audit of discharge letters," in text and "hard deleted" in text


def test_the_compliance_report_is_refused_without_the_view_permission(page):
    make_user("plainstaff", permissions=["surveys.view_survey"])
    log_in(page, "plainstaff")

    response = page.goto("/admin/governance/governancerun/report/?from=2026-01-01&to=2026-12-31&format=md")

    assert response.status == 403
