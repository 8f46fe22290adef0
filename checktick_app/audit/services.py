"""Writing the append-only audit log (R20): one function, for every app that records what it did."""

from django.utils import timezone

from .models import AuditEvent

Action = AuditEvent.Action


def actor_fields(user):
    if user is None:
        return {"actor_id": None, "actor": "system"}
    return {"actor_id": user.pk, "actor": user.get_username()}


def record_audit(action, *, survey=None, survey_id=None, survey_name="", actor=None, run=None, at=None, **details):
    """Append one entry; a survey's id and name are copied so the entry outlives the survey."""
    if survey is not None:
        survey_id, survey_name = survey.pk, survey.name
    return AuditEvent.objects.create(
        action=action,
        survey_id=survey_id,
        survey_name=survey_name,
        run_id=getattr(run, "pk", run),
        created_at=at or timezone.now(),
        details=details,
        **actor_fields(actor),
    )
