"""The Celery application: configuration comes from Django settings under the CELERY_ namespace."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")

app = Celery("checktick")


def _load_settings():
    # Imported here, after `app` exists: the checktick_app package imports this module's `app`.
    from django.conf import settings

    return settings.INSTALLED_APPS


def _exit_on_configuration_error():
    """Workers and beat read the settings at start-up, so a bad variable stops them with one line and
    exit 2 (README, exit codes) instead of a traceback."""
    from checktick_app.config_checks import exit_on_configuration_error

    exit_on_configuration_error(_load_settings)


_exit_on_configuration_error()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
