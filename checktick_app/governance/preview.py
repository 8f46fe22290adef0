"""What a real run would do right now, counted in the request, for the Run now confirmation.

The same code as a preview (dry run): the engine's ledger-aware warning rule, the deletion and hold
rules, the drafts' expiry rule. Nothing is written, not even a run row.
"""

from django.utils import timezone

from checktick_app.surveys.models import Survey, SurveyProgress

from .engine import warning_emails_a_run_would_send
from .models import GovernanceRun


def what_a_run_would_do(job, now=None):
    """[(label, count)] in the order the run page lists them."""
    now = now or timezone.now()
    if job == GovernanceRun.Job.PROGRESS_CLEANUP:
        by_kind = SurveyProgress.objects.expired(now).count_by_kind()
        return [("Expired drafts to delete", sum(by_kind.values())),
                ("of logged-in users", by_kind["user"]), ("of access tokens", by_kind["token"]),
                ("of anonymous sessions", by_kind["session"])]
    emails = warning_emails_a_run_would_send(now)
    rows = [(f"{days}-day warnings to send (surveys)", len({survey_id for survey_id, _ in sent}))
            for days, sent in sorted(emails.items(), reverse=True)]
    return rows + [
        ("Warning emails to send", sum(len(sent) for sent in emails.values())),
        ("Surveys to soft delete", Survey.objects.due_for_soft_delete(now).count()),
        ("Surveys to hard delete (for good)", Survey.objects.due_for_hard_delete(now).count()),
        ("Surveys held back by a legal hold", Survey.objects.held_back(now).count()),
    ]
