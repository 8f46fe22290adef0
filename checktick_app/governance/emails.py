"""Deletion warnings: who is told (R7), the ledger that makes each warning happen once (R6), and the
one-email-per-recipient send (R8).

The ledger is the source of truth. A row is written before any email leaves, claimed with a
compare-and-set before sending, and marked sent only after the SMTP server accepted the message.
The only at-least-once window is a crash between that acceptance and the `sent` update: the claim
then expires after CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES and the email is offered again. The SMTP
session's QUIT waits until after the update, so the window holds only the UPDATE, the audit INSERT and
the COMMIT (measured by the reliability trials: tests/reliability/README.md).
"""

import functools
import logging
import math
import smtplib
import time
import uuid
from dataclasses import dataclass
from enum import Enum

from django.conf import settings
from django.core.mail import BadHeaderError, EmailMultiAlternatives, get_connection
from django.db import InterfaceError, OperationalError, connections, router, transaction
from django.db.models import F
from django.db.models.sql import UpdateQuery
from django.template.loader import render_to_string
from django.utils import timezone

from checktick_app.surveys.models import OrganisationMembership, Survey

from checktick_app.audit.services import Action, record_audit
from .email_wording import time_left
from .models import DeletionWarning

Status = DeletionWarning.Status
NO_ADDRESS = "no email address"
# Connection-level database errors only: a constraint or data error is a real failure, recorded at once (R12).
DATABASE_OUTAGE = (OperationalError, InterfaceError)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipient:
    user_id: int
    email: str


def recipients_for(survey_ids):
    """R7 for a chunk of surveys in three queries: owner, organisation owner, organisation admins.

    Active users only; one recipient per address, case-insensitively (the lowest user id wins).
    """
    found = {sid: [] for sid in survey_ids}
    rows = list(
        Survey.objects.filter(pk__in=survey_ids, owner__is_active=True).values_list("pk", "owner_id", "owner__email")
    )
    rows += Survey.objects.filter(pk__in=survey_ids, organisation__owner__is_active=True).values_list(
        "pk", "organisation__owner_id", "organisation__owner__email"
    )
    rows += OrganisationMembership.objects.filter(
        role=OrganisationMembership.Role.ADMIN, user__is_active=True, organisation__surveys__pk__in=survey_ids
    ).values_list("organisation__surveys__pk", "user_id", "user__email")
    for survey_id, user_id, email in sorted(rows, key=lambda r: (r[0], r[1])):
        email = (email or "").strip()
        key = email.lower() or f"user:{user_id}"
        if all((r.email.lower() or f"user:{r.user_id}") != key for r in found[survey_id]):
            found[survey_id].append(Recipient(user_id, email))
    return found


def write_ledger_rows(surveys, threshold_days, recipients, run_id=None, now=None, kind=None):
    """Insert the ledger rows a set of surveys needs; rows that exist already are left as they are.

    `kind` defaults to what the threshold means (a notice at 0, else a warning); each survey's
    "deletion_date" is the date the email names (a hard-deletion warning's is the hard-deletion date).
    """
    now = now or timezone.now()
    kind = kind or DeletionWarning.kind_for(threshold_days)
    rows = [
        DeletionWarning(
            survey_id=s["pk"], survey_name=s["name"], deletion_date=s["deletion_date"], threshold_days=threshold_days,
            kind=kind,
            recipient_id=r.user_id, recipient_email=r.email, run_id=run_id, created_at=now,
            status=Status.PENDING if r.email else Status.SKIPPED, skip_reason="" if r.email else NO_ADDRESS,
        )
        for s in surveys
        for r in recipients.get(s["pk"], [])
    ]
    DeletionWarning.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)


class SendOutcome(str, Enum):
    SENT = "sent"
    NOT_CLAIMED = "not_claimed"  # already sent, failed, skipped, or being sent by someone else
    NO_LONGER_DUE = "no_longer_due"  # date changed, survey gone or on hold: left pending
    TRANSIENT_FAILURE = "transient_failure"  # left pending for a retry
    MAIL_SERVER_FAILURE = "mail_server_failure"  # the server or our mail settings: left pending, retried
    PERMANENT_FAILURE = "permanent_failure"


@dataclass
class SendResult:
    outcome: SendOutcome
    warning_id: int
    survey_id: int | None = None
    error: str = ""


class Failure(str, Enum):
    """Whose failure a send's error is, which decides what becomes of the ledger row (R6, R21)."""

    RECIPIENT = "recipient"  # this address refused for good (5xx to RCPT TO, or after DATA naming it): failed
    ADDRESS = "address"  # an address no message can carry (a line break, not an address): failed
    TRY_LATER = "try_later"  # 4xx: this message, later
    MAIL_SERVER = "mail_server"  # the server or our settings (AUTH, MAIL FROM, relay, TLS, connection): pending


def classify_failure(exc, recipient):
    """Only a refusal of this one recipient (or of its address) fails the row for good: a failure of the
    mail server or of our own mail settings would otherwise fail every warning of the night for good."""
    if isinstance(exc, BadHeaderError) or (isinstance(exc, ValueError) and "address" in str(exc).lower()):
        return Failure.ADDRESS  # a line break in the address, or no address at all: no retry will help
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return Failure.RECIPIENT if codes and all(code >= 500 for code in codes) else Failure.TRY_LATER
    if isinstance(exc, smtplib.SMTPSenderRefused) or isinstance(exc, smtplib.SMTPAuthenticationError):
        return Failure.MAIL_SERVER
    if isinstance(exc, smtplib.SMTPDataError) and exc.smtp_code >= 500:
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return Failure.RECIPIENT if recipient and recipient.lower() in reply.lower() else Failure.MAIL_SERVER
    if isinstance(exc, smtplib.SMTPResponseException) and 400 <= exc.smtp_code < 500:
        return Failure.TRY_LATER
    return Failure.MAIL_SERVER


# The claim runs once per email, so its statement is compiled once per run clock and reused with the row's
# id and the claim token bound in: building it through the ORM cost more than running it (bench/RESULTS.md).
# It claims the row, re-checks that its email is still due, and returns the row with what the email names
# of the survey, in one round trip (UPDATE ... RETURNING, PostgreSQL and SQLite >= 3.35 alike).
_ANY_ID, _ANY_TOKEN = -(2 ** 62) - 7, "\x00any-claim-token\x00"  # placeholders, bound per call
CLAIMED_FIELDS = ("id", "survey_id", "survey_name", "deletion_date", "threshold_days", "kind", "recipient_id",
                  "recipient_email", "run_id")
SURVEY_FIELDS = ("name", "deletion_date", "hard_deletion_date")


@functools.lru_cache(maxsize=64)
def _claim_statement(now, retrying, check_due, alias):
    claim = DeletionWarning.objects.using(alias).claimable(now)
    if retrying:
        claim |= DeletionWarning.objects.using(alias).filter(status=Status.SENDING, claim_token=_ANY_TOKEN)
    if check_due:
        claim = claim.still_due(now)
    query = claim.filter(pk=_ANY_ID).query.chain(UpdateQuery)
    query.add_update_values({"status": Status.SENDING, "claimed_at": now, "claim_token": _ANY_TOKEN,
                             "attempts": F("attempts") + 1})
    sql, params = query.get_compiler(alias).as_sql()
    quote = connections[alias].ops.quote_name
    survey_table = quote(Survey._meta.db_table)
    returned = [quote(DeletionWarning._meta.get_field(name).column) for name in CLAIMED_FIELDS]
    # The survey's current name and dates; `survey_id` is the claimed row's (the survey table has no such column).
    returned += [f"(SELECT s.{quote(Survey._meta.get_field(name).column)} FROM {survey_table} s "
                 f"WHERE s.{quote('id')} = {quote('survey_id')})" for name in SURVEY_FIELDS]
    return f"{sql} RETURNING {', '.join(returned)}", tuple(params)


@functools.lru_cache(maxsize=4)
def _converters(alias):
    """Django's own converters for the returned columns (SQLite returns datetimes as text)."""
    connection = connections[alias]
    found = []
    for model, names in ((DeletionWarning, CLAIMED_FIELDS), (Survey, SURVEY_FIELDS)):
        for name in names:
            col = model._meta.get_field(name).get_col(model._meta.db_table)
            found.append((col, connection.ops.get_db_converters(col) + col.get_db_converters(connection)))
    return found


def _claim(warning_id, now, token, *, retrying, check_due):
    """Claim the row; returns (the claimed row, unsaved, and its survey, None if it is gone) or None."""
    alias = router.db_for_write(DeletionWarning)
    sql, params = _claim_statement(now, retrying, check_due, alias)
    bound = [warning_id if p == _ANY_ID else token if p == _ANY_TOKEN else p for p in params]
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(sql, bound)
        row = cursor.fetchone()
    if row is None:
        return None
    values = []
    for value, (col, converters) in zip(row, _converters(alias)):
        for converter in converters:
            value = converter(value, col, connection)
        values.append(value)
    warning = DeletionWarning(**dict(zip(CLAIMED_FIELDS, values[:len(CLAIMED_FIELDS)])), status=Status.SENDING,
                              claim_token=token)
    name, deletion_date, hard_deletion_date = values[len(CLAIMED_FIELDS):]
    if name is None:
        return warning, None
    return warning, Survey(pk=warning.survey_id, name=name, deletion_date=deletion_date,
                           hard_deletion_date=hard_deletion_date)


class SendInterrupted(Exception):
    """The database went away in the middle of a send (the transaction rolled back).

    The retry carries this delivery's claim token, so it takes its own row back at once instead of
    waiting out the lease, and whether the SMTP server already took the message, so it records the
    email as sent instead of sending it again. A duplicate delivery has no token and cannot do either.
    """

    def __init__(self, cause, *, claim_token, accepted):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.claim_token, self.accepted = claim_token, accepted


def send_warning_email(warning_id, *, now=None, connection=None, run_id=None, claim_token="", accepted=False):
    """Send one ledger row's email, at most once; the state guard makes duplicates and stale messages no-ops.

    The audit names `run_id`, the run that sends (a retry may come from a later run than the one
    that wrote the ledger row); without it, the run that wrote the row. `claim_token` and `accepted`
    come from a SendInterrupted this delivery raised before.
    """
    now = now or timezone.now()
    token = claim_token or uuid.uuid4().hex  # chosen before the claim: its UPDATE may commit and then lose the reply
    progress = {"accepted": accepted}
    try:
        return _claim_and_send(warning_id, now, connection, run_id, token, progress, retrying=bool(claim_token))
    except DATABASE_OUTAGE as exc:
        raise SendInterrupted(exc, claim_token=token, accepted=progress["accepted"]) from exc


def _claim_and_send(warning_id, now, connection, run_id, token, progress, retrying):
    # Unless the server took the email already, the claim re-checks that it is still due (R4, R7, R9, R23).
    claimed = _claim(warning_id, now, token, retrying=retrying, check_due=not progress["accepted"])
    if claimed is None:
        return _not_claimed(warning_id, now, token, retrying)
    warning, survey = claimed
    if progress["accepted"]:
        # The SMTP server took it before the database went away: record it, do not send it again.
        _record_sent(warning, now, run_id)
        return SendResult(SendOutcome.SENT, warning_id, warning.survey_id)
    # A session passed in (an inline run's, a worker process's) stays open for the next email; one opened
    # here is closed only after the ledger says `sent`: otherwise Django closes it inside send(), and the
    # QUIT round trip would sit in the at-least-once window.
    own_session = connection is None
    connection = connection or get_connection()
    try:
        try:
            _send_on(connection, build_warning_email(warning, survey, now, connection=connection))
        except Exception as exc:  # noqa: BLE001 - every failure is recorded in the ledger, never lost
            # A session that failed half-way (a refused login, a dropped line) is not reused by the next email.
            _close_quietly(connection)
            return _record_failure(warning, exc, now, run_id)
        progress["accepted"] = True
        _record_sent(warning, now, run_id)
    finally:
        if own_session:
            _close_quietly(connection)
    return SendResult(SendOutcome.SENT, warning_id, warning.survey_id)


def _send_on(connection, message):
    """Send on the session, opening it if needed. A kept session the server has since dropped (an idle
    timeout, a restart) fails before the message is sent: it is reopened and the message sent once more."""
    reused = not connection.open() if hasattr(connection, "connection") else False
    try:
        message.send()
    except smtplib.SMTPServerDisconnected:
        if not reused:
            raise
        _close_quietly(connection)
        connection.open()
        message.send()


def _not_claimed(warning_id, now, token, retrying):
    """Why the claim found nothing: the row is someone else's or settled (NOT_CLAIMED), or its email is no
    longer due (NO_LONGER_DUE: the row stays pending, for a later date or a lifted hold)."""
    if retrying and _release(warning_id, token):
        return SendResult(SendOutcome.NO_LONGER_DUE, warning_id)
    if DeletionWarning.objects.claimable(now).filter(pk=warning_id).exists():
        return SendResult(SendOutcome.NO_LONGER_DUE, warning_id)
    return SendResult(SendOutcome.NOT_CLAIMED, warning_id)


def _release(warning_id, token):
    """Give this delivery's claim back: the row is pending again."""
    return DeletionWarning.objects.filter(pk=warning_id, status=Status.SENDING, claim_token=token).update(
        status=Status.PENDING, claimed_at=None, claim_token="")


class SmtpSession:
    """One SMTP session kept open across emails: for an inline run, and for each worker process.

    Reopened after a failure (the failed send closes it) and after IDLE_SECONDS without an email, below
    the idle timeout of common servers (Postfix drops an idle client after 300 s), so a long retry wait
    does not meet a dropped session.
    """

    IDLE_SECONDS = 60

    def __init__(self):
        self._connection, self._used_at = None, 0.0

    def connection(self):
        if self._connection is not None and time.monotonic() - self._used_at > self.IDLE_SECONDS:
            self.close()
        if self._connection is None:
            self._connection = get_connection()
        self._used_at = time.monotonic()
        return self._connection

    def close(self):
        if self._connection is not None:
            _close_quietly(self._connection)
        self._connection = None


def _record_sent(warning, now, run_id):
    with transaction.atomic():
        DeletionWarning.objects.filter(pk=warning.pk).update(status=Status.SENT, sent_at=timezone.now(), last_error="")
        record_audit(
            Action.WARNING_SENT, survey_id=warning.survey_id, survey_name=warning.survey_name,
            run=run_id or warning.run_id, at=now, warning_id=warning.pk,
            threshold_days=warning.threshold_days, recipient_id=warning.recipient_id,
            deletion_date=warning.deletion_date.isoformat(),
            **({"kind": warning.kind} if warning.kind == DeletionWarning.Kind.HARD_WARNING else {}),
        )


def _close_quietly(connection):
    """QUIT after the ledger is updated; a server that hangs up first changes nothing that matters."""
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - the message was accepted and recorded; only the goodbye failed
        pass


def _record_failure(warning, exc, now, run_id=None):
    failure = classify_failure(exc, warning.recipient_email)
    permanent = failure in (Failure.RECIPIENT, Failure.ADDRESS)
    error = f"{type(exc).__name__}: {exc}"[:2000]
    with transaction.atomic():
        DeletionWarning.objects.filter(pk=warning.pk).update(
            status=Status.FAILED if permanent else Status.PENDING, claimed_at=None, claim_token="", last_error=error
        )
        record_audit(
            Action.WARNING_FAILED, survey_id=warning.survey_id, survey_name=warning.survey_name, run=run_id or warning.run_id,
            at=now, warning_id=warning.pk, threshold_days=warning.threshold_days, recipient_id=warning.recipient_id,
            permanent=permanent, error=error, failure=failure.value,
            **({"kind": warning.kind} if warning.kind == DeletionWarning.Kind.HARD_WARNING else {}),
        )
    outcome = {Failure.MAIL_SERVER: SendOutcome.MAIL_SERVER_FAILURE, Failure.TRY_LATER: SendOutcome.TRANSIENT_FAILURE
               }.get(failure, SendOutcome.PERMANENT_FAILURE)
    return SendResult(outcome, warning.pk, warning.survey_id, error)


def build_warning_email(warning, survey, now, connection=None):
    """R8: plain text and HTML, the survey's name escaped, links from SITE_URL, never response data."""
    site = settings.SITE_URL
    context = {
        "survey_name": survey.name,
        "deletion_date": survey.deletion_date,
        "hard_deletion_date": survey.hard_deletion_date,
        "hard_time_left": time_left(survey.hard_deletion_date, now) if survey.hard_deletion_date else "",
        "days_left": max(0, math.ceil((survey.deletion_date - now).total_seconds() / 86400)),
        "time_left": time_left(survey.deletion_date, now),  # to the hour (email_wording)
        "grace_days": settings.CHECKTICK_SOFT_DELETE_GRACE_DAYS,
        "extend_url": f"{site}/surveys/{survey.pk}/retention/",
        "export_url": f"{site}/surveys/{survey.pk}/export/",
        "site_url": site,
    }
    name = {DeletionWarning.Kind.NOTICE: "soft_deleted", DeletionWarning.Kind.HARD_WARNING: "hard_deletion_warning"
            }.get(warning.kind, "warning")
    subject = " ".join(render_to_string(f"governance/email/{name}_subject.txt", context).split())
    text = render_to_string(f"governance/email/{name}.txt", context)
    html = render_to_string(f"governance/email/{name}.html", context)
    message = EmailMultiAlternatives(
        subject=subject, body=text, from_email=settings.DEFAULT_FROM_EMAIL, to=[warning.recipient_email],
        connection=connection, headers={"X-CheckTick-Warning": str(warning.pk)},
    )
    message.attach_alternative(html, "text/html")
    return message
