"""The Operations settings refuse ambiguous values with a message naming the variable.

The settings module is executed afresh (runpy) with the environment of each case; the settings
Django already loaded for the test session are untouched.
"""

import runpy
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

SETTINGS = Path(__file__).resolve().parents[2] / "checktick_app" / "settings.py"
OURS = ("CHECKTICK_HEALTH_MAX_AGE_HOURS", "GOVERNANCE_PING_URL", "METRICS_TOKEN")


def load_settings(monkeypatch, **env):
    for name in OURS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def test_defaults(monkeypatch):
    loaded = load_settings(monkeypatch)

    assert (loaded["CHECKTICK_HEALTH_MAX_AGE_HOURS"], loaded["GOVERNANCE_PING_URL"], loaded["METRICS_TOKEN"]) == (
        26, "", "")


@pytest.mark.parametrize("env, message", [
    ({"CHECKTICK_HEALTH_MAX_AGE_HOURS": "twenty"}, "CHECKTICK_HEALTH_MAX_AGE_HOURS='twenty' is not a whole number"),
    ({"CHECKTICK_HEALTH_MAX_AGE_HOURS": "0"}, "CHECKTICK_HEALTH_MAX_AGE_HOURS=0 is out of range"),
    ({"GOVERNANCE_PING_URL": "hc-ping.com/abc-secret"}, "GOVERNANCE_PING_URL is not an http(s) URL"),
    ({"GOVERNANCE_PING_URL": "ftp://hc-ping.com/abc-secret"}, "GOVERNANCE_PING_URL is not an http(s) URL"),
    ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 16 characters"),
    ({"METRICS_TOKEN": "a long token with spaces"}, "METRICS_TOKEN must be at least 16 characters without spaces"),
], ids=["hours-not-a-number", "hours-zero", "ping-url-no-scheme", "ping-url-ftp", "token-too-short",
        "token-with-spaces"])
def test_bad_values_stop_start_up_naming_the_variable(monkeypatch, env, message):
    with pytest.raises(ImproperlyConfigured) as refused:
        load_settings(monkeypatch, **env)

    assert message in str(refused.value)
    assert "abc-secret" not in str(refused.value)  # a ping URL embeds the check's key: never echoed


def test_good_values_are_taken(monkeypatch):
    loaded = load_settings(monkeypatch, CHECKTICK_HEALTH_MAX_AGE_HOURS="50",
                           GOVERNANCE_PING_URL="https://hc-ping.com/k/ct-{job}", METRICS_TOKEN="x" * 32)

    assert (loaded["CHECKTICK_HEALTH_MAX_AGE_HOURS"], loaded["GOVERNANCE_PING_URL"], loaded["METRICS_TOKEN"]) == (
        50, "https://hc-ping.com/k/ct-{job}", "x" * 32)
