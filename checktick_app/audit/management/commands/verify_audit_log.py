"""Walk the audit log's hash chain (audit.chain): exit 0 with the count and head hash, or 1 naming the
first entry that was changed, removed or inserted out of order."""

from django.core.management.base import BaseCommand, CommandError

from checktick_app.audit import chain
from checktick_app.audit.models import AuditEvent


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; name the first changed, removed or inserted entry."

    def add_arguments(self, parser):
        parser.add_argument("--expect-head", default="",
                            help="The head hash printed by an earlier report: fail if the log no longer leads to it.")

    def handle(self, *args, expect_head="", **options):
        verdict = chain.verify(AuditEvent)
        if not verdict.ok:
            raise CommandError(f"Audit log broken: {verdict.problem}. {verdict.count} entries before it verify.",
                               returncode=1)
        if expect_head and not AuditEvent.objects.filter(entry_hash=expect_head.strip().lower()).exists():
            raise CommandError(f"Audit log broken: no entry has the expected hash {expect_head}; "
                               "entries up to it were removed or the log was replaced.", returncode=1)
        self.stdout.write(f"Audit log verified: {verdict.count} entries, head hash {verdict.head}")
