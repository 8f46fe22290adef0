"""manage.py for the trials, with the SMTP retry policy's waits scaled by TRIAL_SMTP_RETRY_SCALE.

    python -m tests.reliability.trial_manage process_data_governance ...

engine.RETRY_POLICIES["smtp"] waits up to 30 s, 60 s, ... 480 s before its 5 retries (about 8 minutes in
all, on average), so that a greylisting server is waited out the same night. A trial whose SMTP server
refuses for longer than that cannot wait so long: it keeps the same retries and the same backoff, with
every wait multiplied by the scale (0.01: 0.3 s ... 4.8 s), and says so in its notes. Nothing else
changes; without the variable this is manage.py.
"""

import dataclasses
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")
    scale = os.environ.get("TRIAL_SMTP_RETRY_SCALE")
    if scale:
        import django

        django.setup()
        from checktick_app.governance import engine

        smtp = engine.RETRY_POLICIES["smtp"]
        engine.RETRY_POLICIES["smtp"] = dataclasses.replace(smtp, first=smtp.first * float(scale),
                                                            longest=smtp.longest * float(scale))
    from django.core.management import execute_from_command_line

    execute_from_command_line(["manage.py", *sys.argv[1:]])


if __name__ == "__main__":
    main()
