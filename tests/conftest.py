"""Shared fixtures: governance settings, a fixed clock, and a real SMTP server (aiosmtpd)."""

import socket
import threading
from datetime import datetime, timezone
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller

NOW = datetime(2026, 1, 5, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """On SQLite, test against a file, as every deployment does.

    Django's default in-memory test database shares one cache between connections, and there a
    write that meets another thread's read fails at once ("database table is locked") instead of
    waiting out the busy timeout: the worker, live-server and test threads would run under locking
    that no deployment has.
    """
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test.sqlite3")


@pytest.fixture(autouse=True)
def governance_settings(settings):
    """A correctly configured host; tests that check misconfiguration override these."""
    settings.SITE_URL = "https://checktick.example.org"
    settings.DEFAULT_FROM_EMAIL = "governance@checktick.example.org"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.DEBUG = False
    return settings


@pytest.fixture(autouse=True)
def deletion_record_dir(settings, tmp_path):
    """Each test's hard deletions are recorded in a folder of its own, never in the project's var/."""
    settings.CHECKTICK_DELETION_RECORD_DIR = str(tmp_path / "deletion-record")
    return tmp_path / "deletion-record"


@pytest.fixture
def now():
    """The seed's example night: 5 January 2026, 02:00 UTC."""
    return NOW


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mailbox:
    """What a real SMTP server received, parsed; `refuse` lets a test make it answer 4xx or 5xx."""

    def __init__(self):
        self.messages = []
        self.refuse = {}  # address -> "451 try later" / "550 no such user"
        self.lock = threading.Lock()

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


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on 127.0.0.1; Django's SMTP backend is switched back on to reach it."""
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    try:
        yield mailbox
    finally:
        controller.stop()
