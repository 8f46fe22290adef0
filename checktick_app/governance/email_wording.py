"""How a warning email says how long is left: to the hour, so "12 hours" never reads as "1 day"."""

import math


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def time_left(deletion_date, now):
    """'7 days', '12 hours', '6 days and 12 hours' (rounded up to the hour; '0 hours' once passed)."""
    hours = max(0, math.ceil((deletion_date - now).total_seconds() / 3600))
    days, hours = divmod(hours, 24)
    if not days:
        return plural(hours, "hour")
    if not hours:
        return plural(days, "day")
    return f"{plural(days, 'day')} and {plural(hours, 'hour')}"
