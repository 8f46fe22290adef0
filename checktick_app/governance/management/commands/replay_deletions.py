"""After restoring a database backup: delete again every hard-deleted survey the backup brought back
(governance.deletion_record). Exit 0 when done (or nothing to do), 1 if a survey could not be deleted."""

from django.core.management.base import BaseCommand, CommandError

from checktick_app.governance import deletion_record


class Command(BaseCommand):
    help = "Re-apply the recorded hard deletions that a restored database has undone."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="List what would be deleted again; change nothing.")

    def handle(self, *args, dry_run=False, **options):
        undone = deletion_record.undone_deletions()
        if not undone:
            self.stdout.write(f"Nothing to replay: no survey in the deletion record ({deletion_record.record_path()}) "
                              "is back in this database.")
            return
        outcomes = deletion_record.replay_deletions(dry_run=dry_run)
        verb = "Would delete again" if dry_run else "Deleted again"
        for outcome in outcomes:
            d = outcome.deletion
            run = f", run #{d.run_id}" if d.run_id else ""
            self.stdout.write(f"{verb}: survey {d.survey_id} (first hard-deleted {d.deleted_at}{run})")
        self.stdout.write(f"{verb} {len(outcomes)} of {len(undone)} surveys the restored database brought back.")
        if not dry_run and len(outcomes) < len(undone):
            raise CommandError("Some surveys were not deleted again; run the command again and read its errors.",
                               returncode=1)
