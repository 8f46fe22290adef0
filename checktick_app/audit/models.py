"""The audit log: what happened to which survey, when, by whom, in which run (SPEC R20).

Append-only: the model refuses updates and deletes, and so do database triggers (created with the
table, in governance migration 0002). Tamper-evident: every entry, however it is written (save,
create, bulk_create), is chained to the one before it by hash (audit.chain, audit migration 0002). An entry keeps the survey's id and name as plain values, with
no foreign key, so a hard deletion can never cascade it away (R11).

The table keeps its first name, `governance_auditevent`: the log moved into this small app, used by
both `surveys` and `governance`, without moving a row (audit migration 0001).
"""

import uuid

from django.db import models, router, transaction
from django.utils import timezone

from . import chain


class AppendOnlyError(RuntimeError):
    pass


class AuditQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Audit entries are never updated (R20).")

    def delete(self):
        raise AppendOnlyError("Audit entries are never deleted (R20).")

    def bulk_create(self, objs, *args, **kwargs):
        """Append several entries at once, each chained to the one before (audit.chain)."""
        if kwargs.get("ignore_conflicts") or kwargs.get("update_conflicts"):
            raise AppendOnlyError("Audit entries are appended, never merged into existing ones (R20).")
        objs = list(objs)
        if not objs:
            return objs
        with transaction.atomic(using=self.db, savepoint=False):
            chain.lock_chain(self.db)
            chain.link(objs, self.model, self.db)
            return super().bulk_create(objs, *args, **kwargs)


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
        DELETION_REPLAYED = "deletion_replayed", "Hard deletion replayed after a restore"

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=32, choices=Action.choices, db_index=True)
    survey_id = models.BigIntegerField(null=True, db_index=True)
    survey_name = models.CharField(max_length=255, blank=True)
    actor_id = models.BigIntegerField(null=True, help_text="User id; empty for the scheduler.")
    actor = models.CharField(max_length=150, blank=True, help_text="Username, or 'system'.")
    run_id = models.BigIntegerField(null=True)
    details = models.JSONField(default=dict, blank=True)
    # The hash chain (audit.chain): the previous entry's hash, and this entry's over that and its fields.
    prev_hash = models.CharField(max_length=64, null=True, editable=False)
    entry_hash = models.CharField(max_length=64, null=True, editable=False)

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
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=using, savepoint=False):
            chain.lock_chain(using)
            chain.link([self], type(self), using)
            super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit entries are never deleted (R20).")


class DatabaseIdentity(models.Model):
    """One row, written at migrate time: which database this is, so that a record kept outside it
    (the hard-deletion record, governance.evidence) is only ever applied to the database it came from.
    A backup restored carries the identity with it; a fresh or different database has another."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "database identity"

    def __str__(self):
        return str(self.uuid)


def database_identity():
    """This database's identity (made again if a test flush or a hand edit removed the row)."""
    identity = DatabaseIdentity.objects.order_by("pk").values_list("uuid", flat=True).first()
    if identity is None:
        identity = DatabaseIdentity.objects.get_or_create(pk=1)[0].uuid
    return str(identity)
