"""Surveys and what hangs off them, as far as the governance jobs, the admin and the audit need.

Names are fixed by the seed's shell snippets (SPEC.md, "Data model"). Legal holds and retention
extensions point at their survey without a database constraint and without cascading, so that they
outlive a hard deletion and keep proving what happened.
"""

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.expressions import Col
from django.db.models.lookups import IsNull
from django.utils import timezone

from .querysets import LegalHoldQuerySet, RetentionExtensionQuerySet, SurveyProgressQuerySet, SurveyQuerySet


def default_retention_months():
    return settings.CHECKTICK_DEFAULT_RETENTION_MONTHS


def validate_retention_months(value):
    from django.core.exceptions import ValidationError

    maximum = settings.CHECKTICK_MAX_RETENTION_MONTHS
    if value is None or not 1 <= value <= maximum:
        raise ValidationError(
            f"Retention must be from 1 to {maximum} months (got {value}).", code="retention_out_of_range"
        )


class Organisation(models.Model):
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_organisations"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self):
        return self.name


class OrganisationMembership(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        CREATOR = "creator", "Creator"
        VIEWER = "viewer", "Viewer"
        DATA_CUSTODIAN = "data_custodian", "Data custodian"

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation", "user"], name="membership_unique_per_org"),
        ]

    def __str__(self):
        return f"{self.user} ({self.role}) in {self.organisation}"


class Survey(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        CLOSED = "closed", "Closed"

    name = models.CharField(max_length=255)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="surveys"
    )
    organisation = models.ForeignKey(
        Organisation, on_delete=models.SET_NULL, null=True, blank=True, related_name="surveys"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)
    retention_months = models.PositiveSmallIntegerField(
        default=default_retention_months,
        validators=[MinValueValidator(1), validate_retention_months],
        help_text="Months the data is kept after closing (1 to CHECKTICK_MAX_RETENTION_MONTHS).",
    )
    deletion_date = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    hard_deletion_date = models.DateTimeField(null=True, blank=True)

    objects = SurveyQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(retention_months__gte=1)
                & Q(retention_months__lte=settings.CHECKTICK_RETENTION_CEILING_MONTHS),
                name="survey_retention_months_1_to_24",
                violation_error_message="Retention must be from 1 to 24 months.",
            ),
            models.CheckConstraint(
                condition=Q(deleted_at__isnull=True) | Q(hard_deletion_date__isnull=False),
                name="survey_soft_deleted_has_hard_deletion_date",
            ),
        ]
        indexes = [
            # Partial indexes keep each "due" query an index scan over the few rows that matter.
            models.Index(
                fields=["deletion_date"], name="survey_live_deletion_date",
                condition=Q(deleted_at__isnull=True, deletion_date__isnull=False),
            ),
            models.Index(
                fields=["hard_deletion_date"], name="survey_soft_deleted_hard_date",
                condition=Q(deleted_at__isnull=False),
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def accepts_responses(self):
        return self.status == self.Status.PUBLISHED and self.deleted_at is None

    @property
    def has_active_hold(self):
        return self.legal_holds.active().exists()


class SurveyAccessToken(models.Model):
    survey = models.ForeignKey(Survey, on_delete=models.CASCADE, related_name="access_tokens")
    token = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"token {self.pk} for survey {self.survey_id}"


class SurveyResponse(models.Model):
    survey = models.ForeignKey(Survey, on_delete=models.CASCADE, related_name="responses")
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    answers = models.JSONField(default=dict)
    submitted_at = models.DateTimeField(default=timezone.now)


class SurveyExport(models.Model):
    """A data export of a survey's responses; removed with the survey on hard deletion (R11)."""

    survey = models.ForeignKey(Survey, on_delete=models.CASCADE, related_name="exports")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    file_name = models.CharField(max_length=255, blank=True)


class SurveyProgress(models.Model):
    """An incomplete draft of a response: of a logged-in user, an anonymous session, or a token."""

    survey = models.ForeignKey(Survey, on_delete=models.CASCADE, related_name="progress")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    session_key = models.CharField(max_length=40, null=True, blank=True)
    # DO_NOTHING keeps token deletes set-based (no rows collected into Python); the database's
    # foreign key still refuses a token deleted before its drafts.
    access_token = models.ForeignKey(
        SurveyAccessToken, on_delete=models.DO_NOTHING, null=True, blank=True, related_name="progress"
    )
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    objects = SurveyProgressQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "survey progress"
        constraints = [
            # Exactly one owner kind: a draft of nobody could never be resumed, one of two is ambiguous.
            models.CheckConstraint(
                condition=(
                    Q(user__isnull=False, session_key__isnull=True, access_token__isnull=True)
                    | Q(user__isnull=True, session_key__isnull=False, access_token__isnull=True)
                    | Q(user__isnull=True, session_key__isnull=True, access_token__isnull=False)
                ),
                name="progress_exactly_one_owner",
                violation_error_message="A draft belongs to exactly one of: a user, a session, an access token.",
            ),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="progress_expires_at"),
            models.Index(fields=["updated_at"], name="progress_updated_at"),
        ]


class LegalHold(models.Model):
    """A hold freezes a survey's deletion (R13). Kept after hard deletion, hence no DB constraint."""

    survey = models.ForeignKey(
        Survey, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="legal_holds", related_query_name="legal_hold",
    )
    survey_name = models.CharField(max_length=255)
    reason = models.TextField()
    authority = models.CharField(max_length=255)
    placed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    placed_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)
    removed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    removal_reason = models.TextField(blank=True)

    objects = LegalHoldQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["survey"], name="legalhold_active_by_survey", condition=Q(removed_at__isnull=True)),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(reason=""), name="legalhold_reason_required"),
            models.CheckConstraint(condition=~Q(authority=""), name="legalhold_authority_required"),
        ]

    def __str__(self):
        state = "active" if self.removed_at is None else "removed"
        return f"Hold on {self.survey_name} ({state})"


class _HoldNotRemoved(IsNull):
    """`legal_hold__removed_at__isnull=True` means "has a hold that is not removed" (SPEC, Data model).

    Across the reverse relation Django turns isnull=True into a LEFT JOIN, where a survey that never
    had a hold also shows a NULL `removed_at`; the seed's snippet
    `Survey.objects.filter(legal_hold__removed_at__isnull=True)` would then list every survey never
    held as "under an active hold". Requiring the hold row to exist keeps the snippet's meaning; on
    LegalHold's own table the extra condition is always true.
    """

    def as_sql(self, compiler, connection):
        sql, params = super().as_sql(compiler, connection)
        if self.rhs is True and isinstance(self.lhs, Col):
            pk_sql, pk_params = compiler.compile(LegalHold._meta.pk.get_col(self.lhs.alias))
            sql, params = f"({sql} AND {pk_sql} IS NOT NULL)", [*params, *pk_params]
        return sql, params


LegalHold._meta.get_field("removed_at").register_lookup(_HoldNotRemoved)


class RetentionExtension(models.Model):
    """Who extended retention, when, by how much and why (R3). Kept after hard deletion."""

    survey = models.ForeignKey(
        Survey, on_delete=models.DO_NOTHING, db_constraint=False, related_name="retention_extensions"
    )
    survey_name = models.CharField(max_length=255)
    extended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    extended_at = models.DateTimeField(default=timezone.now)
    months_added = models.PositiveSmallIntegerField()
    reason = models.TextField()
    previous_deletion_date = models.DateTimeField(null=True)
    new_deletion_date = models.DateTimeField()

    objects = RetentionExtensionQuerySet.as_manager()
