"""Logging filters named in settings.LOGGING."""

import logging


class OneLineForbidden(logging.Filter):
    """A 403 is an ordinary refusal (a user without the permission), not a fault: Django logs it with
    the PermissionDenied traceback attached, which buries real errors. Keep its one line."""

    def filter(self, record):
        if getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
        return True
