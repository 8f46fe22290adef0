"""Soft and hard deletion of one survey. This is the one module that destroys data.

Design note
-----------
Invariants: never early (nothing goes before its date, nothing while a legal hold is active), never
late (whatever is due is taken by the next run, however many nights were missed), never twice (a
repeated, redelivered or racing call finds nothing left to do and says so).

Transactions: one per survey. Each function locks the survey row (SELECT ... FOR UPDATE on
PostgreSQL; SQLite serialises writers anyway), then re-checks the very queryset rule that selected
it (`due_for_soft_delete` / `due_for_hard_delete`) inside that transaction. A legal hold placed by
`place_legal_hold` takes the same row lock first, so either the hold commits before the re-check and
the survey is skipped, or the deletion commits first and the hold applies to what remains. A failure
rolls back that survey alone; the caller records it and carries on (R12).

What is kept after a hard delete, by design: the audit log, the warning ledger, retention
extensions and legal holds. They hold the survey's id and name as plain values (no cascading
foreign key), so an auditor can still ask "was this deleted on time, and who was told?".
Everything else that hangs off the survey goes, with one set-based DELETE per table.

Restores: once a hard deletion has committed, it is also written outside the database
(deletion_record), so that a backup restored later cannot quietly bring the survey back. Replaying
such a deletion (`replay_of`) skips the "is it due" re-check: the deletion was decided and done
once, and the restored rows (a hold lifted since, a date moved since) are older than that decision.
"""

from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from checktick_app.surveys.models import Survey, SurveyAccessToken, SurveyExport, SurveyProgress, SurveyResponse

from checktick_app.audit.models import database_identity
from checktick_app.audit.services import Action, record_audit
from . import deletion_record
from .models import DeletionWarning
from .emails import recipients_for, write_ledger_rows


class DeletionOutcome(str, Enum):
    DELETED = "deleted"
    NOT_DUE = "not_due"
    ON_HOLD = "on_hold"
    MISSING = "missing"  # already hard-deleted: a duplicate or redelivered message


@dataclass
class DeletionResult:
    outcome: DeletionOutcome
    survey_id: int
    removed: dict = field(default_factory=dict)

    @property
    def deleted(self):
        return self.outcome is DeletionOutcome.DELETED


def _why_not(survey_id, due_queryset):
    """Inside the lock: is it due, and if not, is a hold the reason?"""
    if due_queryset.filter(pk=survey_id).exists():
        return None
    held = due_queryset.model.objects.filter(pk=survey_id).with_active_hold().exists()
    return DeletionOutcome.ON_HOLD if held else DeletionOutcome.NOT_DUE


def soft_delete_survey(survey_id, *, now=None, run_id=None, notices_planned=False):
    """R9: hide the survey, stop responses, drop its drafts, start the grace period, notify once.

    `notices_planned`: a run wrote the notices' ledger rows when it planned this deletion (engine), so
    they are counted, not looked up and written again.
    """
    now = now or timezone.now()
    with transaction.atomic():
        survey = Survey.objects.select_for_update().filter(pk=survey_id).first()
        if survey is None:
            return DeletionResult(DeletionOutcome.MISSING, survey_id)
        refused = _why_not(survey_id, Survey.objects.due_for_soft_delete(now))
        if refused:
            return DeletionResult(refused, survey_id)
        survey.deleted_at = now
        survey.hard_deletion_date = now + timedelta(days=settings.CHECKTICK_SOFT_DELETE_GRACE_DAYS)
        survey.save(update_fields=["deleted_at", "hard_deletion_date"])
        drafts, _ = SurveyProgress.objects.filter(survey_id=survey_id).delete()
        if notices_planned:
            told = DeletionWarning.objects.filter(
                survey_id=survey_id, deletion_date=survey.deletion_date, kind=DeletionWarning.Kind.NOTICE,
            ).exclude(recipient_email="").count()
        else:
            recipients = recipients_for([survey.pk])
            told = sum(1 for r in recipients[survey.pk] if r.email)
        record_audit(
            Action.SOFT_DELETED, survey=survey, run=run_id, at=now, deletion_date=survey.deletion_date.isoformat(),
            hard_deletion_date=survey.hard_deletion_date.isoformat(), drafts_deleted=drafts,
            # Who will be told (R9): an auditor sees "nobody" here, not only the absence of ledger rows.
            notice_recipients=told,
        )
        if not notices_planned:
            # The notice's ledger rows commit with the deletion: it is sent once, even if this run dies.
            row = {"pk": survey.pk, "name": survey.name, "deletion_date": survey.deletion_date}
            write_ledger_rows([row], DeletionWarning.SOFT_DELETION_NOTICE, recipients, run_id, now)
    return DeletionResult(DeletionOutcome.DELETED, survey_id, {"progress": drafts})


def hard_delete_survey(survey_id, *, now=None, run_id=None, replay_of=None):
    """R11: remove the survey and all that hangs off it, in one transaction, keeping the evidence.

    `replay_of` (a deletion_record.RecordedDeletion): this survey was hard-deleted before, and a restored
    backup brought it back; delete it again whatever its restored dates say, audited as replayed.
    """
    now = now or timezone.now()
    with transaction.atomic():
        survey = Survey.objects.select_for_update().filter(pk=survey_id).first()
        if survey is None:
            return DeletionResult(DeletionOutcome.MISSING, survey_id)
        refused = None if replay_of else _why_not(survey_id, Survey.objects.due_for_hard_delete(now))
        if refused:
            return DeletionResult(refused, survey_id)
        removed = {}
        # Children first, each one DELETE ... WHERE survey_id = %s (progress before the tokens it points at).
        for label, model in (
            ("progress", SurveyProgress), ("responses", SurveyResponse),
            ("exports", SurveyExport), ("access_tokens", SurveyAccessToken),
        ):
            removed[label], _ = model.objects.filter(survey_id=survey_id).delete()
        # Its children are gone: one DELETE of the row, not the collector's look at every cascade again. A table
        # added later with a foreign key to surveys, and not deleted above, fails the commit (deferred
        # constraint) and so this survey's deletion, loudly (R12), rather than being cascaded unseen.
        Survey.objects.filter(pk=survey_id)._raw_delete(Survey.objects.db)
        if replay_of:
            record_audit(
                Action.DELETION_REPLAYED, survey_id=survey_id, survey_name=survey.name, at=now,
                originally_deleted_at=replay_of.deleted_at, original_run_id=replay_of.run_id, removed=removed,
            )
        else:
            record_audit(
                Action.HARD_DELETED, survey_id=survey_id, survey_name=survey.name, run=run_id, at=now,
                deleted_at=survey.deleted_at.isoformat(), hard_deletion_date=survey.hard_deletion_date.isoformat(),
                removed=removed,
                # For the compliance report (governance.evidence): the date the retention ran out.
                deletion_date=survey.deletion_date.isoformat() if survey.deletion_date else None,
            )
            # After the commit, never before: a deletion rolled back must not be replayed after a restore.
            transaction.on_commit(partial(deletion_record.append_deletion, survey_id, survey.created_at, now,
                                          run_id, database_identity()))
    return DeletionResult(DeletionOutcome.DELETED, survey_id, removed)


@dataclass
class ReplayOutcome:
    deletion: deletion_record.RecordedDeletion
    removed: dict


def replay_recorded_deletions(*, dry_run=False, now=None):
    """Delete again every recorded survey the restored database brought back; each is audited as replayed."""
    outcomes = []
    for deletion in deletion_record.undone_deletions():
        if dry_run:
            outcomes.append(ReplayOutcome(deletion, {}))
            continue
        result = hard_delete_survey(deletion.survey_id, now=now, replay_of=deletion)
        if result.deleted:
            outcomes.append(ReplayOutcome(deletion, result.removed))
    return outcomes
