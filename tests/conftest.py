"""Shared fixtures: governance settings, a fixed clock, and a real SMTP server (aiosmtpd)."""

import threading
from datetime import datetime, timezone
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from tests.support import free_port

NOW = datetime(2026, 1, 5, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite, test against a file, as every deployment does: the worker, live-server and test
    threads, and the processes the tests start, then share it under the locking a deployment has
    (WAL, a busy timeout), and a write waits for a read instead of failing at once."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test.sqlite3")


@pytest.fixture(autouse=True)
def flushable_evidence_on_postgresql(request):
    """Transactional tests end with a flush, on PostgreSQL one TRUNCATE of every table, which the evidence
    tables' BEFORE TRUNCATE triggers refuse (surveys migration 0002, R24). The triggers are lifted for that
    flush only (after the test body, its assertions included) and are back when the next such test starts."""
    marker = request.node.get_closest_marker("django_db")
    transactional = (marker is not None and marker.kwargs.get("transaction")) or any(
        name in request.fixturenames for name in ("transactional_db", "live_server"))
    if not transactional:
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up first, so its flush runs after this teardown
    from django.db import connection

    if connection.vendor != "postgresql":
        yield
        return
    _set_truncate_triggers(connection, "ENABLE")
    yield
    _set_truncate_triggers(connection, "DISABLE")


def _set_truncate_triggers(connection, state):
    import importlib

    triggers = importlib.import_module("checktick_app.surveys.migrations.0002_holds_and_extensions_append_only")
    with connection.cursor() as cursor:
        for table, trigger in triggers.TRUNCATE_TRIGGERS.items():
            cursor.execute(f"ALTER TABLE {table} {state} TRIGGER {trigger}")


@pytest.fixture(autouse=True)
def governance_settings(settings):
    """A correctly configured host; tests that check misconfiguration override these."""
    settings.SITE_URL = "https://checktick.example.org"
    settings.DEFAULT_FROM_EMAIL = "governance@checktick.example.org"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.DEBUG = False
    return settings


@pytest.fixture(autouse=True)
def retries_without_waiting(monkeypatch):
    """Every retry policy keeps its number of retries, but waits nothing: production waits up to minutes
    between attempts (engine.RETRY_POLICIES), which is not what a test is about."""
    from checktick_app.governance import engine

    for name, default in engine.DEFAULT_RETRY_POLICIES.items():
        monkeypatch.setitem(engine.RETRY_POLICIES, name, engine.RetryPolicy(first=0, longest=0, retries=default.retries))


@pytest.fixture(autouse=True)
def deletion_record_dir(settings, tmp_path):
    """Each test's hard deletions are recorded in a folder of its own, never in the project's var/."""
    settings.CHECKTICK_DELETION_RECORD_DIR = str(tmp_path / "deletion-record")
    return tmp_path / "deletion-record"


@pytest.fixture
def now():
    """The seed's example night: 5 January 2026, 02:00 UTC."""
    return NOW


class Mailbox:
    """What a real SMTP server received, parsed; `refuse` lets a test make it answer 4xx or 5xx."""

    def __init__(self):
        self.messages = []
        self.refuse = {}  # address -> "451 try later" / "550 no such user"
        self.refuse_sender = None  # e.g. "550 5.7.1 Sender not permitted": the reply to every MAIL FROM
        self.senders = 0  # MAIL FROM commands seen: one per message the client tried to send
        self.sessions = []  # the SMTP sessions (client connections) that sent a MAIL FROM
        self.lock = threading.Lock()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.senders += 1
        if not any(seen is session for seen in self.sessions):
            self.sessions.append(session)
        if self.refuse_sender:
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.refuse.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def to(self, address):
        return [m for rcpts, m in self.messages if address.lower() in (r.lower() for r in rcpts)]

    @property
    def recipients(self):
        return sorted(r.lower() for rcpts, _ in self.messages for r in rcpts)


SMTP_LOGIN = ("checktick", "the-right-password")


@pytest.fixture
def smtp_server_with_login(settings):
    """A real SMTP server that requires AUTH (SMTP_LOGIN); Django logs in with EMAIL_HOST_USER/PASSWORD."""
    from aiosmtpd.smtp import AuthResult

    mailbox = Mailbox()
    mailbox.logins = 0

    def authenticator(server, session, envelope, mechanism, auth_data):
        mailbox.logins += 1
        given = (auth_data.login.decode(), auth_data.password.decode())
        return AuthResult(success=given == SMTP_LOGIN, handled=False)  # aiosmtpd answers 535 itself

    # PLAIN only, so that one login attempt is one AUTH command (smtplib would try LOGIN after a refused PLAIN).
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            auth_require_tls=False, auth_exclude_mechanism=["LOGIN"])
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", controller.port, False
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = SMTP_LOGIN
    try:
        yield mailbox
    finally:
        controller.stop()


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on 127.0.0.1; Django's SMTP backend is switched back on to reach it."""
    mailbox = Mailbox()
    # A test may restart the server on the same port: the fixture stops whichever controller runs then.
    mailbox.controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    mailbox.controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = mailbox.controller.port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    try:
        yield mailbox
    finally:
        mailbox.controller.stop()
