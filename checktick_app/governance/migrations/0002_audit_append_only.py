"""R20 in the database itself: no UPDATE or DELETE of an audit entry, whoever connects."""

from django.db import migrations

TABLE = "governance_auditevent"

POSTGRES = f"""
CREATE OR REPLACE FUNCTION governance_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only (R20): % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER governance_audit_no_update BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION governance_audit_append_only();
"""
POSTGRES_REVERSE = f"""
DROP TRIGGER IF EXISTS governance_audit_no_update ON {TABLE};
DROP FUNCTION IF EXISTS governance_audit_append_only();
"""
SQLITE = [
    f"CREATE TRIGGER governance_audit_no_update BEFORE UPDATE ON {TABLE} "
    "BEGIN SELECT RAISE(ABORT, 'audit entries are append-only (R20): UPDATE refused'); END;",
    f"CREATE TRIGGER governance_audit_no_delete BEFORE DELETE ON {TABLE} "
    "BEGIN SELECT RAISE(ABORT, 'audit entries are append-only (R20): DELETE refused'); END;",
]
SQLITE_REVERSE = ["DROP TRIGGER IF EXISTS governance_audit_no_update;", "DROP TRIGGER IF EXISTS governance_audit_no_delete;"]


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE:
            schema_editor.execute(statement)


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(POSTGRES_REVERSE, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_REVERSE:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("governance", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
