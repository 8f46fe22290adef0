"""The compliance report (governance.evidence): Markdown, CSV or JSON on standard output.

Exit 0; 2 for bad flags (the message names the flag)."""

from datetime import date

from django.core.management.base import BaseCommand, CommandError

from checktick_app.governance import evidence

EXIT_USAGE = 2


def _date(flag, value):
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise CommandError(f"{flag} {value!r} is not a date; give it as YYYY-MM-DD.", returncode=EXIT_USAGE)


class Command(BaseCommand):
    help = "Report, from the evidence alone, whether each survey due in a period was deleted on time and warned."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="date_from", help="First deletion date of the period (YYYY-MM-DD).")
        parser.add_argument("--to", dest="date_to", help="Last deletion date of the period (YYYY-MM-DD), inclusive.")
        parser.add_argument("--format", choices=evidence.FORMATS, default="md", help="md (default), csv or json.")
        parser.add_argument("--survey", type=int, help="One survey's whole history, as a deletion record.")

    def handle(self, *args, date_from=None, date_to=None, format="md", survey=None, **options):
        if survey is None and not (date_from and date_to):
            raise CommandError("Give the period with --from YYYY-MM-DD --to YYYY-MM-DD (or one survey with --survey ID).",
                               returncode=EXIT_USAGE)
        start = _date("--from", date_from) if date_from else None
        end = _date("--to", date_to) if date_to else None
        if start and end and end < start:
            raise CommandError(f"--to {end} is before --from {start}.", returncode=EXIT_USAGE)
        report = evidence.build_report(start, end, survey_id=survey)
        if survey is not None and not report.surveys:
            raise CommandError(f"--survey {survey}: the audit log and the warning ledger know no such survey.",
                               returncode=1)
        self.stdout.write(evidence.render(report, format, single=survey is not None), ending="")
