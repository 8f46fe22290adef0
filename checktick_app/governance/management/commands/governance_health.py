from django.core.management.base import CommandError
from django.db import DatabaseError

from checktick_app.governance.health import governance_health
from checktick_app.governance.management.base import EXIT_FAILED, EXIT_USAGE, ExactFlagsCommand


class Command(ExactFlagsCommand):
    help = ("Exit 0 with a one-line summary when both jobs ran successfully recently; exit 1 with the reason "
            "when a job's last real run failed or was abandoned, or its last success is older than "
            "CHECKTICK_HEALTH_MAX_AGE_HOURS (or --max-age-hours). For cron, Nagios-style checks and uptime probes.")

    def add_arguments(self, parser):
        parser.add_argument("--max-age-hours", type=int, default=None,
                            help="Override CHECKTICK_HEALTH_MAX_AGE_HOURS for this check (1 to 336).")

    def handle(self, *args, **options):
        max_age = options["max_age_hours"]
        if max_age is not None and not 1 <= max_age <= 24 * 14:
            raise CommandError(f"--max-age-hours {max_age} is out of range; give a number from 1 to 336.",
                               returncode=EXIT_USAGE)
        try:
            verdict = governance_health(max_age_hours=max_age)
        except DatabaseError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CommandError(f"unhealthy: cannot read the run history from the database: {reason}",
                               returncode=EXIT_USAGE)
        if not verdict.healthy:
            raise CommandError(verdict.summary, returncode=EXIT_FAILED)
        self.stdout.write(verdict.summary)
