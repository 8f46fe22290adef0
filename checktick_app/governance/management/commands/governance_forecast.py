from django.conf import settings
from django.core.management.base import CommandError
from django.utils import timezone

from checktick_app.governance.management.base import EXIT_USAGE, ExactFlagsCommand
from checktick_app.governance.services import forecast

MAX_DAYS = 365


class Command(ExactFlagsCommand):
    help = ("For each of the next N nights, how many surveys the rules make due for each warning threshold, "
            "for soft deletion and for hard deletion, if nothing changes meanwhile. Changes nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--days", default="30", help=f"Nights to forecast, 1 to {MAX_DAYS} (default 30).")

    def handle(self, *args, **options):
        days = parse_days(options["days"])
        now = timezone.now()
        nights = forecast(days=days, now=now)
        thresholds = sorted(settings.CHECKTICK_WARNING_DAYS, reverse=True)
        headers = ["Date (UTC)", *[f"{t}-day warn" for t in thresholds], "Soft delete", "Hard delete"]
        rows = [
            [f"{night['at']:%Y-%m-%d %a}", *[night["warnings"][t] for t in thresholds],
             night["soft_delete"], night["hard_delete"]]
            for night in nights
        ]
        widths = [max(len(str(v)) for v in [h, *(r[i] for r in rows)]) for i, h in enumerate(headers)]
        self.stdout.write(f"Governance forecast for {days} nights from {now:%Y-%m-%d %H:%M} UTC "
                          "(surveys due on each night if nothing changes; nothing is changed)")
        self.stdout.write("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths))))
        for row in rows:
            self.stdout.write("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                                        for i, (v, w) in enumerate(zip(row, widths))))


def parse_days(raw):
    try:
        days = int(str(raw).strip())
    except ValueError:
        raise CommandError(f"--days {raw!r} is not a whole number; give a number of nights from 1 to {MAX_DAYS}.",
                           returncode=EXIT_USAGE)
    if not 1 <= days <= MAX_DAYS:
        raise CommandError(f"--days {days} is out of range; give a number of nights from 1 to {MAX_DAYS}.",
                           returncode=EXIT_USAGE)
    return days
