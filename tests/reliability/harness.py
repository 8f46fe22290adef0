"""The trial harness: real processes (Redis, PostgreSQL databases, SMTP, Celery worker and beat).

Everything a trial starts is owned by a `Trial` and stopped in its `close()` (process groups killed,
database dropped), so a failing trial leaves no orphans. Nothing here touches pytest-django's test
database: each trial gets its own PostgreSQL database, `trial_<pid>_<n>`, copied from a migrated
template, and the Django side of a trial runs in subprocesses (`driver.py`, worker, beat) that
connect to it through DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

import psycopg
from aiosmtpd.controller import Controller
from tests.support import TimedOut, free_port, wait_until  # noqa: F401 - the trials use them through harness

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
CELERY = str(VENV_BIN / "celery")
# manage.py, through the trials' wrapper that may scale the SMTP retry waits (trial_manage.py).
MANAGE = [PYTHON, "-m", "tests.reliability.trial_manage"]

# The PostgreSQL server the trials create their databases on (never pytest-django's database).
TRIAL_PG_URL = os.environ.get("TRIAL_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
TEMPLATE_PREFIX = "trial_template_"

# Secrets the trial processes get, so the security checks can look for them in every output.
TRIAL_SECRET_KEY = "trial-secret-key-Zq8Xw3Pp0LmN7"
TRIAL_SMTP_PASSWORD = "trial-smtp-password-Kd92jf"
TRIAL_DB_PASSWORD = "trialDbPassword4471"
SECRETS = (TRIAL_SECRET_KEY, TRIAL_SMTP_PASSWORD, TRIAL_DB_PASSWORD)


class HarnessError(RuntimeError):
    pass


# --- processes -----------------------------------------------------------------------------------


class Proc:
    """A subprocess in its own process group, its output captured to a file."""

    def __init__(self, name, args, env, log_path, cwd=ROOT):
        self.name = name
        self.args = args
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def output(self):
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self):
        """SIGKILL the whole group (the worker's pool children die with their parent)."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._log.flush()

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL the group if it has not gone within `timeout` seconds."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the group (a pool child that outlived its parent) goes too.
        self.signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        finally:
            self._log.close()


class RedisServer:
    """A redis-server of the trial's own, on a free port; `persistent` keeps messages over a restart."""

    def __init__(self, workdir, persistent=False):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.persistent = persistent
        self.proc = None
        self.generation = 0

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--daemonize", "no", "--dir", str(self.workdir)]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.generation += 1
        self.proc = Proc(f"redis{self.generation}", args, os.environ.copy(),
                         self.workdir / f"redis-{self.generation}.log")
        wait_until(self.ping, 10, what=f"redis-server on port {self.port}")
        return self

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", *args], capture_output=True, text=True,
                             timeout=10)
        return out.stdout

    def stop(self, hard=False):
        if self.proc:
            if hard:
                self.proc.kill()
            self.proc.stop()


# --- PostgreSQL ----------------------------------------------------------------------------------


def pg_admin():
    return psycopg.connect(TRIAL_PG_URL, autocommit=True)


def _migrations_digest():
    h = hashlib.sha256()
    for path in sorted(ROOT.glob("checktick_app/*/migrations/*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update((ROOT / "pyproject.toml").read_bytes())
    return h.hexdigest()[:12]


def _db_url(name, password=None):
    base = TRIAL_PG_URL.rsplit("/", 1)[0]
    if password:
        scheme, rest = base.split("://", 1)
        creds, host = rest.split("@", 1)
        user = creds.split(":", 1)[0]
        base = f"{scheme}://{user}:{password}@{host}"
    return f"{base}/{name}"


# Templates of other migration states kept on the server: checkouts with different migrations (worktrees,
# branches) share it, and each session's trials copy their own template for as long as it runs.
TEMPLATES_KEPT = 4


def ensure_template():
    """A migrated database to copy each trial's from; rebuilt when a migration changes."""
    name = TEMPLATE_PREFIX + _migrations_digest()
    with pg_admin() as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('checktick trial template'))")
        try:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                # The oldest templates beyond TEMPLATES_KEPT go (the newest, most likely still in use, stay).
                for (old,) in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname LIKE %s AND datname NOT LIKE %s "
                    "ORDER BY oid DESC OFFSET %s", [TEMPLATE_PREFIX + "%", "%_building", TEMPLATES_KEPT]
                ).fetchall():
                    conn.execute(f'DROP DATABASE IF EXISTS "{old}" WITH (FORCE)')
                building = name + "_building"
                conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{building}"')
                env = base_env(_db_url(building))
                out = subprocess.run([PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env,
                                     capture_output=True, text=True, timeout=300)
                if out.returncode:
                    conn.execute(f'DROP DATABASE IF EXISTS "{building}" WITH (FORCE)')
                    raise HarnessError(f"migrating the trial template failed:\n{out.stdout}\n{out.stderr}")
                conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('checktick trial template'))")
    return name


_db_counter = 0


class TrialDatabase:
    def __init__(self, template):
        global _db_counter
        _db_counter += 1
        self.name = f"trial_{os.getpid()}_{_db_counter}_{int(time.time() * 1000) % 100000}"
        with pg_admin() as conn:
            try:
                conn.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{template}"')
            except psycopg.errors.InvalidCatalogName:
                # Dropped by a session of another checkout (one whose harness drops every other template):
                # built again, since this session's migrations are what the trial must run on.
                conn.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{ensure_template()}"')

    def url(self, password=None):
        return _db_url(self.name, password)

    def connect(self):
        return psycopg.connect(self.url(), autocommit=True)

    def query(self, sql, params=None):
        with self.connect() as conn:
            return conn.execute(sql, params or []).fetchall()

    def scalar(self, sql, params=None):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def terminate_backends(self):
        with pg_admin() as conn:
            return conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()", [self.name]).fetchone()[0]

    def set_allow_connections(self, allowed):
        with pg_admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')

    def drop(self):
        with pg_admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


FINGERPRINT_TABLES = (
    "auth_user", "surveys_organisation", "surveys_organisationmembership", "surveys_survey",
    "surveys_surveyresponse", "surveys_surveyprogress", "surveys_surveyaccesstoken", "surveys_surveyexport",
    "surveys_legalhold", "surveys_retentionextension", "governance_auditevent", "governance_deletionwarning",
    "governance_governancerun", "governance_runitem",
)


def fingerprint(db):
    digests = {}
    with db.connect() as conn:
        for table in FINGERPRINT_TABLES:
            digests[table] = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t.id), '')) FROM {table} t"
            ).fetchone()
    return digests


def drop_leftover_databases():
    """Databases of trial processes that died without cleaning up (their pid no longer exists)."""
    with pg_admin() as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname ~ '^trial_[0-9]+_'").fetchall():
            pid = int(name.split("_")[1])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except PermissionError:
                pass


# --- SMTP ------------------------------------------------------------------------------------------


@dataclass
class Delivery:
    rcpts: list
    message: object
    accepted_at: float  # time.time() when the server decided to accept (just before its 250)
    warning_id: int | None


class FaultySmtp:
    """An aiosmtpd handler with fault modes, and the mailbox of what it accepted.

    - `refuse_all_until`: answer RCPT with 451 (try later) until this time.time();
    - `reject`: addresses answered with 550 (no such user), for good;
    - `delay`: seconds each DATA takes before the reply (a slow server);
    - `quit_delay`: seconds before the reply to QUIT (the round trip to a server further away);
    - `on_data`: called with the DATA's number when it starts (before the delay);
    - `on_accept`: called with each Delivery right before the 250 goes out.
    A message whose client vanished during the delay is not counted: the server never said 250.
    """

    def __init__(self):
        self.deliveries: list[Delivery] = []
        self.refused = []  # (time, address, reply)
        self.reject = {}
        self.refuse_all_until = 0.0
        self.delay = 0.0
        self.quit_delay = 0.0  # a server further away: the QUIT round trip takes this long
        self.on_accept = None
        self.on_data = None  # called with the number of this DATA (1, 2, ...) when it starts
        self.data_count = 0
        self.refuse_logins = False  # answer every AUTH with 535 (a wrong password, as the server sees it)
        self.logins = 0
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            self.refused.append((time.time(), address, self.reject[address.lower()]))
            return self.reject[address.lower()]
        if time.time() < self.refuse_all_until:
            self.refused.append((time.time(), address, "451"))
            return "451 4.3.2 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        """Any login is accepted unless `refuse_logins`; clients that do not log in are served as before."""
        from aiosmtpd.smtp import AuthResult

        with self.lock:
            self.logins += 1
        return AuthResult(success=not self.refuse_logins, handled=False)

    async def handle_QUIT(self, server, session, envelope):
        if self.quit_delay:
            await asyncio.sleep(self.quit_delay)
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.data_count += 1
            number = self.data_count
        if self.on_data:
            self.on_data(number)
        if self.delay:
            await asyncio.sleep(self.delay)
        transport = getattr(server, "transport", None)
        if transport is None or transport.is_closing():
            return "421 4.4.2 Connection lost before acceptance"
        message = message_from_bytes(envelope.content, policy=policy.default)
        header = message.get("X-CheckTick-Warning")
        delivery = Delivery(list(envelope.rcpt_tos), message, time.time(), int(header) if header else None)
        with self.lock:
            self.deliveries.append(delivery)
        if self.on_accept:
            self.on_accept(delivery)
        return "250 Message accepted for delivery"

    # what the invariant checks read
    def count(self):
        with self.lock:
            return len(self.deliveries)

    def snapshot(self):
        with self.lock:
            return list(self.deliveries)

    def by_warning(self):
        found = {}
        for d in self.snapshot():
            found.setdefault(d.warning_id, []).append(d)
        return found


class WindowProbe:
    """Measures the at-least-once window from outside: from the SMTP server's acceptance of a warning to
    the moment its ledger row is seen 'sent' in the database (a dedicated connection polls every ~1 ms)."""

    def __init__(self, db):
        self.db = db
        self.windows_ms = {}  # warning id -> ms
        self.pending = {}  # warning id -> accepted_at (perf_counter)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def on_accept(self, delivery):
        if delivery.warning_id is not None:
            with self.lock:
                self.pending[delivery.warning_id] = time.perf_counter()

    def _poll(self):
        with self.db.connect() as conn:
            while not self.stop.is_set():
                with self.lock:
                    ids = list(self.pending)
                if not ids:
                    time.sleep(0.001)
                    continue
                rows = conn.execute("SELECT id FROM governance_deletionwarning WHERE id = ANY(%s) AND status = 'sent'",
                                    [ids]).fetchall()
                seen = time.perf_counter()
                with self.lock:
                    for (wid,) in rows:
                        accepted = self.pending.pop(wid, None)
                        if accepted is not None:
                            self.windows_ms[wid] = (seen - accepted) * 1000
                time.sleep(0.001)

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        return sorted(self.windows_ms.values())


class SmtpServer:
    def __init__(self):
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every SMTP line at INFO
        self.handler = FaultySmtp()
        # PLAIN only: one login attempt is one AUTH command (smtplib would try LOGIN after a refused PLAIN).
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=free_port(),
                                     authenticator=self.handler.authenticate, auth_require_tls=False,
                                     auth_exclude_mechanism=["LOGIN"])
        self.controller.start()
        self.port = self.controller.port

    def stop(self):
        self.controller.stop()


# --- environment and launchers ---------------------------------------------------------------------


def base_env(database_url, **extra):
    """The environment of every Django process of a trial: a correctly configured production host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHECKTICK_", "EMAIL_", "CELERY_"))}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update({
        "DATABASE_URL": database_url,
        "SECRET_KEY": TRIAL_SECRET_KEY,
        "DEBUG": "false",
        "SITE_URL": "https://checktick.example.org",
        "DEFAULT_FROM_EMAIL": "governance@checktick.example.org",
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": "25",
        "EMAIL_TIMEOUT": "10",
        "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
    })
    for k, v in extra.items():
        if v is None:
            env.pop(k, None)  # None unsets a variable (the bad-input cases use it)
        else:
            env[k] = str(v)
    return env


@dataclass
class Trial:
    """One trial's world. Use as a context manager: everything started is stopped on exit."""

    name: str
    persistent_redis: bool = False
    template: str | None = None
    env_extra: dict = field(default_factory=dict)
    workdir: Path = None
    # Its process logs and Redis files are removed on exit unless kept (a failed trial; TRIAL_KEEP_LOGS=1).
    keep_workdir: bool = field(default_factory=lambda: bool(os.environ.get("TRIAL_KEEP_LOGS")))
    db: TrialDatabase = None
    redis: RedisServer = None
    smtp: SmtpServer = None
    procs: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def __enter__(self):
        self.workdir = Path(tempfile.mkdtemp(prefix=f"trial-{self.name}-"))
        try:
            self.db = TrialDatabase(self.template or ensure_template())
            self.redis = RedisServer(self.workdir, persistent=self.persistent_redis).start()
            self.smtp = SmtpServer()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=5)
            except Exception:  # noqa: BLE001 - teardown carries on whatever one process does
                pass
        if self.redis:
            self.redis.stop()
        if self.smtp:
            self.smtp.stop()
        if self.db:
            self.db.drop()
        if self.workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def mailbox(self):
        return self.smtp.handler

    def env(self, **extra):
        return base_env(self.db.url(password=TRIAL_DB_PASSWORD), **{
            "REDIS_URL": self.redis.url, "EMAIL_PORT": self.smtp.port, "EMAIL_HOST_PASSWORD": TRIAL_SMTP_PASSWORD,
            **self.env_extra, **extra,
        })

    def _log(self, name):
        n = sum(1 for p in self.procs if p.name.startswith(name))
        return self.workdir / f"{name}-{n + 1}.log"

    def start_worker(self, *, concurrency=2, queues=None, app="celery_app", ready_timeout=30, name="worker",
                     extra_args=(), **env):
        args = [CELERY, "-A", app, "worker", "--loglevel", "INFO", "--concurrency", str(concurrency),
                "--hostname", f"{name}{len(self.procs)}@%h", "--without-gossip", "--without-mingle",
                "--without-heartbeat", *extra_args]
        if queues:
            args += ["-Q", ",".join(queues)]
        proc = Proc(name, args, self.env(**env), self._log(name))
        self.procs.append(proc)
        wait_until(lambda: " ready." in proc.output() or not proc.alive(), ready_timeout,
                   what=f"celery worker {name} to be ready")
        if not proc.alive():
            raise HarnessError(f"worker exited at start:\n{proc.output()[-3000:]}")
        return proc

    def start_beat(self, *, name="beat", app="celery_app", **env):
        schedule = self.workdir / f"{name}-{len(self.procs)}-schedule"
        args = [CELERY, "-A", app, "beat", "--loglevel", "INFO", "-S", "django_celery_beat.schedulers:DatabaseScheduler",
                "--schedule", str(schedule), "--pidfile", ""]
        proc = Proc(name, args, self.env(**env), self._log(name))
        self.procs.append(proc)
        return proc

    def driver(self, action, timeout=120, check=True, env=None, **params):
        """Run one Django-side action (driver.py) against the trial database; returns its JSON result."""
        out = subprocess.run(
            [PYTHON, "-m", "tests.reliability.driver", action, json.dumps(params)], cwd=ROOT,
            env=self.env(**(env or {})), capture_output=True, text=True, timeout=timeout,
        )
        with open(self.workdir / "driver.log", "a") as log:
            log.write(f"$ driver {action} {params}\n{out.stdout}{out.stderr}\n")
        if check and out.returncode:
            raise HarnessError(f"driver {action} failed ({out.returncode}):\n{out.stdout}\n{out.stderr[-4000:]}")
        result = None
        for line in out.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        return result if check else (out.returncode, out.stdout, out.stderr, result)

    def fingerprint(self):
        """A digest of every row the governance service could change: equal digests, unchanged data."""
        return fingerprint(self.db)

    def manage(self, *args, timeout=120, **env):
        """manage.py (through trial_manage.py, which is manage.py unless TRIAL_SMTP_RETRY_SCALE is given)."""
        return subprocess.run([*MANAGE, *args], cwd=ROOT, env=self.env(**env), capture_output=True,
                              text=True, timeout=timeout)

    def logs(self):
        return {str(p.log_path.name): p.output() for p in self.procs}
