"""R24 in the database: legal holds and retention extensions are append-only, like the audit log.

On PostgreSQL (production), row triggers refuse, whoever connects:
- deleting a hold or an extension (deleting a hold row would lift the hold with no audit and no notice);
- changing an extension;
- changing a hold, except its one removal (removed_at set once, with who and why) and a deleted
  user's id becoming NULL (the SET_NULL of placed_by/removed_by/extended_by).
Statement triggers refuse TRUNCATE of both tables and of the audit log, for every role, the owner
included (row triggers do not see TRUNCATE). The application role also loses DELETE and TRUNCATE on
them (ops/postgres/grants.sql). SQLite, the single-user quick start, relies on the models' guards.
"""

from django.db import migrations

HOLDS, EXTENSIONS, AUDIT = "surveys_legalhold", "surveys_retentionextension", "governance_auditevent"

POSTGRES = f"""
CREATE OR REPLACE FUNCTION checktick_evidence_refused() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only evidence (R24): % refused', TG_TABLE_NAME, TG_OP;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION checktick_hold_update_guard() RETURNS trigger AS $$
DECLARE
    removal_fields text[] := ARRAY['removed_at', 'removed_by_id', 'removal_reason'];
BEGIN
    -- Nothing but the removal fields and the placer's id may change.
    IF (to_jsonb(NEW) - removal_fields - 'placed_by_id') IS DISTINCT FROM (to_jsonb(OLD) - removal_fields - 'placed_by_id')
       OR (NEW.placed_by_id IS DISTINCT FROM OLD.placed_by_id AND NEW.placed_by_id IS NOT NULL) THEN
        RAISE EXCEPTION 'legal holds are append-only (R24): only their removal may be recorded';
    END IF;
    IF OLD.removed_at IS NOT NULL THEN
        -- Removed once and for all: only a deleted remover's id may become NULL.
        IF NEW.removed_at IS DISTINCT FROM OLD.removed_at OR NEW.removal_reason IS DISTINCT FROM OLD.removal_reason
           OR (NEW.removed_by_id IS DISTINCT FROM OLD.removed_by_id AND NEW.removed_by_id IS NOT NULL) THEN
            RAISE EXCEPTION 'legal holds are append-only (R24): a removed hold stays removed as recorded';
        END IF;
    ELSIF NEW.removed_at IS NULL AND (NEW.removed_by_id IS NOT NULL OR NEW.removal_reason <> '') THEN
        RAISE EXCEPTION 'legal holds are append-only (R24): a removal needs its time';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION checktick_extension_update_guard() RETURNS trigger AS $$
BEGIN
    IF (to_jsonb(NEW) - 'extended_by_id') IS DISTINCT FROM (to_jsonb(OLD) - 'extended_by_id')
       OR NEW.extended_by_id IS NOT NULL AND NEW.extended_by_id IS DISTINCT FROM OLD.extended_by_id THEN
        RAISE EXCEPTION 'retention extensions are append-only (R24): UPDATE refused';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER checktick_hold_no_delete BEFORE DELETE ON {HOLDS}
    FOR EACH ROW EXECUTE FUNCTION checktick_evidence_refused();
CREATE TRIGGER checktick_hold_update_guard BEFORE UPDATE ON {HOLDS}
    FOR EACH ROW EXECUTE FUNCTION checktick_hold_update_guard();
CREATE TRIGGER checktick_extension_no_delete BEFORE DELETE ON {EXTENSIONS}
    FOR EACH ROW EXECUTE FUNCTION checktick_evidence_refused();
CREATE TRIGGER checktick_extension_update_guard BEFORE UPDATE ON {EXTENSIONS}
    FOR EACH ROW EXECUTE FUNCTION checktick_extension_update_guard();
CREATE TRIGGER checktick_hold_no_truncate BEFORE TRUNCATE ON {HOLDS}
    FOR EACH STATEMENT EXECUTE FUNCTION checktick_evidence_refused();
CREATE TRIGGER checktick_extension_no_truncate BEFORE TRUNCATE ON {EXTENSIONS}
    FOR EACH STATEMENT EXECUTE FUNCTION checktick_evidence_refused();
CREATE TRIGGER checktick_audit_no_truncate BEFORE TRUNCATE ON {AUDIT}
    FOR EACH STATEMENT EXECUTE FUNCTION checktick_evidence_refused();
"""

POSTGRES_REVERSE = f"""
DROP TRIGGER IF EXISTS checktick_hold_no_delete ON {HOLDS};
DROP TRIGGER IF EXISTS checktick_hold_update_guard ON {HOLDS};
DROP TRIGGER IF EXISTS checktick_extension_no_delete ON {EXTENSIONS};
DROP TRIGGER IF EXISTS checktick_extension_update_guard ON {EXTENSIONS};
DROP TRIGGER IF EXISTS checktick_hold_no_truncate ON {HOLDS};
DROP TRIGGER IF EXISTS checktick_extension_no_truncate ON {EXTENSIONS};
DROP TRIGGER IF EXISTS checktick_audit_no_truncate ON {AUDIT};
DROP FUNCTION IF EXISTS checktick_evidence_refused();
DROP FUNCTION IF EXISTS checktick_hold_update_guard();
DROP FUNCTION IF EXISTS checktick_extension_update_guard();
"""

# The TRUNCATE triggers, by table: a test run's flush lifts them for a moment (tests/conftest.py).
TRUNCATE_TRIGGERS = {HOLDS: "checktick_hold_no_truncate", EXTENSIONS: "checktick_extension_no_truncate",
                     AUDIT: "checktick_audit_no_truncate"}


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(POSTGRES_REVERSE, params=None)


class Migration(migrations.Migration):
    dependencies = [("surveys", "0001_initial"), ("audit", "0003_schedule_changed_action")]
    operations = [migrations.RunPython(forwards, backwards)]
