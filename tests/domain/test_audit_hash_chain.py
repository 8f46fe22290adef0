"""Tamper evidence (issue 12): every audit entry is chained by hash, and verify_audit_log names the first
entry that someone with the database owner's rights changed, removed or inserted behind the model's back."""

import importlib
from datetime import datetime, timedelta, timezone

import pytest
from django.apps import apps
from django.db import DatabaseError, connection, transaction

from checktick_app.audit import chain
from checktick_app.audit.models import AuditEvent
from checktick_app.audit.services import record_audit
from checktick_app.governance.services import run_data_governance
from tests.domain.helpers import run_command
from tests.factories import active_hold, closed_survey

pytestmark = pytest.mark.django_db

TABLE = "governance_auditevent"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def log():
    """Five entries written the ways the service writes them: one at a time, and in bulk."""
    entries = [record_audit("closed", survey_id=n, survey_name=f"Survey {n}", at=T0 + timedelta(hours=n),
                            deletion_date=(T0 + timedelta(days=180)).isoformat()) for n in (1, 2, 3)]
    entries += AuditEvent.objects.bulk_create([
        AuditEvent(action="skipped_for_hold", survey_id=n, survey_name=f"Survey {n}", created_at=T0,
                   details={"deletion_date": T0.isoformat()}, actor="system") for n in (4, 5)])
    return [AuditEvent.objects.get(pk=e.pk) for e in entries]


def without_append_only_triggers():
    """What an attacker with the owner's rights does first: set the append-only triggers aside."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER governance_audit_no_update")
        else:
            cursor.execute("DROP TRIGGER governance_audit_no_update")
            cursor.execute("DROP TRIGGER governance_audit_no_delete")


def verify():
    result = run_command("verify_audit_log")
    return result.returncode, (result.out + str(result.error or "")).strip()


def test_an_untouched_log_verifies_with_its_count_and_head_hash(log):
    code, output = verify()
    assert code == 0
    assert output == f"Audit log verified: 5 entries, head hash {log[-1].entry_hash}"


def test_each_entry_carries_the_hash_of_the_one_before_it_however_it_was_written(log):
    assert log[0].prev_hash == chain.GENESIS
    for before, after in zip(log, log[1:]):
        assert after.prev_hash == before.entry_hash
    assert len({e.entry_hash for e in log}) == 5


def test_the_entries_a_governance_run_writes_in_bulk_are_chained(now):
    held = closed_survey(deletion_date=now - timedelta(days=1))
    active_hold(held)
    run_data_governance(now=now)
    assert AuditEvent.objects.filter(action="skipped_for_hold", survey_id=held.pk).exists()
    assert verify()[0] == 0


def test_a_changed_entry_is_named(log):
    without_append_only_triggers()
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET details = %s WHERE id = %s",
                       ['{"deletion_date": "2027-01-01T00:00:00+00:00"}', log[1].pk])
    code, output = verify()
    assert code == 1
    assert f"entry #{log[1].pk} was changed" in output
    assert "1 entries before it verify" in output


def test_a_removed_entry_is_named_by_where_it_was(log):
    without_append_only_triggers()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [log[2].pk])
    code, output = verify()
    assert code == 1
    assert f"an entry was removed after #{log[1].pk}, before entry #{log[3].pk}" in output


def test_removing_the_first_entry_is_named_too(log):
    without_append_only_triggers()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [log[0].pk])
    code, output = verify()
    assert code == 1
    assert f"an entry was removed at the start of the log, before entry #{log[1].pk}" in output


def test_an_entry_inserted_in_sql_without_a_hash_is_named(log):
    """No trigger needs to go for this one: INSERT is allowed, so the chain is what catches it."""
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (created_at, action, survey_id, survey_name, actor, details) "
                       "VALUES (%s, 'hard_deleted', 9, 'Forged', 'system', '{}')", [T0])
    forged = AuditEvent.objects.order_by("-id").first()
    code, output = verify()
    assert code == 1
    assert f"entry #{forged.pk} was inserted outside the chain" in output


def test_an_entry_inserted_between_two_others_with_copied_hashes_is_named(log):
    """A forger who copies a real entry's chain fields into a row slipped in between two entries."""
    slot = log[2].pk
    without_append_only_triggers()
    with connection.cursor() as cursor:
        # Make room: move the last three entries up by 100 ids (an attacker with owner rights can).
        for entry in reversed(log[2:]):
            cursor.execute(f"UPDATE {TABLE} SET id = id + 100 WHERE id = %s", [entry.pk])
        cursor.execute(f"INSERT INTO {TABLE} (id, created_at, action, survey_id, survey_name, actor, details, "
                       "prev_hash, entry_hash) VALUES (%s, %s, 'closed', 9, 'Forged', 'system', '{}', %s, %s)",
                       [slot, T0, log[1].entry_hash, log[2].entry_hash])
    code, output = verify()
    assert code == 1
    assert f"entry #{slot} was inserted out of order" in output


def test_a_log_that_no_longer_leads_to_a_reported_head_hash_fails(log):
    reported_head = log[-1].entry_hash
    without_append_only_triggers()
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE} WHERE id = %s", [log[-1].pk])  # the tail: the chain alone can't tell
    assert verify()[0] == 0
    result = run_command("verify_audit_log", "--expect-head", reported_head)
    assert result.returncode == 1
    assert f"no entry has the expected hash {reported_head}" in str(result.error)


def test_the_migration_chains_entries_written_before_the_chain_existed_and_keeps_the_log_append_only():
    with connection.cursor() as cursor:
        for n in (1, 2, 3):
            cursor.execute(f"INSERT INTO {TABLE} (created_at, action, survey_id, survey_name, actor, details) "
                           "VALUES (%s, 'closed', %s, %s, 'system', %s)",
                           [T0 + timedelta(hours=n), n, f"Old survey {n}", '{"deletion_date": "2026-09-01"}'])
    assert verify()[0] == 1
    migration = importlib.import_module("checktick_app.audit.migrations.0002_hash_chain_and_database_identity")
    migration.chain_entries_in(apps.get_model("audit", "AuditEvent"), connection)
    code, output = verify()
    assert code == 0 and "3 entries" in output
    with pytest.raises(DatabaseError), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {TABLE} SET survey_name = 'Rewritten'")


@pytest.mark.django_db(transaction=True)
def test_writers_appending_at_once_never_fork_the_chain():
    """Eight threads, each writing entries one by one and in bulk, on PostgreSQL's concurrent connections."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite lets one writer at a time into the database: there is nothing to race")
    import threading

    from django.db import connections

    barrier = threading.Barrier(8)

    def writer(n):
        try:
            barrier.wait()
            for i in range(5):
                record_audit("closed", survey_id=n * 100 + i, survey_name=f"Writer {n}", at=T0)
                AuditEvent.objects.bulk_create([AuditEvent(action="skipped_for_hold", survey_id=n, created_at=T0)
                                                for _ in range(2)])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    code, output = verify()
    assert (code, output.split(",")[0]) == (0, "Audit log verified: 120 entries")
