"""The forecast's warning counts, by the dry run's own code path (services.select_warnings).

A count of the due-query alone would count, every night, warnings the ledger says were already
sent (and surveys nobody can be emailed about), while the dry run says there is nothing to send.
Going through select_warnings with a dry-run report asks the same rules, recipients and ledger, so
tonight's forecast is the dry run's counts.
"""

from . import services


def surveys_a_run_would_warn(now, batch_size=None):
    """{threshold days: surveys a run at `now` would send that warning about} (a dry run's warnings_<t>d)."""
    report = services.GovernanceReport(run_id=None, dry_run=True, now=now)
    for _ in services.select_warnings(report, None, now, batch_size or services.BATCH_SIZE):
        pass  # a dry run yields nothing: it only counts, into report.warned
    return {days: len(lines) for days, lines in report.warned.items()}
