"""A small cast for the specifications: users, an organisation, surveys in each retention state."""

import secrets
from datetime import timedelta

import factory
from dateutil.relativedelta import relativedelta
from django.contrib.auth import get_user_model

from checktick_app.surveys.models import (
    LegalHold, Organisation, OrganisationMembership, Survey, SurveyAccessToken, SurveyExport, SurveyProgress,
    SurveyResponse,
)


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    is_active = True


class OrganisationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Organisation {n}")
    owner = factory.SubFactory(UserFactory)


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = OrganisationMembership

    organisation = factory.SubFactory(OrganisationFactory)
    user = factory.SubFactory(UserFactory)
    role = OrganisationMembership.Role.ADMIN


class SurveyFactory(factory.django.DjangoModelFactory):
    """A published survey; use closed_survey() for one with a retention clock."""

    class Meta:
        model = Survey

    name = factory.Sequence(lambda n: f"Survey {n}")
    owner = factory.SubFactory(UserFactory)
    organisation = None
    status = Survey.Status.PUBLISHED
    retention_months = 6


def closed_survey(deletion_date, **kwargs):
    """A closed survey whose deletion date is exactly `deletion_date` (closed_at derived from it)."""
    months = kwargs.pop("retention_months", 6)
    return SurveyFactory(
        status=Survey.Status.CLOSED, retention_months=months, deletion_date=deletion_date,
        closed_at=deletion_date - relativedelta(months=months), **kwargs,
    )


def soft_deleted_survey(deleted_at, grace_days=30, **kwargs):
    survey = closed_survey(deleted_at, **kwargs)
    survey.deleted_at = deleted_at
    survey.hard_deletion_date = deleted_at + timedelta(days=grace_days)
    survey.save(update_fields=["deleted_at", "hard_deletion_date"])
    return survey


def active_hold(survey, **kwargs):
    return LegalHold.objects.create(
        survey=survey, survey_name=survey.name, reason=kwargs.get("reason", "Litigation"),
        authority=kwargs.get("authority", "Trust legal team"),
    )


class ResponseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SurveyResponse

    survey = factory.SubFactory(SurveyFactory)
    answers = factory.LazyFunction(lambda: {"q1": "confidential answer"})


class TokenFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SurveyAccessToken

    survey = factory.SubFactory(SurveyFactory)
    token = factory.LazyFunction(lambda: secrets.token_hex(16))


class ExportFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = SurveyExport

    survey = factory.SubFactory(SurveyFactory)
    file_name = "export.csv"


def draft(survey, updated_at, *, kind="session", expires_at=None, **owner):
    """A draft of the given kind, last touched at `updated_at`, expiring 30 days later unless told."""
    if not owner:
        if kind == "user":
            owner = {"user": UserFactory()}
        elif kind == "token":
            owner = {"access_token": TokenFactory(survey=survey)}
        else:
            owner = {"session_key": secrets.token_hex(16)}
    return SurveyProgress.objects.create(
        survey=survey, updated_at=updated_at, expires_at=expires_at or updated_at + timedelta(days=30), **owner
    )
