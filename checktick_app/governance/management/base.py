"""What both governance commands share: flag checks, exit codes, and turning refusals into messages.

Exit codes (documented in README.md): 0 all done; 1 the run failed (items failed, see the run row);
2 bad flags or configuration; 75 another run is in progress (EX_TEMPFAIL: cron may simply retry).
"""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, connection

from checktick_app.governance.runs import RunRefused

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_IN_PROGRESS = 75


class GovernanceCommand(BaseCommand):
    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Change nothing, send nothing; report what a run would do.")
        parser.add_argument("--verbose", action="store_true", help="List each survey (id, name, date) under its heading.")
        parser.add_argument("--batch-size", type=int, default=None, help="Rows per query and per delete (1 to 10000).")

    def check_flags(self, options):
        if options["verbose"] and options["verbosity"] == 0:
            raise CommandError("--verbose and --verbosity 0 contradict each other; use one of them.", returncode=EXIT_USAGE)
        size = options["batch_size"]
        if size is not None and not 1 <= size <= 10000:
            raise CommandError(f"--batch-size {size} is out of range; give a number from 1 to 10000.", returncode=EXIT_USAGE)

    def run_guarded(self, start):
        """Call the service; refusals and configuration errors become clean exits with a message."""
        try:
            # Reach the database before anything starts, so "cannot connect" is reported as configuration.
            connection.ensure_connection()
        except OperationalError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CommandError(
                f"Cannot connect to the database named by DATABASE_URL: {reason}. "
                "Check that the server is up and that DATABASE_URL names an existing database.",
                returncode=EXIT_USAGE,
            )
        try:
            return start()
        except RunRefused as exc:
            raise CommandError(str(exc), returncode=EXIT_IN_PROGRESS)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE)
