"""The Celery runtime under test: the real Redis (a database number of its own), an in-process worker.

pytest-celery's worker fixtures need Docker, which these machines do not have, so the worker is
Celery's own embedded one (`celery.contrib.testing.worker.start_worker`), consuming the three real
queues from Redis in a thread of the test process. On both databases the worker threads and any
process of their own (beat) use the test database itself (on SQLite a file: tests/conftest.py).
"""

import importlib
import os
from contextlib import contextmanager

import kombu.pools
import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.db import connection, connections

from celery_app import app
from tests.support import wait_until

TEST_REDIS_URL = os.environ.get("CHECKTICK_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
QUEUES = ("governance", "deletion", "email")
# Every key this test process writes (queues, bindings, unacked messages, results) starts with this,
# so two test runs sharing one Redis database never consume or flush each other's messages.
KEY_PREFIX = f"checktick-test-{os.getpid()}:"


def on_sqlite():
    return connection.vendor == "sqlite"


@pytest.fixture(scope="package", autouse=True)
def celery_on_test_redis():
    """Point the app (and any process started from here) at the test Redis, and fail clearly if it is down."""
    client = redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"The Celery tests need Redis at CHECKTICK_TEST_REDIS_URL={TEST_REDIS_URL} ({exc}). "
                    "Start it (see /work/shared/README.md) or point the variable at one.")
    saved = {k: os.environ.get(k) for k in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    # Celery lets these two variables win over the configuration, so set both places.
    os.environ["CELERY_BROKER_URL"] = os.environ["CELERY_RESULT_BACKEND"] = TEST_REDIS_URL
    app.conf.update(
        broker_url=TEST_REDIS_URL, result_backend=TEST_REDIS_URL,
        broker_transport_options={**app.conf.broker_transport_options, "global_keyprefix": KEY_PREFIX},
        result_backend_transport_options={**app.conf.result_backend_transport_options,
                                          "global_keyprefix": KEY_PREFIX},
    )
    app.loader.import_default_modules()
    reset_broker_connections()  # a pool made before this point would still talk to another Redis
    yield client
    _delete_own_keys(client)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def reset_broker_connections():
    """Drop the app's cached broker connections, so the next message goes where the configuration says."""
    kombu.pools.reset()  # kombu's process-wide pools, keyed by connection
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None


AUDIT_TRIGGERS = importlib.import_module("checktick_app.governance.migrations.0002_audit_append_only")


def _restore_sqlite_audit_triggers():
    with connection.cursor() as cursor:
        for statement in AUDIT_TRIGGERS.SQLITE:
            cursor.execute(statement.replace("CREATE TRIGGER", "CREATE TRIGGER IF NOT EXISTS", 1))


@pytest.fixture(autouse=True)
def flushable_audit_log_on_sqlite(request):
    """Transactional tests end with a flush; on SQLite that is a DELETE, which R20's trigger refuses.

    The trigger is lifted for the flush only (after the test body, its assertions included) and is
    back before the next test, and after the last one. PostgreSQL flushes with TRUNCATE, which
    row triggers do not see, so nothing is lifted there.
    """
    marker = request.node.get_closest_marker("django_db")
    if not marker or not marker.kwargs.get("transaction") or connection.vendor != "sqlite":
        yield
        return
    request.getfixturevalue("_django_db_helper")  # set up first, so its flush runs after this teardown
    _restore_sqlite_audit_triggers()
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS governance_audit_no_delete")
    _lifted_audit_trigger.add(connection.settings_dict["NAME"])


_lifted_audit_trigger = set()  # test databases whose last transactional test left the trigger lifted


@pytest.fixture(scope="package", autouse=True)
def audit_triggers_back_after_the_last_test(django_db_blocker):
    yield
    # Only where a test lifted it: a run of settings-only tests never set up a test database.
    if _lifted_audit_trigger:
        with django_db_blocker.unblock():
            _restore_sqlite_audit_triggers()
        _lifted_audit_trigger.clear()


def _delete_own_keys(client):
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)


class TestRedis:
    """The test Redis as this process's Celery sees it: queue names resolve under KEY_PREFIX."""

    def __init__(self, client):
        self.client = client

    def queued(self, queue):
        """The raw messages waiting in a queue, oldest first (kombu pushes left, pops right)."""
        return list(reversed(self.client.lrange(KEY_PREFIX + queue, 0, -1)))

    def push_again(self, queue, messages):
        self.client.lpush(KEY_PREFIX + queue, *messages)


@pytest.fixture
def redis_db(celery_on_test_redis):
    """The test Redis with none of this process's earlier messages left in a queue."""
    _delete_own_keys(celery_on_test_redis)
    return TestRedis(celery_on_test_redis)


def _close_thread_connections(**kwargs):
    # Worker threads would otherwise keep PostgreSQL connections open to the test database,
    # which pytest-django drops at the end of the session.
    connections.close_all()


@contextmanager
def running_worker(queues=QUEUES):
    """A real Celery worker in this process, consuming `queues` from the test Redis."""
    # On SQLite the quick start runs one task at a time (devstack: --concurrency 1); so do these tests.
    pool, concurrency = ("solo", 1) if on_sqlite() else ("threads", 4)
    task_postrun.connect(_close_thread_connections, weak=False)
    try:
        with start_worker(app, pool=pool, concurrency=concurrency, perform_ping_check=False, queues=list(queues),
                          shutdown_timeout=30, loglevel=os.environ.get("CHECKTICK_TEST_WORKER_LOGLEVEL", "WARNING")) as worker:
            yield worker
    finally:
        task_postrun.disconnect(_close_thread_connections)


@pytest.fixture
def worker(transactional_db, redis_db):
    with running_worker() as w:
        yield w


def wait_for_run(run_id, timeout=60):
    from checktick_app.governance.models import GovernanceRun

    def finished():
        run = GovernanceRun.objects.get(pk=run_id)
        return run if run.status != GovernanceRun.Status.RUNNING else None

    return wait_until(finished, timeout, what=f"run #{run_id} to finish")
