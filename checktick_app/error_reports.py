"""What Django's error pages (the DEBUG 500 page, error emails) may show of the settings and environment.

Django hides settings whose names say API, AUTH, TOKEN, KEY, SECRET, PASS or SIGNATURE. Here the
connection URLs are secret too: a broker or database URL carries its password, and GOVERNANCE_PING_URL
is the monitor's key. They are hidden by name, and any other value that is a URL with a password has
the password masked.
"""

import re

from django.views.debug import SafeExceptionReporterFilter

URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@", re.I)


class SecretUrlsReporterFilter(SafeExceptionReporterFilter):
    hidden_settings = re.compile(
        "API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|DATABASE|REDIS|BROKER|RESULT_BACKEND|PING_URL",
        flags=re.I,
    )

    def cleanse_setting(self, key, value):
        value = super().cleanse_setting(key, value)
        if isinstance(value, str):
            return URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{self.cleansed_substitute}@", value)
        return value
