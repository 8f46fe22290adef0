"""Operations on one survey that move its retention clock: close, reopen, extend, restore, hold.

Each is a plain function, called alike by the admin, the tests and any future view. Each locks the
survey row, re-checks its preconditions inside the transaction, and writes its audit entry there,
so the audit can never disagree with the data.
"""

from datetime import timedelta

from dateutil.relativedelta import relativedelta
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from checktick_app.audit.services import Action, record_audit

from .models import LegalHold, RetentionExtension, Survey, SurveyProgress, SurveyResponse


def deletion_date_for(closed_at, months):
    """R1: calendar months (closed 1 January + 6 months = 1 July; 31 August + 6 = end of February)."""
    return closed_at + relativedelta(months=months)


def _locked(survey):
    return Survey.objects.select_for_update().get(pk=survey.pk)


def _require_reason(reason, what="a reason"):
    if not reason or not str(reason).strip():
        raise ValidationError(f"Give {what}: it is kept in the audit log.", code="reason_required")
    return str(reason).strip()


def close_survey(survey, *, by=None, now=None):
    """R1: start the retention clock; closing twice never moves the date."""
    now = now or timezone.now()
    with transaction.atomic():
        survey = _locked(survey)
        if survey.status == Survey.Status.CLOSED:
            return survey
        if survey.deleted_at is not None:
            raise ValidationError("A soft-deleted survey cannot be closed.", code="soft_deleted")
        survey.status = Survey.Status.CLOSED
        survey.closed_at = now
        survey.deletion_date = deletion_date_for(now, survey.retention_months)
        survey.save(update_fields=["status", "closed_at", "deletion_date"])
        organisation = survey.organisation
        record_audit(
            Action.CLOSED, survey=survey, actor=by, at=now, deletion_date=survey.deletion_date.isoformat(),
            # For the compliance report (governance.evidence), which must stand after the survey is gone.
            retention_months=survey.retention_months, organisation_id=getattr(organisation, "pk", None),
            organisation=getattr(organisation, "name", ""),
        )
    return survey


def reopen_survey(survey, *, by=None, now=None):
    """R1: reopening before soft deletion stops the clock."""
    now = now or timezone.now()
    with transaction.atomic():
        survey = _locked(survey)
        if survey.status != Survey.Status.CLOSED:
            raise ValidationError("Only a closed survey can be reopened.", code="not_closed")
        if survey.deleted_at is not None:
            raise ValidationError(
                "A soft-deleted survey cannot be reopened; restore it with a retention extension.",
                code="soft_deleted",
            )
        previous = survey.deletion_date
        survey.status = Survey.Status.PUBLISHED
        survey.closed_at = None
        survey.deletion_date = None
        survey.save(update_fields=["status", "closed_at", "deletion_date"])
        record_audit(
            Action.REOPENED, survey=survey, actor=by, at=now,
            previous_deletion_date=previous.isoformat() if previous else None,
        )
    return survey


def _extended_date(survey, months):
    if not isinstance(months, int) or months < 1:
        raise ValidationError(f"Extend by at least 1 whole month (got {months!r}).", code="months_invalid")
    maximum = settings.CHECKTICK_MAX_RETENTION_MONTHS
    total = survey.retention_months + months
    if total > maximum:
        raise ValidationError(
            f"Retention would become {total} months; the maximum is {maximum} "
            f"(CHECKTICK_MAX_RETENTION_MONTHS). Extend by at most {maximum - survey.retention_months}.",
            code="retention_over_maximum",
        )
    return total, deletion_date_for(survey.closed_at, total)


def extend_retention(survey, *, months, reason, by=None, now=None):
    """R3: keep a closed survey longer; the new date re-arms warnings through the ledger key (R6)."""
    now = now or timezone.now()
    reason = _require_reason(reason)
    with transaction.atomic():
        survey = _locked(survey)
        if survey.status != Survey.Status.CLOSED or survey.closed_at is None:
            raise ValidationError("Only a closed survey has a retention period to extend.", code="not_closed")
        if survey.deleted_at is not None:
            raise ValidationError(
                "This survey is soft-deleted: restore it (with an extension) instead.", code="soft_deleted"
            )
        total, new_date = _extended_date(survey, months)
        if survey.deletion_date is not None and new_date <= survey.deletion_date:
            # Only after R14 moved the date out on a hold release: counting from closed_at would bring the
            # date back, possibly into the past, and the next run would delete the survey unwarned.
            raise ValidationError(
                f"Extending by {months} months gives a deletion date of {new_date:%Y-%m-%d %H:%M} UTC, not later "
                f"than the current {survey.deletion_date:%Y-%m-%d %H:%M} UTC (set when a legal hold was lifted). "
                "Extend by more months.",
                code="extension_not_later",
            )
        extension = _write_extension(survey, months, reason, new_date, by, now)
        survey.retention_months = total
        survey.deletion_date = new_date
        survey.save(update_fields=["retention_months", "deletion_date"])
        record_audit(
            Action.RETENTION_EXTENDED, survey=survey, actor=by, at=now, months_added=months, reason=reason,
            previous_deletion_date=extension.previous_deletion_date.isoformat(),
            new_deletion_date=new_date.isoformat(),
        )
    return survey


def _write_extension(survey, months, reason, new_date, by, now):
    return RetentionExtension.objects.create(
        survey=survey, survey_name=survey.name, extended_by=by, extended_at=now, months_added=months,
        reason=reason, previous_deletion_date=survey.deletion_date, new_deletion_date=new_date,
    )


def restore_survey(survey, *, months, reason, by=None, now=None):
    """R10: undo a soft deletion, only with an extension that puts the deletion date in the future."""
    now = now or timezone.now()
    reason = _require_reason(reason)
    with transaction.atomic():
        survey = _locked(survey)
        if survey.deleted_at is None:
            raise ValidationError("This survey is not soft-deleted.", code="not_soft_deleted")
        if survey.hard_deletion_date <= now:
            raise ValidationError(
                "The grace period is over: this survey is due for permanent deletion and cannot be restored.",
                code="grace_over",
            )
        total, new_date = _extended_date(survey, months)
        if new_date <= now:
            raise ValidationError(
                f"Extending by {months} months gives a deletion date of {new_date:%Y-%m-%d %H:%M} UTC, which has "
                "passed: the next run would delete it again. Extend by more months.",
                code="restore_date_in_past",
            )
        _write_extension(survey, months, reason, new_date, by, now)
        survey.retention_months = total
        survey.deletion_date = new_date
        survey.deleted_at = None
        survey.hard_deletion_date = None
        survey.save(update_fields=["retention_months", "deletion_date", "deleted_at", "hard_deletion_date"])
        record_audit(
            Action.RESTORED, survey=survey, actor=by, at=now, months_added=months, reason=reason,
            new_deletion_date=new_date.isoformat(),
        )
    return survey


def place_legal_hold(survey, *, reason, authority, by=None, now=None):
    """R13: freeze all warnings and deletions of this survey until the hold is removed."""
    now = now or timezone.now()
    reason = _require_reason(reason)
    authority = _require_reason(authority, "the authority that requires the hold")
    with transaction.atomic():
        survey = _locked(survey)
        hold = LegalHold.objects.create(
            survey=survey, survey_name=survey.name, reason=reason, authority=authority, placed_by=by, placed_at=now
        )
        record_audit(Action.HOLD_PLACED, survey=survey, actor=by, at=now, hold_id=hold.pk, reason=reason,
                     authority=authority)
    return hold


def remove_legal_hold(hold, *, reason, by=None, now=None):
    """R13, R14: lift a hold; if it was the last and a deadline is near or past, give fair notice first."""
    now = now or timezone.now()
    reason = _require_reason(reason)
    with transaction.atomic():
        hold = LegalHold.objects.select_for_update().get(pk=hold.pk)
        if hold.removed_at is not None:
            raise ValidationError("This legal hold has already been removed.", code="already_removed")
        survey = Survey.objects.select_for_update().filter(pk=hold.survey_id).first()
        hold.removed_at, hold.removed_by, hold.removal_reason = now, by, reason
        hold.save(update_fields=["removed_at", "removed_by", "removal_reason"])
        record_audit(Action.HOLD_REMOVED, survey_id=hold.survey_id, survey_name=hold.survey_name, actor=by, at=now,
                     hold_id=hold.pk, reason=reason)
        if survey is not None and not LegalHold.objects.active().filter(survey=survey).exists():
            _give_notice_after_release(survey, by, now)
    return hold


def _give_notice_after_release(survey, by, now):
    field = "hard_deletion_date" if survey.deleted_at else "deletion_date"
    deadline = getattr(survey, field)
    earliest = now + timedelta(days=settings.CHECKTICK_HOLD_RELEASE_NOTICE_DAYS)
    if deadline is None or deadline >= earliest:
        return
    setattr(survey, field, earliest)
    survey.save(update_fields=[field])
    record_audit(Action.DEADLINE_MOVED, survey=survey, actor=by, at=now, field=field,
                 previous=deadline.isoformat(), new=earliest.isoformat())


# --- Drafts and responses (R15) ----------------------------------------------------------------

def _draft_owner(user, session_key, access_token):
    owners = {"user": user, "session_key": session_key, "access_token": access_token}
    given = {k: v for k, v in owners.items() if v not in (None, "")}
    if len(given) != 1:
        raise ValidationError(
            "A draft belongs to exactly one of: a user, a session key, an access token "
            f"(got {', '.join(given) or 'none'}).",
            code="draft_owner",
        )
    return given


def save_progress(survey, data, *, user=None, session_key=None, access_token=None, now=None):
    """R15: every write of a draft pushes its expiry out again."""
    now = now or timezone.now()
    owner = _draft_owner(user, session_key, access_token)
    if not survey.accepts_responses:
        raise ValidationError("This survey is not accepting responses.", code="not_accepting")
    expires = now + timedelta(days=settings.CHECKTICK_PROGRESS_EXPIRY_DAYS)
    progress, _ = SurveyProgress.objects.update_or_create(
        survey=survey, **owner, defaults={"data": data, "updated_at": now, "expires_at": expires},
    )
    return progress


def submit_response(survey, answers, *, user=None, session_key=None, access_token=None, now=None):
    """R15: a submitted response replaces its draft."""
    now = now or timezone.now()
    owner = _draft_owner(user, session_key, access_token)
    with transaction.atomic():
        survey = Survey.objects.select_for_update().get(pk=survey.pk)
        if not survey.accepts_responses:
            raise ValidationError("This survey is not accepting responses.", code="not_accepting")
        response = SurveyResponse.objects.create(survey=survey, submitted_by=user, answers=answers, submitted_at=now)
        SurveyProgress.objects.filter(survey=survey, **owner).delete()
    return response
