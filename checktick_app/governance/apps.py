from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "checktick_app.governance"
    label = "governance"
    verbose_name = "Data governance"
