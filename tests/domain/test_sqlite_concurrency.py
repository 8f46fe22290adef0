"""The quick start's SQLite file is shared by the worker, beat and the web admin at once.

A worker's write must wait for, not fail on, a page that is reading the same table ("database table
is locked" would lose a run). These tests run on the file configuration that every SQLite deployment
and the SQLite test pass use.
"""

import pytest
from django.db import connection, connections

from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.runs import Job, RunStatus, Trigger, heartbeat, open_run

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "sqlite", reason="the SQLite configuration"),
]


def test_sqlite_runs_in_wal_mode_with_immediate_transactions_and_a_busy_timeout():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] == 30_000
    assert connection.transaction_mode == "IMMEDIATE"


def test_a_worker_records_its_heartbeat_while_the_admin_is_halfway_through_reading_the_runs():
    run = open_run(Job.DATA_GOVERNANCE, trigger=Trigger.ADMIN, on_celery=True)
    for _ in range(3):
        GovernanceRun.objects.create(job=Job.PROGRESS_CLEANUP, trigger=Trigger.ADMIN, status=RunStatus.SUCCEEDED)
    admin_page = connections.create_connection("default")  # another process's connection, as the web admin has
    try:
        reading = admin_page.cursor()
        reading.execute("SELECT id FROM governance_governancerun ORDER BY id")
        assert reading.fetchone() is not None  # the statement is still open: the admin holds its read

        heartbeat(run)

        reading.close()
    finally:
        admin_page.close()
    before = run.heartbeat_at
    run.refresh_from_db()
    assert run.heartbeat_at > before
