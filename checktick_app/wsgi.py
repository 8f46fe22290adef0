import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")

from checktick_app.config_checks import exit_on_configuration_error  # noqa: E402

# A bad variable stops the web process with one line naming it. Exit 3 is gunicorn's "worker failed to
# boot": gunicorn then stops (with 3) instead of restarting the worker forever.
GUNICORN_WORKER_BOOT_ERROR = 3
application = exit_on_configuration_error(get_wsgi_application, exit_code=GUNICORN_WORKER_BOOT_ERROR)
