"""Give the application role its row-level rights after `migrate` (run as the owning role).

    python ops/postgres/apply_grants.py        # role from CHECKTICK_DB_APP_ROLE, default checktick_app

Does nothing on SQLite. The docker-compose `migrate` service and the Kubernetes migrate Job run it
right after `manage.py migrate`; see docs/security.md.
"""

import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")


def main():
    import django

    django.setup()
    from django.db import connection

    role = os.environ.get("CHECKTICK_DB_APP_ROLE", "checktick_app")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        print(f"CHECKTICK_DB_APP_ROLE={role!r} is not a plain PostgreSQL role name (a-z, 0-9, _).", file=sys.stderr)
        return 2
    if connection.vendor != "postgresql":
        print("Not PostgreSQL: no grants to apply.")
        return 0
    sql = (Path(__file__).with_name("grants.sql")).read_text().replace("{app_role}", connection.ops.quote_name(role))
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        if cursor.fetchone() is None:
            print(f"Role {role} does not exist: run ops/postgres/init-roles.sql first (docs/security.md).",
                  file=sys.stderr)
            return 2
        cursor.execute(sql)
    print(f"Granted row-level rights to {role} (audit log: SELECT and INSERT only).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
