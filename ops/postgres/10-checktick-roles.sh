#!/bin/sh
# PostgreSQL image init script (/docker-entrypoint-initdb.d/): creates the application role on the
# first start of an empty data volume. POSTGRES_USER owns the database and runs the migrations.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v owner_role="$POSTGRES_USER" -v app_role="${POSTGRES_APP_USER:-checktick_app}" \
    -v app_password="$POSTGRES_APP_PASSWORD" -f /checktick/init-roles.sql
