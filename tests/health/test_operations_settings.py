"""The Operations settings refuse ambiguous values with a message naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_settings(**env):
    environment = {k: v for k, v in os.environ.items() if k not in {"CHECKTICK_HEALTH_MAX_AGE_HOURS",
                                                                      "GOVERNANCE_PING_URL", "METRICS_TOKEN"}}
    environment.update(env, DJANGO_SETTINGS_MODULE="checktick_app.settings")
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.CHECKTICK_HEALTH_MAX_AGE_HOURS, "
                               "repr(settings.GOVERNANCE_PING_URL), bool(settings.METRICS_TOKEN))"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60,
    )


def test_defaults():
    result = load_settings()

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["26", "''", "False"]


@pytest.mark.parametrize("env, message", [
    ({"CHECKTICK_HEALTH_MAX_AGE_HOURS": "twenty"}, "CHECKTICK_HEALTH_MAX_AGE_HOURS='twenty' is not a whole number"),
    ({"CHECKTICK_HEALTH_MAX_AGE_HOURS": "0"}, "CHECKTICK_HEALTH_MAX_AGE_HOURS=0 is out of range"),
    ({"GOVERNANCE_PING_URL": "hc-ping.com/abc-secret"}, "GOVERNANCE_PING_URL is not an http(s) URL"),
    ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 16 characters"),
], ids=["hours-not-a-number", "hours-zero", "ping-url-no-scheme", "token-too-short"])
def test_bad_values_stop_start_up_naming_the_variable(env, message):
    result = load_settings(**env)

    assert result.returncode != 0
    assert message in result.stderr
    assert "abc-secret" not in result.stderr  # a ping URL embeds the check's key: never echoed


def test_good_values_are_taken():
    result = load_settings(CHECKTICK_HEALTH_MAX_AGE_HOURS="50", GOVERNANCE_PING_URL="https://hc-ping.com/k/ct-{job}",
                           METRICS_TOKEN="x" * 32)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["50", "'https://hc-ping.com/k/ct-{job}'", "True"]
