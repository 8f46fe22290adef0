-- Row-level rights for the application role, applied after every `manage.py migrate` as the owner
-- (ops/postgres/apply_grants.py replaces {app_role}). Idempotent.
GRANT USAGE ON SCHEMA public TO {app_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app_role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app_role};
-- The audit log is append-only (R20): besides the triggers of migration 0002, the application role
-- may only read and add entries. Nothing it runs can rewrite or erase the evidence.
REVOKE UPDATE, DELETE, TRUNCATE ON governance_auditevent FROM {app_role};
-- Legal holds and retention extensions are evidence too (R24, surveys migration 0002): the application
-- role adds them, records a hold's removal (UPDATE, which the triggers narrow), and never deletes them.
REVOKE DELETE, TRUNCATE ON surveys_legalhold, surveys_retentionextension FROM {app_role};
