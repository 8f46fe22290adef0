"""One small world of surveys in every state a night's run meets, and what a run must do to it.

Dates are relative to `now` with hours of margin, so the seconds between seeding and a worker's
own clock never change what is due.
"""

from datetime import timedelta

from checktick_app.audit.models import AuditEvent
from checktick_app.governance.models import DeletionWarning
from checktick_app.surveys.models import Survey, SurveyProgress, SurveyResponse
from tests.factories import (
    MembershipFactory, OrganisationFactory, ResponseFactory, TokenFactory, UserFactory, active_hold, closed_survey,
    draft, soft_deleted_survey,
)


def seed_world(prefix, now):
    """Returns {role: survey} for a world whose users and survey names all start with `prefix`."""
    p = prefix.lower()

    def user(name, **kw):
        return UserFactory(username=f"{p}-{name}", email=kw.pop("email", f"{p}-{name}@example.org"), **kw)

    org = OrganisationFactory(name=f"{prefix} Trust", owner=user("org-owner"))
    MembershipFactory(organisation=org, user=user("org-admin"))
    world = {
        # 30-day warning to the survey owner, the organisation owner and its admin: 3 emails.
        "warn30": closed_survey(now + timedelta(days=20), name=f"{prefix} Cardiac audit", owner=user("cardio"),
                                organisation=org),
        # 7-day warning to its owner: 1 email.
        "warn7": closed_survey(now + timedelta(days=5), name=f"{prefix} Falls audit", owner=user("falls")),
        # 1-day warning: the owner has no address (skipped, R7), the organisation owner gets it: 1 email.
        "warn1": closed_survey(now + timedelta(hours=12), name=f"{prefix} Sepsis audit",
                               owner=user("sepsis", email=""), organisation=OrganisationFactory(
                                   name=f"{prefix} Other trust", owner=user("other-owner"))),
        # Due for a warning, but its only possible recipient is inactive: reported, nobody emailed.
        "nobody": closed_survey(now + timedelta(days=20), name=f"{prefix} Orphan audit",
                                owner=user("gone", is_active=False)),
        # Soft deletion due: deleted, its draft dropped, its owner notified once (1 email).
        "soft": closed_survey(now - timedelta(hours=2), name=f"{prefix} Stroke audit", owner=user("stroke")),
        # Hard deletion due: removed with everything hanging off it.
        "hard": soft_deleted_survey(now - timedelta(days=31), name=f"{prefix} Diabetes audit", owner=user("diab")),
        # Would be soft-deleted, but a legal hold stands.
        "held": closed_survey(now - timedelta(days=1), name=f"{prefix} Litigated audit", owner=user("held")),
        # Nothing due for months.
        "later": closed_survey(now + timedelta(days=100), name=f"{prefix} Asthma audit", owner=user("asthma")),
    }
    active_hold(world["held"])
    draft(world["soft"], now - timedelta(days=1))
    for _ in range(2):
        ResponseFactory(survey=world["hard"])
    token = TokenFactory(survey=world["hard"])
    draft(world["hard"], now - timedelta(days=40), kind="token", access_token=token)
    return world


def expected_recipients(prefix):
    p = prefix.lower()
    return sorted(f"{p}-{name}@example.org" for name in ("cardio", "org-owner", "org-admin", "falls",
                                                         "other-owner", "stroke"))


EXPECTED_COUNTS = {
    "warnings_30d": 1, "warnings_7d": 1, "warnings_1d": 1, "warnings": 3,
    "emails_sent": 5, "emails_failed": 0, "recipients_skipped": 1, "surveys_without_recipients": 1,
    "soft_deleted": 1, "hard_deleted": 1, "soft_deletion_notices_sent": 1, "skipped_legal_hold": 1,
    "failed_items": 0,
}


def end_state(world, prefix):
    """What a run left behind, with ids and the prefix taken out, so two worlds can be compared."""

    def name(value):
        return value.replace(prefix, "<world>", 1).replace(f"{prefix.lower()}-", "<world>-", 1)

    ids = {s.pk: role for role, s in world.items()}
    surveys = {}
    for role, survey in world.items():
        live = Survey.objects.filter(pk=survey.pk).first()
        surveys[role] = "hard deleted" if live is None else ("soft deleted" if live.deleted_at else "live")
    ledger = sorted(
        (ids[w.survey_id], w.threshold_days, name(w.recipient_email) if w.recipient_email else "", w.status)
        for w in DeletionWarning.objects.filter(survey_id__in=ids)
    )
    audit = sorted((ids[e.survey_id], e.action) for e in AuditEvent.objects.filter(survey_id__in=ids)
                   if e.action not in ("closed", "hold_placed"))
    left = {
        "responses": SurveyResponse.objects.filter(survey_id__in=ids).count(),
        "drafts": SurveyProgress.objects.filter(survey_id__in=ids).count(),
    }
    return {"surveys": surveys, "ledger": ledger, "audit": audit, "left": left}
