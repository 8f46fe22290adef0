"""Which rows are due: every governance rule is one queryset method that takes the time.

The forecast, the dry run, the nightly run and the Celery producer all call these, so a rule is
written once. Each method is a single set-based query (no rows are loaded here).
"""

from datetime import timedelta

from django.apps import apps
from django.conf import settings
from django.db import models
from django.db.models import Exists, F, OuterRef, Q


def applicable_threshold(remaining: timedelta, thresholds=None):
    """R5: the smallest threshold t (days) with remaining <= t, or None if none applies."""
    thresholds = sorted(thresholds or settings.CHECKTICK_WARNING_DAYS)
    if remaining <= timedelta(0):
        return None
    for days in thresholds:
        if remaining <= timedelta(days=days):
            return days
    return None


class EvidenceQuerySet(models.QuerySet):
    """Legal holds and retention extensions are evidence (R24): never deleted, whoever asks. The database
    refuses it too (surveys migration 0002 and ops/postgres/grants.sql)."""

    def delete(self):
        from checktick_app.audit.models import AppendOnlyError

        raise AppendOnlyError(f"{self.model._meta.verbose_name_plural} are never deleted (R24).")


class RetentionExtensionQuerySet(EvidenceQuerySet):
    def update(self, **kwargs):
        from checktick_app.audit.models import AppendOnlyError

        raise AppendOnlyError("Retention extensions are never changed (R24).")


class LegalHoldQuerySet(EvidenceQuerySet):
    def active(self):
        """R13: holds not yet removed; while a survey has one, it gets no warning and no deletion."""
        return self.filter(removed_at__isnull=True)


class SurveyQuerySet(models.QuerySet):
    def _active_holds(self):
        # By the registry, not an import: the models module imports this one.
        return apps.get_model("surveys", "LegalHold").objects.active().filter(survey_id=OuterRef("pk"))

    def with_active_hold(self):
        return self.filter(Exists(self._active_holds()))

    def without_active_hold(self):
        return self.filter(~Exists(self._active_holds()))

    def visible(self):
        """Normal listings hide soft-deleted surveys (R9)."""
        return self.filter(deleted_at__isnull=True)

    def warnable(self, now):
        """R4: a future deletion date, not soft-deleted, no active hold."""
        return self.filter(deletion_date__gt=now, deleted_at__isnull=True).without_active_hold()

    def due_for_warning(self, now, days):
        """R5: surveys whose applicable threshold right now is exactly `days`."""
        thresholds = sorted(settings.CHECKTICK_WARNING_DAYS)
        if days not in thresholds:
            raise ValueError(f"{days} is not one of CHECKTICK_WARNING_DAYS {tuple(thresholds)}")
        smaller = [t for t in thresholds if t < days]
        window = Q(deletion_date__lte=now + timedelta(days=days))
        if smaller:
            window &= Q(deletion_date__gt=now + timedelta(days=smaller[-1]))
        return self.warnable(now).filter(window)

    def due_for_soft_delete(self, now):
        """R9: the deletion date has come, not yet soft-deleted, no active hold."""
        return self.filter(deletion_date__lte=now, deleted_at__isnull=True).without_active_hold()

    def due_for_hard_delete(self, now):
        """R11: soft-deleted, grace period over, no active hold."""
        return self.filter(deleted_at__isnull=False, hard_deletion_date__lte=now).without_active_hold()

    def notifiable_of_soft_deletion(self):
        """R9, R13: soft-deleted and not on hold, so its owners are told it went (and how to restore it)."""
        return self.filter(deleted_at__isnull=False).without_active_hold()

    def due_for_hard_deletion_warning(self, now):
        """R23: soft-deleted, no active hold, hard deletion due within CHECKTICK_HOLD_RELEASE_NOTICE_DAYS, and
        the date moved after the soft deletion (a hold was lifted), so the soft-deletion notice did not name it.

        A date the soft deletion set (deleted_at + the grace period) was named by its notice: no extra email.
        Which recipients were already told this date is the ledger's business (one row per date and recipient).
        """
        notice = timedelta(days=settings.CHECKTICK_HOLD_RELEASE_NOTICE_DAYS)
        grace = timedelta(days=settings.CHECKTICK_SOFT_DELETE_GRACE_DAYS)
        return self.filter(
            deleted_at__isnull=False, hard_deletion_date__gt=now, hard_deletion_date__lte=now + notice,
        ).filter(hard_deletion_date__gt=F("deleted_at") + grace).without_active_hold()

    def held_back(self, now):
        """Surveys that a deletion would have taken tonight but for an active hold (R13)."""
        due = Q(deletion_date__lte=now, deleted_at__isnull=True) | Q(
            deleted_at__isnull=False, hard_deletion_date__lte=now
        )
        return self.filter(due).with_active_hold()


class SurveyProgressQuerySet(models.QuerySet):
    def expired(self, now):
        """R16: past expires_at, or untouched for the safety-net period whatever expires_at says."""
        stale_before = now - timedelta(days=settings.CHECKTICK_PROGRESS_STALE_DAYS)
        return self.filter(Q(expires_at__lt=now) | Q(updated_at__lt=stale_before))

    def count_by_kind(self):
        from django.db.models import Count

        # The aliases must not be field names: an aggregate called "user" would shadow the `user`
        # field in the other filters (Django raises FieldError "'user' is an aggregate").
        counts = self.aggregate(
            n_user=Count("pk", filter=Q(user__isnull=False)),
            n_token=Count("pk", filter=Q(user__isnull=True, access_token__isnull=False)),
            n_session=Count("pk", filter=Q(user__isnull=True, access_token__isnull=True)),
        )
        return {kind: counts[f"n_{kind}"] for kind in ("user", "token", "session")}
