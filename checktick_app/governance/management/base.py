"""What both governance commands share: flag checks, exit codes, and turning refusals into messages.

Exit codes (documented in README.md and docs/operations.md): 0 all done; 1 the run failed (items failed, see the run row);
2 bad flags or configuration; 75 another run is in progress (EX_TEMPFAIL: cron may simply retry).
"""

import time

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, connection

from checktick_app.governance.runs import RunRefused

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_IN_PROGRESS = 75
# --async --wait: how long to wait for the queued run by default, and how often to look at its row.
WAIT_TIMEOUT = 3600
WAIT_POLL_SECONDS = 0.5


class ExactFlagsCommand(BaseCommand):
    """Flags are matched exactly: argparse would otherwise take `--force` as `--force-color` (or any
    unambiguous prefix as the flag it begins), and a mistyped flag would start a real run."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        return super().create_parser(prog_name, subcommand, allow_abbrev=False, **kwargs)


class GovernanceCommand(ExactFlagsCommand):
    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Change nothing, send nothing; report what a run would do.")
        parser.add_argument("--verbose", action="store_true", help="List each survey (id, name, date) under its heading.")
        parser.add_argument("--batch-size", type=int, default=None, help="Rows per query and per delete (1 to 10000).")
        parser.add_argument("--async", action="store_true", dest="run_async",
                            help="Queue the run on Celery (docs/deploying.md) and print its run id.")
        parser.add_argument("--wait", action="store_true",
                            help="With --async: wait for the queued run and print its summary, as the inline run does.")
        parser.add_argument("--timeout", type=int, default=None,
                            help=f"With --wait: give up waiting after this many seconds (default {WAIT_TIMEOUT}).")

    def check_flags(self, options):
        if options["verbose"] and options["verbosity"] == 0:
            raise CommandError("--verbose and --verbosity 0 contradict each other; use one of them.", returncode=EXIT_USAGE)
        size = options["batch_size"]
        if size is not None and not 1 <= size <= 10000:
            raise CommandError(f"--batch-size {size} is out of range; give a number from 1 to 10000.", returncode=EXIT_USAGE)
        self.check_async_flags(options)

    # --- The Celery path (--async, --wait) ---------------------------------------------------------

    def check_async_flags(self, options):
        if options["wait"] and not options["run_async"]:
            raise CommandError("--wait only applies to --async (the inline run always waits); "
                               "use --async --wait, or drop --wait.", returncode=EXIT_USAGE)
        if options["timeout"] is not None and not options["wait"]:
            raise CommandError("--timeout only applies to --async --wait.", returncode=EXIT_USAGE)
        if options["timeout"] is not None and options["timeout"] < 1:
            raise CommandError(f"--timeout {options['timeout']} must be at least 1 second.", returncode=EXIT_USAGE)
        if options["run_async"] and options["verbose"] and not options["wait"]:
            raise CommandError("--verbose lists the surveys of the summary, which --async alone does not print; "
                               "add --wait, or drop --verbose.", returncode=EXIT_USAGE)

    def enqueue(self, job, options):
        """Open the run row and queue it on Celery (dispatch.enqueue_run); refusals exit as the inline run's do."""
        from checktick_app.governance import dispatch
        from checktick_app.governance.models import GovernanceRun

        run = self.run_guarded(lambda: dispatch.enqueue_run(
            job, trigger=GovernanceRun.Trigger.COMMAND, dry_run=options["dry_run"], batch_size=options["batch_size"]))
        kind = "dry run" if run.dry_run else "run"
        self.stdout.write(f"Queued {run.get_job_display().lower()} {kind} #{run.pk} on Celery.")
        return run

    def wait_for(self, run, options):
        """Poll the run row until the run is finished; the row, not Celery's result, is the record."""
        from checktick_app.governance.models import GovernanceRun

        timeout = options["timeout"] or WAIT_TIMEOUT
        self.stdout.write(f"Waiting for run #{run.pk} to finish (at most {timeout} s)...")
        deadline = time.monotonic() + timeout
        while True:
            run.refresh_from_db()
            if run.status != GovernanceRun.Status.RUNNING:
                return run
            if time.monotonic() > deadline:
                raise CommandError(f"Run #{run.pk} is still running after {timeout} s; it carries on in the workers. "
                                   "Follow it in the admin (Governance runs).", returncode=EXIT_IN_PROGRESS)
            time.sleep(WAIT_POLL_SECONDS)

    def fail_unless_succeeded(self, run):
        """An awaited run that did not succeed exits 1, like a failed inline run; its error is on the row."""
        if run.status != run.Status.SUCCEEDED:
            error = (run.error or "").strip().splitlines()
            reason = f": {error[-1]}" if error else ""
            raise CommandError(f"Run #{run.pk} {run.status}{reason}. See the run history in the admin.",
                               returncode=EXIT_FAILED)

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
