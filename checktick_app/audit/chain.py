"""The audit log's hash chain: each entry carries the hash of the one before it (tamper evidence).

An entry's hash is SHA-256 over the previous entry's hash and a canonical serialisation of the
entry's own fields (sorted-key JSON, UTC times to the microsecond). Changing, removing or inserting
a row in the database breaks the chain at that row, and `manage.py verify_audit_log` names it.

Writers are serialised while they read the head and append after it, so the chain never forks: on
PostgreSQL a transaction-level advisory lock, held until the writer's transaction commits (the
next writer then reads the committed head); SQLite lets one writer at a time into the database
already (IMMEDIATE transactions, settings.py). Rows are chained in id order, which under the lock
is also the order they were written in.

The serialisation is versioned ("v1"): it must never change for entries already written.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import timezone as dt_timezone

from django.db import connections

GENESIS = "0" * 64
VERSION = "v1"
# pg_advisory_xact_lock key: any constant this project owns. "CTAUDIT" in ASCII, as a bigint.
ADVISORY_LOCK_KEY = 0x43544155444954
HASHED_FIELDS = ("created_at", "action", "survey_id", "survey_name", "actor_id", "actor", "run_id", "details")


def canonical(values):
    """The bytes an entry's hash covers: its fields, as the database will give them back."""
    created_at = values["created_at"].astimezone(dt_timezone.utc).isoformat(timespec="microseconds")
    document = {name: values[name] for name in HASHED_FIELDS if name != "created_at"}
    document["created_at"] = created_at
    # Round-trip the details through JSON first, as the JSONField does (tuples become lists, and so on).
    document["details"] = json.loads(json.dumps(document["details"] if document["details"] is not None else {}))
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash, values):
    digest = hashlib.sha256()
    digest.update(f"{VERSION}\n{prev_hash}\n".encode())
    digest.update(canonical(values))
    return digest.hexdigest()


def values_of(entry):
    return {name: getattr(entry, name) for name in HASHED_FIELDS}


def lock_chain(using):
    """Inside the caller's transaction: wait until no other writer is appending (see the module note)."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])


def head_hash(model, using):
    head = model._base_manager.using(using).order_by("-id").values_list("entry_hash", flat=True).first()
    return head or GENESIS


def link(entries, model, using):
    """Give each new entry, in order, the hash of the one before it; the caller holds the lock."""
    previous = head_hash(model, using)
    for entry in entries:
        entry.prev_hash = previous
        entry.entry_hash = previous = entry_hash(previous, values_of(entry))


# --- Verification ------------------------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool
    count: int
    head: str
    problem: str = ""
    entry_id: int | None = None


def _with_next(rows):
    """Each row with the one after it (None for the last): one pass over the log, one row ahead."""
    previous = sentinel = object()
    for row in rows:
        if previous is not sentinel:
            yield previous, row
        previous = row
    if previous is not sentinel:
        yield previous, None


def verify(model, using="default", chunk=2000):
    """Walk the whole log in id order; stop at the first entry that breaks the chain, and say how."""
    rows = model._base_manager.using(using).order_by("id").values("id", "prev_hash", "entry_hash", *HASHED_FIELDS)
    expected_prev, previous_id, count = GENESIS, None, 0
    seen = {GENESIS: None}  # hash -> id of the entry that has it
    for row, following in _with_next(rows.iterator(chunk_size=chunk)):
        if not row["entry_hash"] or not row["prev_hash"]:
            return Verdict(False, count, expected_prev, f"entry #{row['id']} was inserted outside the chain "
                           "(it carries no chain hash)", row["id"])
        recomputed = entry_hash(row["prev_hash"], row)
        if following is not None and following["prev_hash"] == expected_prev:
            # The next entry chains from this one's predecessor: this one was slipped in between.
            return Verdict(False, count, expected_prev, f"entry #{row['id']} was inserted out of order "
                           f"(the entry after it chains from #{previous_id})", row["id"])
        if row["prev_hash"] == expected_prev:
            if recomputed != row["entry_hash"]:
                return Verdict(False, count, expected_prev, f"entry #{row['id']} was changed "
                               "(its content no longer matches its hash)", row["id"])
        else:
            if row["prev_hash"] in seen:
                return Verdict(False, count, expected_prev, f"entry #{row['id']} was inserted out of order "
                               f"(it chains from #{seen[row['prev_hash']]}, not from #{previous_id})", row["id"])
            if recomputed != row["entry_hash"]:
                return Verdict(False, count, expected_prev, f"entry #{row['id']} was changed "
                               "(its content no longer matches its hash)", row["id"])
            after = f"after #{previous_id}" if previous_id is not None else "at the start of the log"
            return Verdict(False, count, expected_prev, f"an entry was removed {after}, before entry #{row['id']} "
                           "(the entry it chains from is missing)", row["id"])
        seen[row["entry_hash"]] = row["id"]
        expected_prev, previous_id, count = row["entry_hash"], row["id"], count + 1
    return Verdict(True, count, expected_prev)
