from django.conf import settings

from checktick_app.governance.management.base import GovernanceCommand
from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.reports import CleanupReport
from checktick_app.governance.services import CLEANUP_BATCH_SIZE, run_progress_cleanup


class Command(GovernanceCommand):
    help = "Delete incomplete survey drafts (user, session and token) that have expired."

    def handle(self, *args, **options):
        self.check_flags(options)
        dry = options["dry_run"]
        if options["run_async"] and not options["wait"]:
            self.enqueue(GovernanceRun.Job.PROGRESS_CLEANUP, options)  # prints the run id; the workers do the rest
            return
        self.stdout.write("Starting survey progress cleanup...")
        if options["run_async"]:
            run = self.wait_for(self.enqueue(GovernanceRun.Job.PROGRESS_CLEANUP, options), options)
            self.fail_unless_succeeded(run)
            report = CleanupReport.from_run(run)
        else:
            report = self.run_guarded(lambda: run_progress_cleanup(
                dry_run=dry, batch_size=options["batch_size"] or CLEANUP_BATCH_SIZE))
        days = settings.CHECKTICK_PROGRESS_EXPIRY_DAYS
        self.stdout.write(f"Found {report.found} expired progress records (older than {days} days)")
        if options["verbose"] or dry:
            for kind in ("user", "token", "session"):
                self.stdout.write(f"  - {kind}: {report.by_kind[kind]}")
        if dry:
            self.stdout.write(f"Would delete {report.found} expired survey progress records")
        else:
            self.stdout.write(f"Deleted {report.deleted} expired survey progress records")
        self.stdout.write("Cleanup completed successfully")
