"""The commands' output (SPEC "Output of the commands"): the seed's example lines, with real counts."""

from datetime import timedelta

import pytest
import time_machine

from tests.domain.helpers import run_command_ok
from tests.factories import closed_survey

pytestmark = pytest.mark.django_db


def test_the_governance_command_prints_the_seed_example_with_real_counts(smtp_server, now):
    closed_survey(now + timedelta(days=30))
    closed_survey(now + timedelta(days=12))
    closed_survey(now + timedelta(days=3))
    closed_survey(now - timedelta(hours=5))

    with time_machine.travel(now, tick=False):
        output = run_command_ok("process_data_governance")

    lines = output.splitlines()
    expected = [
        "Starting data governance processing at 2026-01-05 02:00:00+00:00",
        "",
        "--- Deletion Warnings ---",
        "Sent 3 deletion warnings:",
        "  - 30-day warnings: 2",
        "  - 7-day warnings: 1",
        "  - 1-day warnings: 0",
        "  (3 emails sent, 0 failed, 0 recipients skipped without an address)",
        "",
        "--- Automatic Deletions ---",
        "Soft deleted: 1 surveys",
        "Hard deleted: 0 surveys",
        "Skipped (legal hold): 0 surveys",
        "",
        "⚠️  1 surveys were deleted. Check audit logs for details.",
        "",
        "Data governance processing completed at 2026-01-05 02:00:00+00:00",
    ]
    assert lines == expected
