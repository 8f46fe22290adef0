"""The audit log: what happened to which survey, when, by whom, in which run (SPEC R20).

Append-only: the model refuses updates and deletes, and so do database triggers (created with the
table, in governance migration 0002). An entry keeps the survey's id and name as plain values, with
no foreign key, so a hard deletion can never cascade it away (R11).

The table keeps its first name, `governance_auditevent`: the log moved into this small app, used by
both `surveys` and `governance`, without moving a row (audit migration 0001).
"""

from django.db import models
from django.utils import timezone


class AppendOnlyError(RuntimeError):
    pass


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Audit entries are never updated (R20).")

    def delete(self):
        raise AppendOnlyError("Audit entries are never deleted (R20).")


class AuditEvent(models.Model):
    class Action(models.TextChoices):
        WARNING_SENT = "warning_sent", "Warning sent"
        WARNING_FAILED = "warning_failed", "Warning failed"
        SOFT_DELETED = "soft_deleted", "Soft deleted"
        HARD_DELETED = "hard_deleted", "Hard deleted"
        SKIPPED_FOR_HOLD = "skipped_for_hold", "Skipped for legal hold"
        HOLD_PLACED = "hold_placed", "Legal hold placed"
        HOLD_REMOVED = "hold_removed", "Legal hold removed"
        RETENTION_EXTENDED = "retention_extended", "Retention extended"
        DEADLINE_MOVED = "deadline_moved", "Deadline moved on hold release"
        CLOSED = "closed", "Closed"
        REOPENED = "reopened", "Reopened"
        RESTORED = "restored", "Restored"
        SCHEDULE_CHANGED = "schedule_changed", "Beat schedule changed"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True)
    survey_id = models.BigIntegerField(null=True, db_index=True)
    survey_name = models.CharField(max_length=255, blank=True)
    actor_id = models.BigIntegerField(null=True, help_text="User id; empty for the scheduler.")
    actor = models.CharField(max_length=150, blank=True, help_text="Username, or 'system'.")
    run_id = models.BigIntegerField(null=True)
    details = models.JSONField(default=dict, blank=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        db_table = "governance_auditevent"
        ordering = ["-created_at", "-id"]
        # A run's own audit rows without a scan. An AddIndex, not db_index: altering the field would
        # make SQLite rebuild the table and drop the append-only triggers.
        indexes = [models.Index(fields=["run_id"], name="audit_by_run")]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action} survey {self.survey_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Audit entries are never updated (R20).")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit entries are never deleted (R20).")
