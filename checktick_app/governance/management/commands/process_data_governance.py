from django.utils import timezone

from checktick_app.governance.management.base import EXIT_FAILED, GovernanceCommand
from checktick_app.governance.models import GovernanceRun
from checktick_app.governance.engine import BATCH_SIZE
from checktick_app.governance.reports import GovernanceReport
from checktick_app.governance.services import run_data_governance
from django.core.management.base import CommandError


class Command(GovernanceCommand):
    help = ("Send deletion warnings, soft-delete surveys past their deletion date and hard-delete them after "
            "the grace period, skipping surveys under legal hold. Safe to run more than once a day.")

    def handle(self, *args, **options):
        self.check_flags(options)
        dry, verbose = options["dry_run"], options["verbose"]
        if options["run_async"] and not options["wait"]:
            self.enqueue(GovernanceRun.Job.DATA_GOVERNANCE, options)  # prints the run id; the workers do the rest
            return
        self.stdout.write(f"Starting data governance processing at {timezone.now().replace(microsecond=0)}")
        if dry:
            self.stdout.write("DRY RUN: nothing will be changed or sent.")
        if options["run_async"]:
            run = self.wait_for(self.enqueue(GovernanceRun.Job.DATA_GOVERNANCE, options), options)
            if not run.counts:
                self.fail_unless_succeeded(run)  # stopped before it counted anything (e.g. the worker's configuration)
            report = GovernanceReport.from_run(run)
        else:
            report = self.run_guarded(lambda: run_data_governance(
                dry_run=dry, batch_size=options["batch_size"] or BATCH_SIZE))
        self.print_report(report, verbose)
        self.stdout.write(f"\nData governance processing completed at {timezone.now().replace(microsecond=0)}")
        if not report.ok:
            raise CommandError(
                f"{len(report.failures)} item(s) failed; run #{report.run_id} is marked failed. "
                "See the run history in the admin for each error.", returncode=EXIT_FAILED)
        if options["run_async"]:
            self.fail_unless_succeeded(run)

    def print_report(self, r, verbose):
        send, soft, hard = ("Would send", "Would soft delete", "Would hard delete") if r.dry_run else (
            "Sent", "Soft deleted", "Hard deleted")
        self.stdout.write("\n--- Deletion Warnings ---")
        total = sum(len(v) for v in r.warned.values())
        self.stdout.write(f"{send} {total} deletion warnings:")
        for days, lines in r.warned.items():
            self.stdout.write(f"  - {days}-day warnings: {len(lines)}")
            self.list(lines, verbose, indent="      ")
        self.stdout.write(f"  ({r.emails_sent} emails{' would be' if r.dry_run else ''} sent, "
                          f"{r.emails_failed} failed, {r.recipients_skipped} recipients skipped without an address)")
        if r.without_recipients:
            self.stdout.write(self.style.WARNING(
                f"  {len(r.without_recipients)} surveys due for a warning have no recipient at all"))
            self.list(r.without_recipients, verbose, indent="      ")
        self.stdout.write("\n--- Automatic Deletions ---")
        self.stdout.write(f"{soft}: {len(r.soft_deleted)} surveys")
        self.list(r.soft_deleted, verbose)
        if r.soft_deleted or r.notices_sent:
            self.stdout.write(f"  ({r.notices_sent} soft-deletion notices{' would be' if r.dry_run else ''} sent)")
        self.stdout.write(f"{hard}: {len(r.hard_deleted)} surveys")
        self.list(r.hard_deleted, verbose)
        self.stdout.write(f"Skipped (legal hold): {len(r.held)} surveys")
        self.list(r.held, verbose)
        if r.hard_warned:
            self.stdout.write(f"{send} {r.hard_warnings_sent} hard-deletion warnings (date moved when a legal hold "
                              f"was lifted) about {len(r.hard_warned)} surveys")
            self.list(r.hard_warned, verbose)
        deleted = len(r.soft_deleted) + len(r.hard_deleted)
        if deleted and not r.dry_run:
            self.stdout.write(f"\n⚠️  {deleted} surveys were deleted. Check audit logs for details.")
        for kind, item_id, error in r.failures:
            self.stderr.write(f"FAILED {kind} {item_id}: {error}")

    def list(self, lines, verbose, indent="  "):
        if verbose:
            for line in lines:
                self.stdout.write(f"{indent}- #{line.id} {line.name} ({line.date:%Y-%m-%d %H:%M} UTC)")
