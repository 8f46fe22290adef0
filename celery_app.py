"""The Celery application: configuration comes from Django settings under the CELERY_ namespace."""

import os
import sys

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


def _started_by_celery_command():
    """`celery -A celery_app worker|beat|flower ...` (or `python -m celery`), not a Django process importing us."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return program in ("celery", "__main__.py") and "celery" in sys.argv[0]


if _started_by_celery_command():
    # Django processes (manage.py, the WSGI app) load the settings under their own guard; the Celery
    # command line has none, so check here, before the worker, beat or Flower starts.
    _exit_on_configuration_error()
    if "flower" in sys.argv[1:]:  # Flower never runs open, from any folder, with any --conf
        from flowerauth import guard_flower_start

        guard_flower_start()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
