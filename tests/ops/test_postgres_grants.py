"""The least-privilege PostgreSQL setup of README.md "Security", applied for real.

An owner migrates; ops/postgres/init-roles.sql and apply_grants.py give the application role row
rights only; then the application role runs both jobs and the demo data through the real commands,
and cannot change the schema or rewrite the audit log. Runs on the server of DATABASE_URL (or
CHECKTICK_TEST_PG_URL in the SQLite pass) in a scratch database `<name>_ops_<pid>` and
role `<name>_ops_<pid>_app` (checktick_d_ops_<pid> by default), created for the test and dropped
afterwards, so it never touches a database anyone uses, nor another run's.
"""

import os
import subprocess
from urllib.parse import urlparse

import psycopg
import pytest

from tests.ops.helpers import PY, ROOT

pytestmark = pytest.mark.subprocess



def server_url():
    """DATABASE_URL in the PostgreSQL pass; in the SQLite pass the same server as `make test-postgres`."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = os.environ.get("CHECKTICK_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/checktick_d")
    return urlparse(url)


def manage(database_url, *args, **extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.update(DATABASE_URL=database_url, SITE_URL="https://checktick.example.org", DEBUG="false",
               DEFAULT_FROM_EMAIL="governance@checktick.example.org",
               EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend", **extra_env)
    return subprocess.run([PY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def _drop(conn, database, role):
    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    conn.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.fixture
def scratch_database():
    """A database and role of this test process alone (`<name>_ops_<pid>`): the SQLite and PostgreSQL
    passes, or two developers' runs, may use the same server at once. Leftovers of dead runs go."""
    url = server_url()
    prefix = (url.path.lstrip("/") or "checktick_d") + "_ops_"
    name = f"{prefix}{os.getpid()}"
    app_role = f"{name}_app"
    admin = url._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        leftovers = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                 [prefix.replace("_", r"\_") + "%"]).fetchall()
        for (database,) in leftovers:
            pid = database[len(prefix):]
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                _drop(conn, database, f"{database}_app")
        _drop(conn, name, app_role)
        conn.execute(f'CREATE DATABASE "{name}"')
    owner_url = url._replace(path=f"/{name}").geturl()
    app_url = url._replace(path=f"/{name}", netloc=f"{app_role}@{url.hostname}:{url.port or 5432}").geturl()
    try:
        yield owner_url, app_url, url.username or "postgres", app_role
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            _drop(conn, name, app_role)


def test_the_application_role_runs_everything_with_row_rights_only(scratch_database):
    owner_url, app_url, owner, app_role = scratch_database
    init = subprocess.run(
        ["psql", owner_url, "-v", "ON_ERROR_STOP=1", "-v", f"owner_role={owner}", "-v", f"app_role={app_role}",
         "-v", "app_password=app-password-for-tests", "-f", str(ROOT / "ops/postgres/init-roles.sql")],
        capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr

    migrated = manage(owner_url, "manage.py", "migrate", "--no-input", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(owner_url) as conn:  # the default privileges already cover new tables
        assert conn.execute("SELECT has_table_privilege(%s, 'surveys_survey', 'DELETE')", [app_role]).fetchone()[0]
        assert conn.execute("SELECT has_table_privilege(%s, 'governance_auditevent', 'UPDATE')",
                            [app_role]).fetchone()[0], "before apply_grants.py the audit table is not yet narrowed"
    granted = manage(owner_url, "ops/postgres/apply_grants.py", CHECKTICK_DB_APP_ROLE=app_role)
    assert granted.returncode == 0, granted.stderr
    assert f"Granted row-level rights to {app_role}" in granted.stdout

    # The application role does the real work: demo data, both jobs, the health command.
    for args in (["load_demo_data"], ["process_data_governance"], ["cleanup_survey_progress"]):
        result = manage(app_url, "manage.py", *args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    assert manage(app_url, "manage.py", "process_data_governance", "--dry-run").returncode == 0
    assert manage(app_url, "manage.py", "migrate", "--check").returncode == 0

    with psycopg.connect(app_url, autocommit=True) as conn:
        def allowed(sql):
            try:
                conn.execute(sql)
                return True
            except psycopg.errors.InsufficientPrivilege:
                return False

        assert allowed("SELECT count(*) FROM governance_auditevent")
        assert conn.execute("SELECT count(*) FROM governance_auditevent").fetchone()[0] > 0
        assert not allowed("UPDATE governance_auditevent SET actor = 'x'")
        assert not allowed("DELETE FROM governance_auditevent")
        assert not allowed("TRUNCATE governance_auditevent")
        # Holds and extensions are evidence too (R24): added and read, never deleted.
        assert allowed("SELECT count(*) FROM surveys_legalhold") and allowed("SELECT count(*) FROM surveys_retentionextension")
        for table in ("surveys_legalhold", "surveys_retentionextension"):
            assert not allowed(f"DELETE FROM {table}")
            assert not allowed(f"TRUNCATE {table}")
        assert not allowed("CREATE TABLE intruder (id int)")
        assert not allowed("DROP TABLE surveys_survey")
        assert not allowed("ALTER TABLE surveys_survey ADD COLUMN x int")


def test_apply_grants_names_a_missing_role_instead_of_failing_obscurely(scratch_database):
    owner_url, _, _, _ = scratch_database
    assert manage(owner_url, "manage.py", "migrate", "--no-input", "-v", "0").returncode == 0
    result = manage(owner_url, "ops/postgres/apply_grants.py", CHECKTICK_DB_APP_ROLE="no_such_role_d")
    assert result.returncode == 2 and "Role no_such_role_d does not exist" in result.stderr
    result = manage(owner_url, "ops/postgres/apply_grants.py", CHECKTICK_DB_APP_ROLE="x; drop table y")
    assert result.returncode == 2 and "CHECKTICK_DB_APP_ROLE" in result.stderr
