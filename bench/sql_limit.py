"""The set-based limit of a governance run: its mutations as a handful of SQL statements, with their audit
rows, in one transaction that is rolled back (the data stays for the run it is compared with).

What it leaves out, by design: the emails themselves (the smtplib limit covers them), the audit hash chain,
the per-survey row locks and re-checks, the ledger's claims. It is the floor, not a way to run the job.
"""

import time
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction

from checktick_app.governance.models import DeletionWarning
from checktick_app.surveys.models import Survey

LEDGER = DeletionWarning._meta.db_table
AUDIT = "governance_auditevent"
SURVEYS = Survey._meta.db_table
CHILDREN = ("surveys_surveyprogress", "surveys_surveyresponse", "surveys_surveyexport", "surveys_surveyaccesstoken")


class _Rollback(Exception):
    pass


def _ids(queryset):
    sql, params = queryset.values_list("pk", flat=True).query.sql_with_params()
    return sql, list(params)


def _ids_table(cursor, name, sql, params):
    """The due ids, fixed before any mutation makes them drop out of the rule."""
    cursor.execute(f"CREATE TEMP TABLE {name} (id bigint PRIMARY KEY) ON COMMIT DROP")
    cursor.execute(f"INSERT INTO {name} (id) {sql}", params)


def _ledger_and_audit(cursor, ids_table, threshold, kind, date_column, now):
    """Ledger rows (sent) and WARNING_SENT audit rows for each owner of the surveys in `ids_table`."""
    cursor.execute(
        f"INSERT INTO {LEDGER} (survey_id, survey_name, deletion_date, threshold_days, kind, recipient_id, "
        "recipient_email, status, skip_reason, attempts, last_error, created_at, claimed_at, claim_token, sent_at, "
        f"run_id) SELECT s.id, s.name, s.{date_column}, %s, %s, u.id, u.email, 'sent', '', 1, '', %s, NULL, '', %s, "
        f"NULL FROM {SURVEYS} s JOIN auth_user u ON u.id = s.owner_id WHERE s.id IN (SELECT b.id FROM {ids_table} b)",
        [threshold, kind, now, now])
    rows = cursor.rowcount
    cursor.execute(
        f"INSERT INTO {AUDIT} (created_at, action, survey_id, survey_name, actor_id, actor, run_id, details) "
        "SELECT %s, 'warning_sent', s.id, s.name, NULL, 'system', NULL, "
        "jsonb_build_object('threshold_days', %s, 'recipient_id', s.owner_id) "
        f"FROM {SURVEYS} s WHERE s.id IN (SELECT b.id FROM {ids_table} b)", [now, threshold])
    return rows


def set_based_run(now):
    """Seconds for the whole run's mutations as set-based SQL (PostgreSQL), and the rows each touched."""
    if connection.vendor != "postgresql":
        return None
    rows = {}
    grace = timedelta(days=settings.CHECKTICK_SOFT_DELETE_GRACE_DAYS)
    started = time.perf_counter()
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            for days in sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True):
                sql, params = _ids(Survey.objects.due_for_warning(now, days))
                _ids_table(cursor, f"bench_warn_{days}", sql, params)
            sql, params = _ids(Survey.objects.due_for_soft_delete(now))
            _ids_table(cursor, "bench_soft", sql, params)
            sql, params = _ids(Survey.objects.due_for_hard_delete(now))
            _ids_table(cursor, "bench_hard", sql, params)
            for days in sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True):
                rows[f"warned_{days}"] = _ledger_and_audit(cursor, f"bench_warn_{days}", days, "warning",
                                                           "deletion_date", now)
            # Soft deletion: drafts, the survey row, its audit, its notice (ledger and audit).
            cursor.execute("DELETE FROM surveys_surveyprogress WHERE survey_id IN (SELECT b.id FROM bench_soft b)")
            cursor.execute(f"UPDATE {SURVEYS} SET deleted_at = %s, hard_deletion_date = %s "
                           "WHERE id IN (SELECT b.id FROM bench_soft b)", [now, now + grace])
            rows["soft_deleted"] = cursor.rowcount
            cursor.execute(
                f"INSERT INTO {AUDIT} (created_at, action, survey_id, survey_name, actor_id, actor, run_id, details) "
                "SELECT %s, 'soft_deleted', s.id, s.name, NULL, 'system', NULL, "
                "jsonb_build_object('deletion_date', s.deletion_date, 'hard_deletion_date', s.hard_deletion_date) "
                f"FROM {SURVEYS} s WHERE s.id IN (SELECT b.id FROM bench_soft b)", [now])
            rows["notices"] = _ledger_and_audit(cursor, "bench_soft", 0, "notice", "deletion_date", now)
            # Hard deletion: the audit first (it copies the name), then every child table, then the survey.
            cursor.execute(
                f"INSERT INTO {AUDIT} (created_at, action, survey_id, survey_name, actor_id, actor, run_id, details) "
                "SELECT %s, 'hard_deleted', s.id, s.name, NULL, 'system', NULL, "
                "jsonb_build_object('deleted_at', s.deleted_at, 'hard_deletion_date', s.hard_deletion_date) "
                f"FROM {SURVEYS} s WHERE s.id IN (SELECT b.id FROM bench_hard b)", [now])
            for table in CHILDREN:
                cursor.execute(f"DELETE FROM {table} WHERE survey_id IN (SELECT b.id FROM bench_hard b)")
            cursor.execute(f"DELETE FROM {SURVEYS} WHERE id IN (SELECT b.id FROM bench_hard b)")
            rows["hard_deleted"] = cursor.rowcount
            wall = time.perf_counter() - started
            raise _Rollback
    except _Rollback:
        pass
    return {"wall_s": round(wall, 3), "rows": rows}


def sample_message():
    """The bytes of one warning email as the service builds it (the smtplib limit sends this)."""
    from django.utils import timezone

    from checktick_app.governance.emails import build_warning_email

    now = timezone.now()
    warning = DeletionWarning(pk=1, survey_id=1, threshold_days=7, recipient_email="owner@bench.example.org",
                              kind=DeletionWarning.Kind.WARNING)
    survey = Survey(pk=1, name="Survey 1 <b>&</b>", deletion_date=now + timedelta(days=7))
    return build_warning_email(warning, survey, now).message().as_bytes(linesep="\r\n")
