"""Bench data: bulk inserts (PostgreSQL COPY, else bulk_create) with explicit ids, and a reset.

Two data sets, both built around a fixed `now` and spread at random over the id order (so due rows
are interleaved with the rest, as in a real table, not clustered at the end):

* `seed_governance(n)`: n surveys in the states of `SURVEY_MIX`, with owners, organisations and
  admins, the warning ledger a previous nightly run would have left, holds, and responses, drafts,
  tokens and exports on the surveys that are due for hard deletion. `expected` says what a run must
  do, computed here from the rows (R5, R7) independently of the code under test.
* `seed_drafts(m)`: m drafts of the three kinds, `EXPIRED_FRACTION` of them expired (mostly by
  `expires_at`, some only by the 90-day safety net), the rest fresh.
"""

import importlib
import json
import random
from datetime import timedelta
from math import ceil
from pathlib import Path

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, models, transaction
from django.db.models import Max

from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning, GovernanceRun, RunItem
from checktick_app.surveys.models import (
    LegalHold, Organisation, OrganisationMembership, RetentionExtension, Survey, SurveyAccessToken, SurveyExport,
    SurveyProgress, SurveyResponse,
)

User = get_user_model()
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

# Share of surveys in each state (of N). "open" (draft or published, no retention clock) takes what is left.
# The due shares are a catch-up night's worth, well above a steady night's (about 1/730 per threshold).
SURVEY_MIX = {
    "future": 0.30,            # closed, deletion date more than 30 days away: never selected
    "warned_30_already": 0.04,  # in the 30-day window, 30-day warning already sent: selected, nothing to do
    "warn_30": 0.02,           # in the 30-day window, not yet warned
    "warn_7": 0.01,            # in the 7-day window (30-day warning sent)
    "warn_1": 0.005,           # in the 1-day window (30- and 7-day warnings sent)
    "soft_due": 0.01,          # deletion date passed (up to 3 missed nights), 2 drafts each
    "grace": 0.02,             # soft-deleted, in the 30-day grace period: never selected
    "hard_due": 0.01,          # grace period over; responses, drafts, tokens, an export each
    "held_soft": 0.0025,       # due for soft deletion, under an active hold
    "held_hard": 0.0025,       # due for hard deletion, under an active hold
}
# The whole-run mix of issue 10's figures (`make bench`, scenario "run"): per 10,000 surveys, 1,000 in each
# warning window, 1,000 due for soft and 1,000 for hard deletion, 50 held; one recipient each (the owner).
RUN_MIX = {
    "future": 0.30, "warn_30": 0.10, "warn_7": 0.10, "warn_1": 0.10, "soft_due": 0.10, "hard_due": 0.10,
    "held_soft": 0.0025, "held_hard": 0.0025,
}
HARD_DUE_CHILDREN = {"responses": 20, "drafts": 3, "tokens": 3, "exports": 1}
USERS_PER_SURVEY = 0.25
SURVEYS_PER_ORGANISATION = 40
ADMINS_PER_ORGANISATION = 2
IN_ORGANISATION = 0.7
NO_EMAIL = 0.02  # users without an address: recorded as skipped (R7)
EXPIRED_FRACTION = 2 / 3
STALE_ONLY_FRACTION = 0.2  # of the expired drafts: expires_at in the future, untouched for 90+ days


def _table(model):
    return model._meta.db_table


def next_id(model):
    return (model.objects.aggregate(top=Max("pk"))["top"] or 0) + 1


class RawJSON(str):
    """A value already serialised for a JSON column (the same small document on every row)."""


DRAFT_DATA_JSON = RawJSON(json.dumps({"page": 2, "q1": "draft"}))


def bulk_insert(model, rows):
    """Insert dicts keyed by attname, ids included; PostgreSQL gets one COPY per table."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_create([model(**{k: json.loads(v) if isinstance(v, RawJSON) else v for k, v in row.items()})
                                   for row in rows], batch_size=2000)
        return
    columns = list(rows[0])
    fields = {f.attname: f for f in model._meta.concrete_fields}
    json_at = [i for i, c in enumerate(columns) if isinstance(fields[c], models.JSONField)]
    quoted = ", ".join(connection.ops.quote_name(fields[c].column) for c in columns)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {connection.ops.quote_name(_table(model))} ({quoted}) FROM STDIN") as copy:
            for row in rows:
                values = list(row.values())
                for i in json_at:
                    if not isinstance(values[i], RawJSON):
                        values[i] = json.dumps(values[i])
                copy.write_row(values)
        table = _table(model)
        cursor.execute(f"SELECT setval(pg_get_serial_sequence(%s, 'id'), (SELECT MAX(id) FROM {table}))", [table])


APP_MODELS = [
    SurveyProgress, SurveyAccessToken, SurveyResponse, SurveyExport, LegalHold, RetentionExtension, Survey,
    OrganisationMembership, Organisation, RunItem, GovernanceRun, DeletionWarning, AuditEvent, User,
]


def _truncate(cursor, tables):
    """PostgreSQL TRUNCATE; inside a transaction (the smoke test) deferred foreign-key checks must fire first.

    The evidence tables refuse TRUNCATE (surveys migration 0002, R24); the bench's own scratch database
    is emptied between scenarios, so their triggers are lifted for this one statement and put back.
    """
    evidence = importlib.import_module("checktick_app.surveys.migrations.0002_holds_and_extensions_append_only")
    guarded = [(table, trigger) for table, trigger in evidence.TRUNCATE_TRIGGERS.items()
               if connection.ops.quote_name(table) in tables.split(", ")]
    if connection.in_atomic_block:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    for table, trigger in guarded:
        cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
    cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    for table, trigger in guarded:
        cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
    if connection.in_atomic_block:
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def reset():
    """Empty every table the bench writes. The audit log is append-only (R20): on PostgreSQL, TRUNCATE with
    the evidence's TRUNCATE triggers lifted for the statement; elsewhere (SQLite in the smoke test) its rows
    are left, they reference nothing. The bench's own deletion record goes with them: the surveys it names
    are gone from the emptied database, and ids start again."""
    record = Path(settings.CHECKTICK_DELETION_RECORD_DIR)
    if record.name.startswith("checktick-bench-deletion-record-"):  # bench.run's folder, never the operator's
        for path in record.glob("*"):
            path.unlink()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            _truncate(cursor, ", ".join(connection.ops.quote_name(_table(m)) for m in APP_MODELS))
            return
        with transaction.atomic():
            for model in APP_MODELS:
                if model is not AuditEvent:
                    cursor.execute(f"DELETE FROM {connection.ops.quote_name(_table(model))}")


def _snapshot_name(model):
    return connection.ops.quote_name(f"bench_snapshot_{_table(model)}")


def snapshot(model):
    """Copy a table aside, so a destructive pass can be repeated on the very same rows (see restore)."""
    drop_snapshot(model)
    with connection.cursor() as cursor:
        table = connection.ops.quote_name(_table(model))
        cursor.execute(f"CREATE TABLE {_snapshot_name(model)} AS SELECT * FROM {table}")


def restore(model):
    table = connection.ops.quote_name(_table(model))
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            _truncate(cursor, table)
        else:
            cursor.execute(f"DELETE FROM {table}")
        cursor.execute(f"INSERT INTO {table} SELECT * FROM {_snapshot_name(model)}")


def drop_snapshot(model):
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {_snapshot_name(model)}")


def analyze():
    """Fresh planner statistics (and, outside a transaction on PostgreSQL, a vacuumed visibility map)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            verb = "ANALYZE" if connection.in_atomic_block else "VACUUM ANALYZE"
            for model in APP_MODELS:
                cursor.execute(f"{verb} {connection.ops.quote_name(_table(model))}")
        else:
            cursor.execute("ANALYZE")


def _users(rng, count, now, prefix, no_email=NO_EMAIL):
    first = next_id(User)
    rows = [
        {"id": first + i, "password": "!", "last_login": None, "is_superuser": False,
         "username": f"{prefix}{first + i}", "first_name": "", "last_name": "", "is_staff": False,
         "is_active": True, "date_joined": now - 400 * DAY,
         "email": "" if rng.random() < no_email else f"{prefix}{first + i}@bench.example.org"}
        for i in range(count)
    ]
    bulk_insert(User, rows)
    return rows


def _counts(n, mix=SURVEY_MIX):
    counts = {state: max(1, round(n * share)) for state, share in mix.items()}
    counts["open"] = n - sum(counts.values())
    if counts["open"] < 0:
        raise ValueError(f"{n} surveys are too few for the mix; use at least {n - counts['open']}")
    return counts


def _between(rng, low, high):
    return low + timedelta(seconds=rng.randrange(int((high - low).total_seconds())))


def seed_governance(n, now, *, seed=42, mix=SURVEY_MIX, in_organisation=IN_ORGANISATION, no_email=NO_EMAIL):
    """n surveys in the `mix` states; returns the counts and what a run must do (`expected`).

    RUN_MIX with in_organisation=0 and no_email=0 is the whole-run data: one recipient per survey."""
    rng = random.Random(seed)
    now = now.replace(microsecond=0)
    users = _users(rng, max(10, ceil(n * USERS_PER_SURVEY)), now, "gov", no_email)
    email_of = {u["id"]: u["email"] for u in users}
    user_ids = list(email_of)

    first_org, first_membership = next_id(Organisation), next_id(OrganisationMembership)
    organisations, memberships, admins = [], [], {}
    for i in range(max(2, ceil(n / SURVEYS_PER_ORGANISATION))):
        picked = rng.sample(user_ids, 1 + ADMINS_PER_ORGANISATION)
        org_id = first_org + i
        organisations.append({"id": org_id, "name": f"Organisation {org_id}", "owner_id": picked[0], "created_at": now})
        admins[org_id] = (picked[0], picked[1:])
        for user_id in picked[1:]:
            memberships.append({"id": first_membership + len(memberships), "organisation_id": org_id,
                                "user_id": user_id, "role": OrganisationMembership.Role.ADMIN})
    bulk_insert(Organisation, organisations)
    bulk_insert(OrganisationMembership, memberships)

    counts = {"warned_30_already": 0, "held_soft": 0, "held_hard": 0, **_counts(n, mix)}
    states = [state for state, count in counts.items() for _ in range(count)]
    rng.shuffle(states)
    first_survey = next_id(Survey)
    surveys, children = [], {"responses": [], "drafts": [], "tokens": [], "exports": [], "holds": [], "ledger": []}
    expected = {"warned": {30: 0, 7: 0, 1: 0}, "warning_emails": 0, "soft_deleted": counts["soft_due"],
                "hard_deleted": counts["hard_due"], "held": counts["held_soft"] + counts["held_hard"],
                "notice_emails": 0, "selected_for_warning": 0}
    grace = timedelta(days=settings.CHECKTICK_SOFT_DELETE_GRACE_DAYS)
    for i, state in enumerate(states):
        survey_id = first_survey + i
        owner = rng.choice(user_ids)
        org = rng.choice(organisations)["id"] if rng.random() < in_organisation else None
        row = {"id": survey_id, "name": f"Survey {survey_id} <b>&</b>", "owner_id": owner, "organisation_id": org,
               "status": Survey.Status.CLOSED, "created_at": now - 800 * DAY, "closed_at": None,
               "retention_months": 6, "deletion_date": None, "deleted_at": None, "hard_deletion_date": None}
        deletion = {
            "future": lambda: _between(rng, now + 31 * DAY, now + 700 * DAY),
            "warned_30_already": lambda: _between(rng, now + 8 * DAY, now + 29 * DAY),
            "warn_30": lambda: _between(rng, now + 8 * DAY, now + 29 * DAY),
            "warn_7": lambda: _between(rng, now + DAY + HOUR, now + 6 * DAY),
            "warn_1": lambda: _between(rng, now + HOUR, now + 23 * HOUR),
            "soft_due": lambda: _between(rng, now - 3 * DAY, now - HOUR),
            "held_soft": lambda: _between(rng, now - 3 * DAY, now - HOUR),
            "grace": lambda: _between(rng, now - 29 * DAY, now - DAY),
            "hard_due": lambda: _between(rng, now - grace - 3 * DAY, now - grace - HOUR),
            "held_hard": lambda: _between(rng, now - grace - 3 * DAY, now - grace - HOUR),
        }.get(state)
        if deletion is None:
            row["status"] = rng.choice([Survey.Status.DRAFT, Survey.Status.PUBLISHED])
            surveys.append(row)
            continue
        row["deletion_date"] = deletion()
        row["closed_at"] = row["deletion_date"] - relativedelta(months=6)
        if state in {"grace", "hard_due", "held_hard"}:
            row["deleted_at"] = row["deletion_date"]
            row["hard_deletion_date"] = row["deleted_at"] + grace
        surveys.append(row)

        # R7 recipients, computed from the rows: owner, organisation owner, admins; one per user.
        recipients = [owner]
        if org:
            org_owner, org_admins = admins[org]
            recipients += [u for u in (org_owner, *org_admins) if u not in recipients]
        with_email = [u for u in recipients if email_of[u]]
        done = {"warned_30_already": [30], "warn_7": [30], "warn_1": [30, 7], "soft_due": [30, 7, 1],
                "held_soft": [30, 7, 1], "grace": [30, 7, 1, 0], "hard_due": [30, 7, 1, 0],
                "held_hard": [30, 7, 1, 0]}.get(state, [])
        for threshold in done:
            for user_id in recipients:
                sent = bool(email_of[user_id])
                children["ledger"].append({
                    "survey_id": survey_id, "survey_name": row["name"], "deletion_date": row["deletion_date"],
                    "threshold_days": threshold, "recipient_id": user_id, "recipient_email": email_of[user_id],
                    "status": DeletionWarning.Status.SENT if sent else DeletionWarning.Status.SKIPPED,
                    "skip_reason": "" if sent else "no email address", "attempts": int(sent), "last_error": "",
                    "created_at": now - 20 * DAY, "claimed_at": None, "sent_at": now - 20 * DAY if sent else None,
                    "run_id": None})
        if state.startswith("warn"):
            expected["selected_for_warning"] += 1
        if state in {"warn_30", "warn_7", "warn_1"} and with_email:
            expected["warned"][int(state.split("_")[1])] += 1
            expected["warning_emails"] += len(with_email)
        if state == "soft_due":
            expected["notice_emails"] += len(with_email)
        if state in {"held_soft", "held_hard"}:
            children["holds"].append({"survey_id": survey_id, "removed_at": None})
        elif state == "future" and rng.random() < 0.02:
            children["holds"].append({"survey_id": survey_id, "removed_at": now - 100 * DAY})  # history
        if state in {"soft_due", "held_soft"}:
            children["drafts"] += [{"survey_id": survey_id, "kind": kind} for kind in ("user", "session")]
        if state in {"hard_due", "held_hard", "grace"}:
            kids = HARD_DUE_CHILDREN if state != "grace" else {"responses": 5, "drafts": 0, "tokens": 0, "exports": 0}
            children["responses"] += [survey_id] * kids["responses"]
            children["exports"] += [survey_id] * kids["exports"]
            children["tokens"] += [survey_id] * kids["tokens"]
            children["drafts"] += [{"survey_id": survey_id, "kind": kind}
                                   for kind in ("user", "token", "session")[:kids["drafts"]]]
    bulk_insert(Survey, surveys)

    name = {s["id"]: s["name"] for s in surveys}
    start = next_id(LegalHold)
    bulk_insert(LegalHold, [
        {"id": start + i, "survey_id": h["survey_id"], "survey_name": name[h["survey_id"]], "reason": "Litigation",
         "authority": "Trust legal team", "placed_by_id": None, "placed_at": now - 200 * DAY,
         "removed_at": h["removed_at"], "removed_by_id": None,
         "removal_reason": "Case closed" if h["removed_at"] else ""}
        for i, h in enumerate(children["holds"])
    ])
    start = next_id(SurveyResponse)
    bulk_insert(SurveyResponse, [
        {"id": start + i, "survey_id": sid, "submitted_by_id": None, "answers": {"q1": "yes", "q2": 3},
         "submitted_at": now - 300 * DAY}
        for i, sid in enumerate(children["responses"])
    ])
    start = next_id(SurveyExport)
    bulk_insert(SurveyExport, [
        {"id": start + i, "survey_id": sid, "requested_by_id": None, "created_at": now - 250 * DAY,
         "file_name": f"export-{sid}.csv"}
        for i, sid in enumerate(children["exports"])
    ])
    start = next_id(SurveyAccessToken)
    tokens = [{"id": start + i, "survey_id": sid, "token": f"gov-{start + i:012d}", "created_at": now - 300 * DAY,
               "used_at": None} for i, sid in enumerate(children["tokens"])]
    bulk_insert(SurveyAccessToken, tokens)
    token_of = {}
    for t in tokens:
        token_of.setdefault(t["survey_id"], t["id"])
    start = next_id(SurveyProgress)
    bulk_insert(SurveyProgress, [
        _draft(start + i, d["survey_id"], d["kind"], rng.choice(user_ids), token_of.get(d["survey_id"]),
               updated_at=now - 5 * DAY)
        for i, d in enumerate(children["drafts"])
    ])
    start = next_id(DeletionWarning)
    bulk_insert(DeletionWarning, [{"id": start + i, **row} for i, row in enumerate(children["ledger"])])
    return {
        "surveys": n, "states": counts, "users": len(users), "organisations": len(organisations),
        "holds": len(children["holds"]), "responses": len(children["responses"]), "drafts": len(children["drafts"]),
        "tokens": len(tokens), "exports": len(children["exports"]), "ledger_rows": len(children["ledger"]),
        "expected": expected,
    }


def _draft(draft_id, survey_id, kind, user_id, token_id, *, updated_at, expires_at=None):
    expires_at = expires_at or updated_at + timedelta(days=settings.CHECKTICK_PROGRESS_EXPIRY_DAYS)
    return {"id": draft_id, "survey_id": survey_id, "user_id": user_id if kind == "user" else None,
            "session_key": f"s{draft_id:031d}" if kind == "session" else None,
            "access_token_id": token_id if kind == "token" else None, "data": DRAFT_DATA_JSON,
            "created_at": updated_at - DAY, "updated_at": updated_at, "expires_at": expires_at}


DRAFT_KINDS = (("session", 0.5), ("user", 0.3), ("token", 0.2))


def seed_drafts(m, now, *, seed=7):
    """m drafts on published surveys; EXPIRED_FRACTION expired (R16), spread through the id order."""
    rng = random.Random(seed)
    users = _users(rng, max(10, m // 20), now, "drf")
    user_ids = [u["id"] for u in users]
    first_survey = next_id(Survey)
    surveys = [{"id": first_survey + i, "name": f"Live survey {first_survey + i}", "owner_id": rng.choice(user_ids),
                "organisation_id": None, "status": Survey.Status.PUBLISHED, "created_at": now - 200 * DAY,
                "closed_at": None, "retention_months": 6, "deletion_date": None, "deleted_at": None,
                "hard_deletion_date": None} for i in range(max(5, m // 200))]
    bulk_insert(Survey, surveys)
    first_token = next_id(SurveyAccessToken)
    tokens = [{"id": first_token + i, "survey_id": surveys[i % len(surveys)]["id"],
               "token": f"drf-{first_token + i:012d}", "created_at": now - 200 * DAY, "used_at": None}
              for i in range(max(10, m // 10))]
    bulk_insert(SurveyAccessToken, tokens)

    expiry = timedelta(days=settings.CHECKTICK_PROGRESS_EXPIRY_DAYS)
    stale = timedelta(days=settings.CHECKTICK_PROGRESS_STALE_DAYS)
    first = next_id(SurveyProgress)
    rows, expired = [], {"user": 0, "token": 0, "session": 0}
    (kind_a, share_a), (kind_b, share_b), (kind_c, _) = DRAFT_KINDS
    for i in range(m):
        pick = rng.random()
        kind = kind_a if pick < share_a else kind_b if pick < share_a + share_b else kind_c
        token = tokens[rng.randrange(len(tokens))] if kind == "token" else None
        survey_id = token["survey_id"] if token else surveys[rng.randrange(len(surveys))]["id"]
        user_id = user_ids[rng.randrange(len(user_ids))] if kind == "user" else None
        token_id = token["id"] if token else None
        if rng.random() < EXPIRED_FRACTION:
            expired[kind] += 1
            if rng.random() < STALE_ONLY_FRACTION:  # expiry pushed out by a bug or an import; the safety net
                updated = _between(rng, now - 400 * DAY, now - stale - DAY)
                row = _draft(first + i, survey_id, kind, user_id, token_id, updated_at=updated,
                             expires_at=now + 30 * DAY)
            else:
                updated = _between(rng, now - 200 * DAY, now - expiry - HOUR)
                row = _draft(first + i, survey_id, kind, user_id, token_id, updated_at=updated,
                             expires_at=updated + expiry)
        else:
            updated = _between(rng, now - expiry + HOUR, now)
            row = _draft(first + i, survey_id, kind, user_id, token_id, updated_at=updated,
                         expires_at=updated + expiry)
        rows.append(row)
    bulk_insert(SurveyProgress, rows)
    return {"drafts": m, "expired": sum(expired.values()), "expired_by_kind": expired,
            "fresh": m - sum(expired.values()), "surveys": len(surveys), "tokens": len(tokens), "users": len(users)}
