"""Tamper evidence: chain every audit entry by hash (audit.chain), and give the database an identity.

The two hash columns are added nullable and without a default, so SQLite adds them in place with
ALTER TABLE and keeps the append-only triggers (a table rebuild would drop them). Existing entries
are then chained in id order: the only UPDATE the audit table ever sees, made by the owning role
with the append-only triggers set aside for the length of this migration's transaction.

The identity row (a random UUID) is written here, at migrate time: a backup restored brings it
back, a fresh database gets a new one (governance.evidence ties the hard-deletion record to it).
"""

import importlib
import uuid

import django.utils.timezone
from django.db import migrations, models

from checktick_app.audit import chain

TABLE = "governance_auditevent"
append_only = importlib.import_module("checktick_app.governance.migrations.0002_audit_append_only")


def _chain_existing(AuditEvent):
    previous = chain.GENESIS
    entries = AuditEvent._base_manager
    for row in entries.order_by("id").values("id", *chain.HASHED_FIELDS).iterator(chunk_size=2000):
        current = chain.entry_hash(previous, row)
        entries.filter(pk=row["id"]).update(prev_hash=previous, entry_hash=current)
        previous = current


def chain_entries_in(AuditEvent, connection):
    """Chain every entry in id order, with the append-only triggers set aside meanwhile."""
    if not AuditEvent._base_manager.exists():
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER governance_audit_no_update")
            _chain_existing(AuditEvent)
            cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER governance_audit_no_update")
        elif connection.vendor == "sqlite":
            for statement in append_only.SQLITE_REVERSE:
                cursor.execute(statement)
            _chain_existing(AuditEvent)
            for statement in append_only.SQLITE:
                cursor.execute(statement)
        else:
            _chain_existing(AuditEvent)


def chain_existing_entries(apps, schema_editor):
    chain_entries_in(apps.get_model("audit", "AuditEvent"), schema_editor.connection)


def write_identity(apps, schema_editor):
    DatabaseIdentity = apps.get_model("audit", "DatabaseIdentity")
    if not DatabaseIdentity.objects.exists():
        DatabaseIdentity.objects.create(pk=1, uuid=uuid.uuid4())


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0001_initial"),
        ("governance", "0008_audit_log_moves_to_its_own_app"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent", name="prev_hash",
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
        migrations.AddField(
            model_name="auditevent", name="entry_hash",
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
        migrations.AlterField(
            model_name="auditevent", name="action",
            field=models.CharField(choices=[
                ("warning_sent", "Warning sent"), ("warning_failed", "Warning failed"),
                ("soft_deleted", "Soft deleted"), ("hard_deleted", "Hard deleted"),
                ("skipped_for_hold", "Skipped for legal hold"), ("hold_placed", "Legal hold placed"),
                ("hold_removed", "Legal hold removed"), ("retention_extended", "Retention extended"),
                ("deadline_moved", "Deadline moved on hold release"), ("closed", "Closed"),
                ("reopened", "Reopened"), ("restored", "Restored"),
                ("deletion_replayed", "Hard deletion replayed after a restore"),
            ], db_index=True, max_length=32),
        ),
        migrations.RunPython(chain_existing_entries, migrations.RunPython.noop),
        migrations.CreateModel(
            name="DatabaseIdentity",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("uuid", models.UUIDField(default=uuid.uuid4, editable=False, unique=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"verbose_name_plural": "database identity"},
        ),
        migrations.RunPython(write_identity, migrations.RunPython.noop),
    ]
