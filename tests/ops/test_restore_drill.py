"""The restore drill of README "Restoring a backup", for real, on PostgreSQL (pg_dump / pg_restore) and on
SQLite (`.backup` / `.restore`): back up, hard-delete surveys in a governance run, restore the backup; the
next governance run is refused, naming replay_deletions; the replay deletes them again; the report reads as
before and the audit chain verifies. A fresh database beside the old record is neither refused nor replayed
into. Every step goes through the real commands in their own processes, as an operator would type them.
"""

import json
import os
import subprocess
from urllib.parse import urlparse

import psycopg
import pytest

from tests.ops.helpers import PY, ROOT, require_tool

pytestmark = pytest.mark.subprocess

SEED = """
from datetime import timedelta
from django.utils import timezone
from checktick_app.governance.deletion import soft_delete_survey
from checktick_app.surveys.models import Survey, SurveyResponse
from checktick_app.surveys.services import close_survey
now = timezone.now()
for n in range(4):
    # No owner and no organisation: nobody to warn, so the night after the backup only hard-deletes.
    survey = Survey.objects.create(name=f"Drill survey {n}", status="published", retention_months=6,
                                   created_at=now - timedelta(days=400))
    SurveyResponse.objects.create(survey=survey, answers={"q": n})
    survey = close_survey(survey, now=now - timedelta(days=300 - n if n < 3 else 10))
    if n < 3:
        soft_delete_survey(survey.pk, now=survey.deletion_date + timedelta(hours=1))
print(sorted(Survey.objects.values_list("pk", flat=True)))
"""
COUNT_SURVEYS = "from checktick_app.surveys.models import Survey; print(Survey.objects.count())"


class Operator:
    """Types the commands and keeps a transcript of each, with its exit code."""

    def __init__(self, database_url, record_dir):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
        self.env.update(DATABASE_URL=database_url, CHECKTICK_DELETION_RECORD_DIR=str(record_dir),
                        SITE_URL="https://checktick.example.org", DEBUG="false",
                        DEFAULT_FROM_EMAIL="governance@checktick.example.org",
                        EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend")
        self.transcript = []

    def run(self, *args, shown=None):
        result = subprocess.run(list(args), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=180)
        self.transcript.append(f"$ {shown or ' '.join(args)}\n{result.stdout}{result.stderr}[exit {result.returncode}]\n")
        return result

    def manage(self, *args):
        return self.run(PY, "manage.py", *args, shown="python manage.py " + " ".join(args))

    def shell(self, code, what):
        return self.run(PY, "manage.py", "shell", "-v", "0", "-c", code, shown=f"python manage.py shell -c <{what}>")

    def report(self):
        result = self.manage("governance_report", "--from", "2000-01-01", "--to", "2100-01-01", "--format", "json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        rows = "\n".join(f"  survey {r['survey_id']}: {r['status']}, hard deleted {r['hard_deleted_at']}, "
                          f"replayed {r['replayed_at']}" for r in report["surveys"])
        self.transcript[-1] = (f"$ python manage.py governance_report --from 2000-01-01 --to 2100-01-01 --format json\n"
                               f"(abridged) audit head {report['audit_head_hash']}\n  summary {report['summary']}\n"
                               f"{rows}\n[exit 0]\n")
        return report


def drill(op, backup, restore, tmp_path, name):
    assert op.manage("migrate", "--no-input", "-v", "0").returncode == 0
    seeded = op.shell(SEED, "four surveys, three soft-deleted and past their grace period, one not due")
    assert seeded.returncode == 0, seeded.stderr
    backup()
    night = op.manage("process_data_governance")
    assert night.returncode == 0, night.stdout + night.stderr
    assert "Hard deleted: 3 surveys" in night.stdout
    before = op.report()
    assert before["summary"]["surveys_due"] == 3

    restore()
    assert op.shell(COUNT_SURVEYS, "count surveys").stdout.strip() == "4"  # the backup brought three back
    refused = op.manage("process_data_governance")
    assert refused.returncode == 2
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "3 hard-deleted survey(s)" in message and "Run `python manage.py replay_deletions` first" in message

    dry = op.manage("replay_deletions", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("Would delete again: survey") == 3
    replayed = op.manage("replay_deletions")
    assert replayed.returncode == 0, replayed.stderr
    assert "Deleted again 3 of 3 surveys the restored database brought back." in replayed.stdout
    assert op.shell(COUNT_SURVEYS, "count surveys").stdout.strip() == "1"
    again = op.manage("replay_deletions")
    assert again.returncode == 0 and "Nothing to replay" in again.stdout

    resumed = op.manage("process_data_governance")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = op.report()
    for row in after["surveys"]:
        if row["status"] == "hard deleted":
            assert row.pop("replayed_at") is not None  # the report says the restore brought it back
        else:
            row.pop("replayed_at")
    for row in before["surveys"]:
        row.pop("replayed_at")
    assert (after["summary"], after["surveys"], after["nights_with_no_successful_run"]) == (
        before["summary"], before["surveys"], before["nights_with_no_successful_run"])
    verified = op.manage("verify_audit_log")
    assert verified.returncode == 0 and verified.stdout.startswith("Audit log verified: ")
    (tmp_path / f"restore-drill-{name}.txt").write_text("\n".join(op.transcript))


def test_restore_drill_on_sqlite(tmp_path):
    sqlite3 = require_tool("sqlite3", "Debian's sqlite3")
    database, backup_file = tmp_path / "checktick.sqlite3", tmp_path / "backup.sqlite3"
    op = Operator(f"sqlite:///{database}", tmp_path / "deletion-record")
    drill(op, lambda: op.run(sqlite3, str(database), f".backup {backup_file}"),
          lambda: op.run(sqlite3, str(database), f".restore {backup_file}"), tmp_path, "sqlite")

    # A fresh database beside the same record: its surveys reuse the ids, and nothing refuses or replays.
    fresh = Operator(f"sqlite:///{tmp_path / 'fresh.sqlite3'}", tmp_path / "deletion-record")
    assert fresh.manage("migrate", "--no-input", "-v", "0").returncode == 0
    assert fresh.shell(SEED, "the same four surveys, same ids").stdout.strip() == "[1, 2, 3, 4]"
    assert "Nothing to replay" in fresh.manage("replay_deletions").stdout
    assert fresh.manage("process_data_governance").returncode == 0
    (tmp_path / "restore-drill-sqlite.txt").write_text("\n".join(op.transcript + ["# A fresh database beside the "
                                                                                   "same record\n"] + fresh.transcript))


def server_url():
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        url = os.environ.get("CHECKTICK_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/checktick_d")
    return urlparse(url)


@pytest.fixture
def scratch_postgres():
    """A database of this test process alone (`<name>_drill_<pid>`), dropped afterwards."""
    url = server_url()
    name = f"{url.path.lstrip('/') or 'checktick_d'}_drill_{os.getpid()}"
    admin = url._replace(path="/postgres").geturl()

    def recreate(create=True):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            if create:
                conn.execute(f'CREATE DATABASE "{name}"')

    recreate()
    try:
        yield url._replace(path=f"/{name}").geturl(), recreate
    finally:
        recreate(create=False)


def test_restore_drill_on_postgresql(tmp_path, scratch_postgres):
    pg_dump, pg_restore = require_tool("pg_dump", "postgresql-client"), require_tool("pg_restore", "postgresql-client")
    database_url, recreate = scratch_postgres
    dump = tmp_path / "backup.dump"
    op = Operator(database_url, tmp_path / "deletion-record")

    def restore():
        recreate()
        result = op.run(pg_restore, "--no-owner", "-d", database_url, str(dump),
                        shown=f"dropdb/createdb, then pg_restore --no-owner -d <database> {dump.name}")
        assert result.returncode == 0, result.stderr

    drill(op, lambda: op.run(pg_dump, "-Fc", "-f", str(dump), database_url,
                             shown=f"pg_dump -Fc -f {dump.name} <database>"), restore, tmp_path, "postgresql")
