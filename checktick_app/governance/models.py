"""The evidence: the warning ledger and the run history (the audit log is the `audit` app's).

None of these has a foreign key to a survey: they keep the survey's id and name as plain values,
so a hard deletion can never cascade them away (SPEC R11, R20).
"""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone


class DeletionWarningQuerySet(models.QuerySet):
    """The ledger rules (R6, R9): which rows may be sent now, written once and used by plan, send and preview."""

    def claimable(self, now):
        """Pending, or claimed by a sender whose lease ran out (its process died mid-send)."""
        lease = timedelta(minutes=settings.CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES)
        return self.filter(Q(status="pending") | Q(status="sending", claimed_at__lt=now - lease))

    def for_current_deletion_date(self):
        """Rows written for the deletion date their survey still has (a changed date makes them void)."""
        from checktick_app.surveys.models import Survey

        return self.filter(Exists(Survey.objects.filter(pk=OuterRef("survey_id"), deletion_date=OuterRef("deletion_date"))))

    def due(self, now, survey_ids, threshold_days):
        """R6: the warnings of these surveys at this threshold that a run sends now."""
        return self.claimable(now).for_current_deletion_date().filter(survey_id__in=survey_ids,
                                                                      threshold_days=threshold_days)

    def settled(self, now):
        """Rows that need no email now: sent, failed for good, skipped, or being sent under a live lease."""
        lease = timedelta(minutes=settings.CHECKTICK_EMAIL_CLAIM_LEASE_MINUTES)
        return self.exclude(Q(status="pending") | Q(status="sending", claimed_at__lt=now - lease))

    def still_due(self, now):
        """Rows whose email is still due by the rules that selected them (R4, R7, R9, R23), checked in the claim
        itself: the recipient still active, and the survey still warnable (a warning), still soft-deleted and
        not held (a notice), or still to be hard-deleted on the date the row names (a hard-deletion warning)."""
        from django.contrib.auth import get_user_model

        from checktick_app.surveys.models import Survey

        soft_deleted = Survey.objects.notifiable_of_soft_deletion().filter(pk=OuterRef("survey_id"))
        warnable = Survey.objects.warnable(now).filter(pk=OuterRef("survey_id"), deletion_date=OuterRef("deletion_date"))
        return self.filter(
            Exists(get_user_model().objects.filter(pk=OuterRef("recipient_id"), is_active=True)),
            Q(Exists(warnable), kind=DeletionWarning.Kind.WARNING)
            | Q(Exists(soft_deleted.filter(deletion_date=OuterRef("deletion_date"))), kind=DeletionWarning.Kind.NOTICE)
            | Q(Exists(soft_deleted.filter(hard_deletion_date=OuterRef("deletion_date"), hard_deletion_date__gt=now)),
                kind=DeletionWarning.Kind.HARD_WARNING),
        )

    def pending_notices(self, now):
        """Soft-deletion notices not yet sent whose survey is still soft-deleted and not on hold (R9, R13)."""
        from checktick_app.surveys.models import Survey

        soft_deleted = Survey.objects.notifiable_of_soft_deletion().filter(
            pk=OuterRef("survey_id"), deletion_date=OuterRef("deletion_date"))
        return self.claimable(now).filter(Exists(soft_deleted), kind=DeletionWarning.Kind.NOTICE)


class DeletionWarning(models.Model):
    """The warning ledger (R6): one row per (survey, date, kind, threshold, recipient).

    `kind` tells a 30/7/1-day warning (R5) from the notice sent when a survey is soft-deleted (R9,
    threshold_days 0) and from the warning before a hard-deletion date that moved after the notice
    (R23, threshold_days 0; `deletion_date` then holds the hard-deletion date the email names).
    """

    class Kind(models.TextChoices):
        WARNING = "warning", "Deletion warning"
        NOTICE = "notice", "Soft-deletion notice"
        HARD_WARNING = "hard_warning", "Hard-deletion warning"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        FAILED = "failed", "Failed permanently"
        SKIPPED = "skipped", "Skipped"

    SOFT_DELETION_NOTICE = 0

    survey_id = models.BigIntegerField()
    survey_name = models.CharField(max_length=255)
    deletion_date = models.DateTimeField()
    threshold_days = models.PositiveSmallIntegerField()
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.WARNING, db_default=Kind.WARNING)
    recipient_id = models.BigIntegerField()
    recipient_email = models.CharField(max_length=254, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    skip_reason = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # Which delivery holds the claim: its retry (after losing the database) takes the claim back at once
    # instead of waiting out the lease, and a duplicate delivery of the same message cannot.
    claim_token = models.CharField(max_length=32, blank=True, db_default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    run_id = models.BigIntegerField(null=True)

    objects = DeletionWarningQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["survey_id", "deletion_date", "kind", "threshold_days", "recipient_id"],
                name="warning_once_per_survey_date_kind_recipient",
            ),
        ]
        indexes = [
            models.Index(
                fields=["survey_id", "deletion_date"], name="warning_open",
                condition=Q(status__in=["pending", "sending"]),
            ),
        ]

    @classmethod
    def kind_for(cls, threshold_days):
        """The kind of a 30/7/1-day warning or a soft-deletion notice, told apart by their threshold."""
        return cls.Kind.NOTICE if threshold_days == cls.SOFT_DELETION_NOTICE else cls.Kind.WARNING

    def __str__(self):
        if self.kind != self.Kind.WARNING:
            return f"{self.get_kind_display()} for survey {self.survey_id} to user {self.recipient_id}"
        return f"{self.threshold_days}-day warning for survey {self.survey_id} to user {self.recipient_id}"


class GovernanceRun(models.Model):
    """Run history (R17) and the single-run lock (R18), in one row."""

    class Job(models.TextChoices):
        DATA_GOVERNANCE = "data_governance", "Data governance"
        PROGRESS_CLEANUP = "progress_cleanup", "Progress cleanup"

    class Trigger(models.TextChoices):
        BEAT = "beat", "Beat schedule"
        ADMIN = "admin", "Admin user"
        COMMAND = "command", "Management command"

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        ABANDONED = "abandoned", "Abandoned (process died)"
        # Asked for while another run held the lock, or after tonight's scheduled run: nothing ran
        # (h11: the refusal is a row in the history, pointing at the run it deferred to).
        REFUSED = "refused", "Refused"

    job = models.CharField(max_length=20, choices=Job.choices)
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    triggered_by_id = models.BigIntegerField(null=True)
    triggered_by = models.CharField(max_length=150, blank=True)
    dry_run = models.BooleanField(default=False)
    scheduled_for = models.DateField(null=True, blank=True, help_text="The scheduled day of a beat run.")
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    counts = models.JSONField(default=dict, blank=True)
    # What the run acted on (or, for a dry run, would act on): lists of {id, name, date} per heading.
    details = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # The run's clock: every rule of the run (plan and items) is applied at this instant.
    as_of = models.DateTimeField(null=True, blank=True)
    # Planning writes the run's items chunk by chunk; the run can finish only once it is planned.
    # The cursor (step and last survey id) lets a planner cut short by its time budget carry on.
    planned_at = models.DateTimeField(null=True, blank=True)
    plan_step = models.CharField(max_length=20, blank=True, default="")
    plan_after = models.BigIntegerField(default=0)
    # Driven by Celery messages (beat, Run now, --async), so the watchdog may re-send what it waits for;
    # an inline command run is its own process's business.
    on_celery = models.BooleanField(db_default=False)
    # The watchdog re-sent the items that had not landed (messages lost with the broker): when, how often.
    resumed_at = models.DateTimeField(null=True, blank=True)
    resumes = models.PositiveIntegerField(db_default=0)
    # Sends of this run that failed at the mail server (AUTH, MAIL FROM, relay, TLS, connection) and the
    # last such error: after a few with no email accepted, the run stops sending (engine.MAIL_SERVER_STOP).
    mail_server_failures = models.PositiveIntegerField(db_default=0)
    mail_server_error = models.TextField(blank=True, db_default="")
    # A refused run: the run that held the lock or had already done tonight's work.
    deferred_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                                    related_name="refusals")

    class Meta:
        ordering = ["-started_at", "-id"]
        permissions = [
            ("run_governance", "Can trigger and preview governance runs"),
            ("view_governance", "Can view governance history, audit and ledger"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["job"], condition=Q(status="running"), name="one_running_run_per_job",
                violation_error_message="A run of this job is already in progress.",
            ),
            models.UniqueConstraint(
                fields=["job", "scheduled_for"], condition=Q(trigger="beat", dry_run=False) & ~Q(status="refused"),
                name="one_beat_run_per_job_and_day",
            ),
        ]

    def __str__(self):
        kind = "dry run" if self.dry_run else "run"
        return f"{self.get_job_display()} {kind} #{self.pk} ({self.status})"

    @property
    def now(self):
        """The instant the run's rules are applied at (its start, unless it was given a time)."""
        return self.as_of or self.started_at

    @property
    def duration(self):
        if self.finished_at:
            return self.finished_at - self.started_at
        return None


class RunItem(models.Model):
    """One item of a run: planned `pending`, then settled once (done, skipped or failed) by a compare-and-set.

    The items are the plan and the record: the run's report is their aggregate (reports.run_report).
    `object_id` is the ledger row of an email, the survey of a deletion or hold, the slice of a cleanup.
    """

    class Kind(models.TextChoices):
        WARNING = "warning", "Warning email"
        NOTICE = "notice", "Soft-deletion notice"
        SOFT_DELETE = "soft_delete", "Soft delete"
        HARD_WARNING = "hard_warning", "Hard-deletion warning"
        HARD_DELETE = "hard_delete", "Hard delete"
        HELD = "held", "Held (legal hold)"
        CLEANUP_BATCH = "cleanup_batch", "Cleanup slice"

    class Outcome(models.TextChoices):
        PENDING = "pending", "Pending"
        DONE = "done", "Done"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed"

    # Why an item was skipped, when the report tells them apart.
    NO_ADDRESS = "no email address"
    MAIL_SERVER = "mail server"
    NO_RECIPIENT = "no recipient"
    ON_HOLD = "legal hold"

    run = models.ForeignKey(GovernanceRun, on_delete=models.PROTECT, related_name="items")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    object_id = models.BigIntegerField(null=True)
    survey_id = models.BigIntegerField(null=True)
    survey_name = models.CharField(max_length=255, blank=True)
    # The deletion date a warning, soft deletion or hold is about; the hard-deletion date of a hard deletion.
    date = models.DateTimeField(null=True)
    threshold_days = models.PositiveSmallIntegerField(null=True)
    recipient_id = models.BigIntegerField(null=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices, default=Outcome.PENDING)
    reason = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "kind", "object_id"], name="one_outcome_per_item_per_run"),
        ]
        indexes = [models.Index(fields=["run", "outcome"], name="runitem_by_outcome"),
                   # A soft deletion's notices, sent once it is done (dispatch.send_notices_of).
                   models.Index(fields=["run", "survey_id", "kind"], name="runitem_by_survey")]

    def __str__(self):
        return f"{self.get_kind_display()} {self.object_id} of run #{self.run_id} ({self.outcome})"
