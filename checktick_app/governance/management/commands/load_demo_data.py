"""Demo data for the quick start: one survey in every state the two jobs care about."""

import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from checktick_app.governance.management.base import ExactFlagsCommand
from checktick_app.surveys.models import (
    Organisation, OrganisationMembership, Survey, SurveyAccessToken, SurveyProgress, SurveyResponse,
)
from checktick_app.surveys.services import place_legal_hold


class Command(ExactFlagsCommand):
    help = "Load demo surveys, drafts and a legal hold (with --if-empty: only into an empty database)."

    def add_arguments(self, parser):
        parser.add_argument("--if-empty", action="store_true", help="Do nothing if any survey exists.")

    def handle(self, *args, **options):
        if options["if_empty"] and Survey.objects.exists():
            self.stdout.write("Demo data not loaded: the database already has surveys.")
            return
        with transaction.atomic():
            counts = load_demo_data(timezone.now())
        self.stdout.write(f"Loaded demo data: {counts['surveys']} surveys, {counts['drafts']} drafts.")


def load_demo_data(now):
    User = get_user_model()
    owner = User.objects.create_user("alice", "alice@example.org", first_name="Alice")
    org_owner = User.objects.create_user("bob", "bob@example.org", first_name="Bob")
    admin = User.objects.create_user("carol", "CAROL@example.org", first_name="Carol")
    User.objects.create_user("dave", "dave@example.org", is_active=False)
    org = Organisation.objects.create(name="Demo Trust Audit Team", owner=org_owner)
    OrganisationMembership.objects.create(organisation=org, user=admin, role=OrganisationMembership.Role.ADMIN)
    OrganisationMembership.objects.create(organisation=org, user=owner, role=OrganisationMembership.Role.CREATOR)

    def closed(name, deletion_in, **extra):
        closed_at = now + deletion_in - timedelta(days=182)
        return Survey.objects.create(
            name=name, owner=owner, organisation=org, status=Survey.Status.CLOSED, closed_at=closed_at,
            retention_months=6, deletion_date=now + deletion_in, **extra,
        )

    surveys = [
        closed("Hand hygiene audit 2025", timedelta(days=25)),
        closed("Falls prevention audit", timedelta(days=29, hours=12)),
        closed("Sepsis six compliance", timedelta(days=5)),
        closed("Discharge summary quality", timedelta(hours=12)),
        closed("Theatre checklist audit", -timedelta(hours=3)),
        closed("Pressure ulcer survey 2024", -timedelta(days=40),
               deleted_at=now - timedelta(days=31), hard_deletion_date=now - timedelta(days=1)),
        closed("Medication errors review", -timedelta(days=2)),
        closed("Patient experience 2026", timedelta(days=120)),
        Survey.objects.create(name="Staff wellbeing (live)", owner=owner, organisation=org,
                              status=Survey.Status.PUBLISHED),
    ]
    place_legal_hold(surveys[6], reason="Subject access request under review", authority="Trust Information Governance")
    live = surveys[-1]
    for survey in surveys:
        SurveyResponse.objects.bulk_create(
            SurveyResponse(survey=survey, answers={"q1": "yes", "q2": n}) for n in range(3)
        )
    token = SurveyAccessToken.objects.create(survey=live, token=secrets.token_urlsafe(16))
    old, fresh = now - timedelta(days=45), now - timedelta(days=2)
    drafts = []
    for updated in (old, old, fresh):
        drafts.append(SurveyProgress(survey=live, session_key=secrets.token_hex(16), updated_at=updated,
                                     expires_at=updated + timedelta(days=30)))
    drafts.append(SurveyProgress(survey=live, user=owner, updated_at=old, expires_at=old + timedelta(days=30)))
    drafts.append(SurveyProgress(survey=live, user=admin, updated_at=fresh, expires_at=fresh + timedelta(days=30)))
    drafts.append(SurveyProgress(survey=live, access_token=token, updated_at=old, expires_at=old + timedelta(days=30)))
    SurveyProgress.objects.bulk_create(drafts)
    return {"surveys": len(surveys), "drafts": len(drafts)}
