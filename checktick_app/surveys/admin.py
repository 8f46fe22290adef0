"""Surveys in the admin, as far as retention and legal holds go; response answers are never shown.

The retention clock is moved only by the services in `services.py` (they lock the row, check the
rules and write the audit entry), never by editing a date field: deletion_date, deleted_at,
hard_deletion_date, status, closed_at and retention_months are read-only here. Extending retention,
restoring, and placing or removing a legal hold are forms on the survey's page, each calling its
service with the acting user. Legal holds and extensions are listed as read-only history.

Permissions: the survey pages need surveys.view_survey; extending or restoring needs
surveys.add_retentionextension; placing a hold surveys.add_legalhold; removing one
surveys.change_legalhold (all in the "Governance operators" group, see create_governance_operator).
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Exists, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.safestring import mark_safe

from checktick_app.admin_helpers import ReadOnlyAdminMixin, search_by_id

from . import services
from .models import (
    LegalHold, Organisation, OrganisationMembership, RetentionExtension, Survey, SurveyResponse,
)

EXTEND_PERMISSION = "surveys.add_retentionextension"
PLACE_HOLD_PERMISSION = "surveys.add_legalhold"
REMOVE_HOLD_PERMISSION = "surveys.change_legalhold"


# --- Surveys -----------------------------------------------------------------------------------

class SoftDeletedFilter(admin.SimpleListFilter):
    title = "soft-deleted"
    parameter_name = "soft_deleted"

    def lookups(self, request, model_admin):
        return [("yes", "Soft-deleted"), ("no", "Not soft-deleted")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        return queryset


class ActiveHoldFilter(admin.SimpleListFilter):
    title = "legal hold"
    parameter_name = "hold"

    def lookups(self, request, model_admin):
        return [("active", "Under an active hold"), ("none", "No active hold")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.with_active_hold()
        if self.value() == "none":
            return queryset.without_active_hold()
        return queryset


class LegalHoldInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = LegalHold
    fk_name = "survey"
    verbose_name_plural = "Legal holds (history)"
    fields = ("placed_at", "placed_by", "reason", "authority", "removed_at", "removed_by", "removal_reason")
    readonly_fields = fields
    extra = 0
    ordering = ("-placed_at",)


class RetentionExtensionInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = RetentionExtension
    fk_name = "survey"
    verbose_name_plural = "Retention extensions (history)"
    fields = ("extended_at", "extended_by", "months_added", "reason", "previous_deletion_date", "new_deletion_date")
    readonly_fields = fields
    extra = 0
    ordering = ("-extended_at",)


@admin.register(Survey)
class SurveyAdmin(admin.ModelAdmin):
    # Dates only in the list (it has to fit); the survey's page shows them to the minute.
    list_display = ("name", "id", "status", "closed", "retention", "deletion", "soft_deleted", "hard_deletion",
                    "active_hold", "response_count")
    list_filter = ("status", SoftDeletedFilter, ActiveHoldFilter, "deletion_date", "organisation")
    search_fields = ("name",)
    search_help_text = "Survey name, or a survey id."
    list_select_related = ("organisation",)
    raw_id_fields = ("owner",)
    fieldsets = [
        (None, {"fields": ("name", "owner", "organisation", "created_at", "response_count")}),
        ("Retention (changed only through the buttons above: extend, restore, legal hold)", {"fields": (
            "status", "closed_at", "retention_months", "deletion_date", "deleted_at", "hard_deletion_date",
            "under_active_hold",
        )}),
    ]
    readonly_fields = ("created_at", "response_count", "status", "closed_at", "retention_months", "deletion_date",
                       "deleted_at", "hard_deletion_date", "under_active_hold")
    inlines = [LegalHoldInline, RetentionExtensionInline]
    actions = ["extend_retention_action", "place_hold_action", "remove_hold_action"]

    def get_queryset(self, request):
        responses = (SurveyResponse.objects.filter(survey=OuterRef("pk")).order_by().values("survey")
                     .annotate(n=Count("pk")).values("n"))
        return super().get_queryset(request).annotate(
            _active_hold=Exists(LegalHold.objects.active().filter(survey=OuterRef("pk"))),
            _responses=Coalesce(Subquery(responses, output_field=IntegerField()), Value(0)),
        )

    def get_search_results(self, request, queryset, search_term):
        searched, duplicates = super().get_search_results(request, queryset, search_term)
        return searched | search_by_id(queryset, search_term), duplicates

    def has_add_permission(self, request):
        return False  # surveys are created in CheckTick itself, with their own rules

    def has_delete_permission(self, request, obj=None):
        return False  # deletion is the governance run's job: warned, audited, held back by legal holds

    @admin.display(description="Closed", ordering="closed_at")
    def closed(self, survey):
        return _short(survey.closed_at)

    @admin.display(description="Months", ordering="retention_months")
    def retention(self, survey):
        return survey.retention_months

    @admin.display(description="Deletion", ordering="deletion_date")
    def deletion(self, survey):
        return _short(survey.deletion_date)

    @admin.display(description="Soft-deleted", ordering="deleted_at")
    def soft_deleted(self, survey):
        return _short(survey.deleted_at)

    @admin.display(description="Hard deletion", ordering="hard_deletion_date")
    def hard_deletion(self, survey):
        return _short(survey.hard_deletion_date)

    # Not boolean=True: no hold is the normal state, and the admin's red ✗ would make it look like a fault.
    @admin.display(description="Hold", ordering="_active_hold")
    def active_hold(self, survey):
        return mark_safe('<span class="survey-on-hold">on hold</span>') if survey._active_hold else "—"

    @admin.display(description="Under an active legal hold")
    def under_active_hold(self, survey):
        return "Yes: no deletion while the hold stands" if survey._active_hold else "No"

    @admin.display(description="Responses", ordering="_responses")
    def response_count(self, survey):
        return survey._responses

    # --- Forms for the retention services ------------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        view = self.admin_site.admin_view
        return [
            path("<int:survey_id>/extend-retention/", view(self.extend_view), name="%s_%s_extend" % info),
            path("<int:survey_id>/place-legal-hold/", view(self.place_hold_view), name="%s_%s_place_hold" % info),
            path("<int:survey_id>/remove-legal-hold/", view(self.remove_hold_view),
                 name="%s_%s_remove_hold" % info),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        user = request.user
        extra = {
            "can_extend": user.has_perm(EXTEND_PERMISSION),
            "can_place_hold": user.has_perm(PLACE_HOLD_PERMISSION),
            "can_remove_hold": user.has_perm(REMOVE_HOLD_PERMISSION),
        }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})

    def _survey_or_404(self, request, survey_id, permission):
        if not (self.has_view_permission(request) and request.user.has_perm(permission)):
            raise PermissionDenied
        return get_object_or_404(self.get_queryset(request), pk=survey_id)

    def _form_page(self, request, survey, form, title, submit_label, intro):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts, "title": title, "survey": survey, "form": form, "submit_label": submit_label,
            "intro": intro, "max_months": settings.CHECKTICK_MAX_RETENTION_MONTHS,
            "errors": form.errors,
        }
        return TemplateResponse(request, "admin/surveys/survey/retention_form.html", context)

    def _done(self, request, survey, message):
        self.message_user(request, message, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:surveys_survey_change", args=[survey.pk]))

    def extend_view(self, request, survey_id):
        """Extend retention (R3), or restore a soft-deleted survey with an extension (R10)."""
        survey = self._survey_or_404(request, survey_id, EXTEND_PERMISSION)
        restoring = survey.deleted_at is not None
        form = ExtendRetentionForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            service = services.restore_survey if restoring else services.extend_retention
            try:
                survey = service(survey, months=form.cleaned_data["months"], reason=form.cleaned_data["reason"],
                                 by=request.user)
            except ValidationError as exc:
                add_service_error(form, exc, {"reason_required": "reason", **dict.fromkeys(MONTHS_ERRORS, "months")})
            else:
                verb = "Restored" if restoring else "Extended retention of"
                return self._done(request, survey, f"{verb} “{survey.name}”: retention is now "
                                                   f"{survey.retention_months} months, deletion date "
                                                   f"{survey.deletion_date:%Y-%m-%d %H:%M} UTC.")
        if restoring:
            title, label = f"Restore “{survey.name}”", "Restore with this extension"
            intro = ("This survey is soft-deleted. Restoring it needs a retention extension that puts its deletion "
                     "date in the future, so the next run does not delete it again.")
        else:
            title, label = f"Extend retention of “{survey.name}”", "Extend retention"
            intro = ("The deletion date is recomputed from the closing date with the new total; owners are warned "
                     "again before the new date.")
        return self._form_page(request, survey, form, title, label, intro)

    def place_hold_view(self, request, survey_id):
        survey = self._survey_or_404(request, survey_id, PLACE_HOLD_PERMISSION)
        form = PlaceHoldForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                services.place_legal_hold(survey, reason=form.cleaned_data["reason"],
                                          authority=form.cleaned_data["authority"], by=request.user)
            except ValidationError as exc:
                add_service_error(form, exc, {"reason_required": "reason"})
            else:
                return self._done(request, survey, f"Legal hold placed on “{survey.name}”: no warning and no deletion "
                                                   "of either kind while it stands.")
        return self._form_page(request, survey, form, f"Place a legal hold on “{survey.name}”", "Place legal hold",
                               "While any hold is active the survey gets no warnings and no deletion of either kind.")

    def remove_hold_view(self, request, survey_id):
        survey = self._survey_or_404(request, survey_id, REMOVE_HOLD_PERMISSION)
        active = LegalHold.objects.active().filter(survey_id=survey.pk).order_by("placed_at")
        form = RemoveHoldForm(request.POST or None, holds=active)
        if not active.exists():
            self.message_user(request, f"“{survey.name}” has no active legal hold.", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:surveys_survey_change", args=[survey.pk]))
        if request.method == "POST" and form.is_valid():
            try:
                services.remove_legal_hold(form.cleaned_data["hold"], reason=form.cleaned_data["reason"],
                                           by=request.user)
            except ValidationError as exc:
                add_service_error(form, exc, {"reason_required": "reason"})
            else:
                survey.refresh_from_db()
                return self._done(request, survey, f"Legal hold removed from “{survey.name}”. Deletion date "
                                                   f"{_when(survey.deletion_date)}, hard deletion "
                                                   f"{_when(survey.hard_deletion_date)}.")
        return self._form_page(request, survey, form, f"Remove a legal hold from “{survey.name}”",
                               "Remove legal hold",
                               "When the last hold goes and a deadline is less than "
                               f"{settings.CHECKTICK_HOLD_RELEASE_NOTICE_DAYS} days away (or past), it moves out "
                               "so the owners are warned before anything is deleted.")

    # --- The same forms from the changelist, for one selected survey ------------------------------

    def _one_selected(self, request, queryset, url_name):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one survey for this action.", messages.WARNING)
            return None
        return HttpResponseRedirect(reverse(f"admin:surveys_survey_{url_name}", args=[queryset.get().pk]))

    @admin.action(description="Extend retention (or restore) of the selected survey…")
    def extend_retention_action(self, request, queryset):
        return self._one_selected(request, queryset, "extend")

    @admin.action(description="Place a legal hold on the selected survey…")
    def place_hold_action(self, request, queryset):
        return self._one_selected(request, queryset, "place_hold")

    @admin.action(description="Remove a legal hold from the selected survey…")
    def remove_hold_action(self, request, queryset):
        return self._one_selected(request, queryset, "remove_hold")

    def get_actions(self, request):
        actions = super().get_actions(request)
        for name, permission in [("extend_retention_action", EXTEND_PERMISSION),
                                 ("place_hold_action", PLACE_HOLD_PERMISSION),
                                 ("remove_hold_action", REMOVE_HOLD_PERMISSION)]:
            if not request.user.has_perm(permission):
                actions.pop(name, None)
        return actions


def _short(value):
    return f"{value:%Y-%m-%d}" if value else "—"


def _when(value):
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "none"


# The services' error codes that are about the number of months (shown next to that field).
MONTHS_ERRORS = ("months_invalid", "retention_over_maximum", "extension_not_later", "restore_date_in_past",
                 "restore_date_too_soon")


def add_service_error(form, exc, field_by_code):
    """A service's ValidationError shown on the form, next to the field it is about (else above the form)."""
    for error in exc.error_list:
        form.add_error(field_by_code.get(error.code), error)


class ExtendRetentionForm(forms.Form):
    months = forms.IntegerField(
        min_value=1, label="Months to add",
        help_text=f"Whole months; the new total may be at most CHECKTICK_MAX_RETENTION_MONTHS "
                  f"({settings.CHECKTICK_MAX_RETENTION_MONTHS}).",
    )
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), help_text="Kept in the audit log.")


class PlaceHoldForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), help_text="Kept in the audit log.")
    authority = forms.CharField(max_length=255, help_text="Who requires the hold, e.g. the Trust's legal team.",
                                widget=forms.TextInput(attrs={"size": 60}))


class RemoveHoldForm(forms.Form):
    hold = forms.ModelChoiceField(queryset=LegalHold.objects.none(), empty_label=None, label="Hold to remove")
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 60}), help_text="Kept in the audit log.")

    def __init__(self, *args, holds, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["hold"].queryset = holds
        self.fields["hold"].label_from_instance = (
            lambda h: f"placed {h.placed_at:%Y-%m-%d} by {h.placed_by or 'unknown'}: {h.reason[:60]} ({h.authority})")


# --- History and organisations -----------------------------------------------------------------

@admin.register(LegalHold)
class LegalHoldAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("survey_name", "survey_id", "is_active", "reason", "authority", "placed_by", "placed_at",
                    "removed_at", "removed_by")
    list_filter = ("placed_at", "removed_at")
    search_fields = ("survey_name", "reason", "authority")
    list_select_related = ("placed_by", "removed_by")

    @admin.display(description="Active", boolean=True, ordering="removed_at")
    def is_active(self, hold):
        return hold.removed_at is None

    def get_search_results(self, request, queryset, search_term):
        searched, duplicates = super().get_search_results(request, queryset, search_term)
        return searched | search_by_id(queryset, search_term, "survey_id"), duplicates


@admin.register(RetentionExtension)
class RetentionExtensionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("survey_name", "survey_id", "months_added", "previous_deletion_date", "new_deletion_date",
                    "extended_by", "extended_at", "reason")
    list_filter = ("extended_at",)
    search_fields = ("survey_name", "reason")
    list_select_related = ("extended_by",)

    def get_search_results(self, request, queryset, search_term):
        searched, duplicates = super().get_search_results(request, queryset, search_term)
        return searched | search_by_id(queryset, search_term, "survey_id"), duplicates


class MembershipInline(admin.TabularInline):
    model = OrganisationMembership
    raw_id_fields = ("user",)
    extra = 0


@admin.register(Organisation)
class OrganisationAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "member_count", "survey_count", "created_at")
    search_fields = ("name",)
    raw_id_fields = ("owner",)
    inlines = [MembershipInline]

    def get_queryset(self, request):
        members = (OrganisationMembership.objects.filter(organisation=OuterRef("pk")).order_by()
                   .values("organisation").annotate(n=Count("pk")).values("n"))
        surveys = (Survey.objects.filter(organisation=OuterRef("pk")).order_by().values("organisation")
                   .annotate(n=Count("pk")).values("n"))
        return super().get_queryset(request).annotate(
            _members=Coalesce(Subquery(members, output_field=IntegerField()), Value(0)),
            _surveys=Coalesce(Subquery(surveys, output_field=IntegerField()), Value(0)),
        )

    @admin.display(description="Members", ordering="_members")
    def member_count(self, organisation):
        return organisation._members

    @admin.display(description="Surveys", ordering="_surveys")
    def survey_count(self, organisation):
        return organisation._surveys
