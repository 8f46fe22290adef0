"""One date format on every admin page, the one the run pages use: 2026-01-05 02:00:00 (always UTC).

Django localises dates by LANGUAGE_CODE ("Jan. 5, 2026, 2 a.m." in English); settings.FORMAT_MODULE_PATH
points here so the change lists, the date hierarchy and the detail pages all agree.
"""

DATE_FORMAT = "Y-m-d"
DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATE_FORMAT = "Y-m-d"
SHORT_DATETIME_FORMAT = "Y-m-d H:i"
TIME_FORMAT = "H:i:s"
MONTH_DAY_FORMAT = "j F"
YEAR_MONTH_FORMAT = "F Y"
