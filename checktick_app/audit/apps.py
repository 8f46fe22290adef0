from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The append-only audit log (SPEC R20), written by both the surveys and the governance apps."""

    name = "checktick_app.audit"
    label = "audit"
    verbose_name = "Audit log"
