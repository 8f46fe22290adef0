-- Least-privilege roles for CheckTick on PostgreSQL (README.md, "Security").
--
-- Run once, as a superuser, in the application's database, with three psql variables:
--   psql -v owner_role=checktick -v app_role=checktick_app -v app_password=... -d checktick -f init-roles.sql
-- The docker-compose stack does this through 10-checktick-roles.sh on the first start of PostgreSQL.
--
--   owner_role  owns the schema and the tables: only `manage.py migrate` connects as it.
--   app_role    web, workers, beat, Flower and the cron commands: read and write rows, nothing else
--               (no DDL, no TRUNCATE), and on the audit table only SELECT and INSERT (grants.sql).

SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'app_role', :'app_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app_role') \gexec

SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', current_database(), :'app_role') \gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"app_role";

-- Tables and sequences that later migrations create get the same row-level rights automatically.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"app_role";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner_role" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"app_role";
