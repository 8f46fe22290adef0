"""GOVERNANCE_PING_URL: a healthchecks.io-style monitor hears start, success and failure of real runs."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from checktick_app.governance.runs import Job, Trigger, close_run, open_run, record_item
from checktick_app.governance.services import run_data_governance, run_progress_cleanup
from tests.support import free_port

pytestmark = pytest.mark.django_db


class Monitor:
    """A tiny HTTP server standing in for healthchecks.io; it records the paths it was pinged on."""

    def __init__(self):
        self.paths = []
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                monitor.paths.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def monitor():
    m = Monitor()
    yield m
    m.stop()


def test_each_job_pings_its_own_check_at_start_and_success(monitor, settings, django_capture_on_commit_callbacks):
    settings.GOVERNANCE_PING_URL = monitor.url + "/ping-key/checktick-{job}"

    with django_capture_on_commit_callbacks(execute=True):
        run_data_governance()
        run_progress_cleanup()

    assert monitor.paths == [
        "/ping-key/checktick-data_governance/start", "/ping-key/checktick-data_governance",
        "/ping-key/checktick-progress_cleanup/start", "/ping-key/checktick-progress_cleanup",
    ]


def test_a_failed_run_pings_fail(monitor, settings, django_capture_on_commit_callbacks):
    settings.GOVERNANCE_PING_URL = monitor.url + "/uuid"

    with django_capture_on_commit_callbacks(execute=True):
        run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.COMMAND)
        record_item(run, "hard_delete", 7, "failed", "boom")
        close_run(run, counts={})

    assert monitor.paths == ["/uuid/start", "/uuid/fail"]


def test_without_a_job_placeholder_only_data_governance_pings(monitor, settings, django_capture_on_commit_callbacks):
    settings.GOVERNANCE_PING_URL = monitor.url + "/uuid"

    with django_capture_on_commit_callbacks(execute=True):
        run_progress_cleanup()
        run_data_governance()

    assert monitor.paths == ["/uuid/start", "/uuid"]


def test_dry_runs_never_ping(monitor, settings, django_capture_on_commit_callbacks):
    settings.GOVERNANCE_PING_URL = monitor.url + "/{job}"

    with django_capture_on_commit_callbacks(execute=True):
        run_data_governance(dry_run=True)
        run_progress_cleanup(dry_run=True)

    assert monitor.paths == []


def test_an_unreachable_monitor_never_fails_the_run(settings, django_capture_on_commit_callbacks, caplog):
    settings.GOVERNANCE_PING_URL = f"http://127.0.0.1:{free_port()}/secret-key"

    with django_capture_on_commit_callbacks(execute=True):
        report = run_data_governance()

    assert report.status == "succeeded"
    assert "ping to the monitor failed" in caplog.text
    assert "secret-key" not in caplog.text


def test_no_url_no_ping(settings, django_capture_on_commit_callbacks):
    settings.GOVERNANCE_PING_URL = ""

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run_data_governance()

    assert callbacks == []
