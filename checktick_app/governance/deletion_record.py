"""Hard deletions that survive a database restore (issue 12).

Restoring a backup is the commonest way deleted personal data comes back: the restored database
holds every survey that was hard-deleted after the backup was taken. So each hard deletion is also
written, once its transaction has committed, to an append-only file outside the database, under
CHECKTICK_DELETION_RECORD_DIR: one JSON line with the database's identity, the survey's id and
creation time, the deletion time and the run id. Nothing personal (no name, no owner).

After a restore, `manage.py replay_deletions` deletes again, through the same hard-delete service,
every recorded survey the restored database brought back; until then a governance run refuses to
start (its warnings and deadlines would act on data that should not exist). The record only ever
speaks about the database it came from (audit.DatabaseIdentity, written at migrate time, restored
with the backup): a fresh or different database beside an old record is never refused nor replayed
into. The survey's creation time is matched too, so a new survey that happens to be given a
recorded id (the id sequence is restored with the backup) is never taken for the deleted one.
"""

import fcntl
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from checktick_app.audit.models import database_identity

RECORD_FILE = "hard-deletions.jsonl"
REPLAY_COMMAND = "python manage.py replay_deletions"


class DeletionsUndone(ImproperlyConfigured):
    """The database was restored to before some hard deletions: replay them before anything else runs."""


@dataclass(frozen=True)
class RecordedDeletion:
    survey_id: int
    survey_created_at: str
    deleted_at: str
    run_id: int | None


def record_path():
    return Path(settings.CHECKTICK_DELETION_RECORD_DIR) / RECORD_FILE


def _fsync_directory(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_deletion(survey_id, survey_created_at, deleted_at, run_id, database):
    """One line, appended under an exclusive lock and fsync'd before returning (the folder too, when the
    file is new): once this returns, a power cut or a restore cannot take the line back."""
    path = record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({
        "database": database, "survey_id": survey_id, "survey_created_at": survey_created_at.isoformat(),
        "deleted_at": deleted_at.isoformat(), "run_id": run_id,
    }, sort_keys=True) + "\n"
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock
    if created:
        _fsync_directory(path.parent)


def recorded_deletions(database=None):
    """This database's recorded hard deletions, the latest line per survey."""
    database = database or database_identity()
    path = record_path()
    if not path.exists():
        return {}
    found = {}
    with open(path, encoding="utf-8") as record:
        for number, text in enumerate(record, 1):
            text = text.strip()
            if not text:
                continue
            try:
                line = json.loads(text)
            except ValueError:
                # A line cut short by a crash mid-write is the only way to get one; the others still count.
                continue
            if line.get("database") == database:
                found[line["survey_id"]] = RecordedDeletion(
                    line["survey_id"], line["survey_created_at"], line["deleted_at"], line.get("run_id"))
    return found


def undone_deletions(chunk=1000):
    """Recorded deletions whose survey is back in this database (same id, same creation time)."""
    from checktick_app.surveys.models import Survey

    recorded = recorded_deletions()
    ids = sorted(recorded)
    undone = []
    for start in range(0, len(ids), chunk):
        rows = Survey.objects.filter(pk__in=ids[start:start + chunk]).values_list("pk", "created_at")
        for pk, created_at in rows:
            if datetime.fromisoformat(recorded[pk].survey_created_at) == created_at:
                undone.append(recorded[pk])
    return sorted(undone, key=lambda d: d.survey_id)


def refuse_while_deletions_undone(job):
    """Called when a data-governance run opens (runs.open_run): one clear line naming the command."""
    if job != "data_governance":
        return
    folder = record_path().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImproperlyConfigured(f"Governance run not started: CHECKTICK_DELETION_RECORD_DIR ({folder}) is not a "
                                   "folder this process can write to; hard deletions must be recorded there.")
    undone = undone_deletions()
    if undone:
        ids = ", ".join(str(d.survey_id) for d in undone[:10]) + (" ..." if len(undone) > 10 else "")
        raise DeletionsUndone(
            f"Governance run not started: the database holds {len(undone)} hard-deleted survey(s) that the "
            f"deletion record ({record_path()}) says are gone (ids {ids}); it was restored from a backup. "
            f"Run `{REPLAY_COMMAND}` first.")


@dataclass
class ReplayOutcome:
    deletion: RecordedDeletion
    removed: dict


def replay_deletions(*, dry_run=False, now=None):
    """Delete again every recorded survey the restored database brought back; each is audited as replayed."""
    from .deletion import hard_delete_survey

    outcomes = []
    for deletion in undone_deletions():
        if dry_run:
            outcomes.append(ReplayOutcome(deletion, {}))
            continue
        result = hard_delete_survey(deletion.survey_id, now=now, replay_of=deletion)
        if result.deleted:
            outcomes.append(ReplayOutcome(deletion, result.removed))
    return outcomes
