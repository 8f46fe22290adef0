"""manage.py for the trials, with the SMTP retry policy's waits scaled by TRIAL_SMTP_RETRY_SCALE.

    python -m tests.reliability.trial_manage process_data_governance ...

engine.RETRY_POLICIES["smtp"] waits up to 30 s, 60 s, ... 480 s before its 5 retries (about 8 minutes in
all, on average), so that a greylisting server is waited out the same night. A trial whose SMTP server
refuses for longer than that cannot wait so long: it keeps the same retries and the same backoff, with
every wait multiplied by the scale (0.01: 0.3 s ... 4.8 s), and says so in its notes. Nothing else
changes: this runs manage.py's own main(); without the variable it is manage.py.
"""

import dataclasses
import os
import sys


def scale_smtp_retries_after_setup(scale):
    """Once Django is set up (by the command, as manage.py does it), scale the SMTP policy's waits."""
    import django

    setup = django.setup

    def setup_then_scale(*args, **kwargs):
        setup(*args, **kwargs)
        from checktick_app.governance import engine

        smtp = engine.RETRY_POLICIES["smtp"]
        engine.RETRY_POLICIES["smtp"] = dataclasses.replace(smtp, first=smtp.first * scale,
                                                            longest=smtp.longest * scale)

    django.setup = setup_then_scale


def main():
    scale = os.environ.get("TRIAL_SMTP_RETRY_SCALE")
    if scale:
        scale_smtp_retries_after_setup(float(scale))
    import manage

    sys.argv = ["manage.py", *sys.argv[1:]]
    manage.main()


if __name__ == "__main__":
    main()
