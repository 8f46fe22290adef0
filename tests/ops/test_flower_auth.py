"""Flower runs behind basic auth from FLOWER_BASIC_AUTH and refuses to start open (flowerconfig.py)."""

import base64
import os
import subprocess
import urllib.error
import urllib.request

import pytest

from flowerauth import FlowerAuthError, auth_mode
from tests.ops.helpers import PY, ROOT, TEST_REDIS_URL, free_port, wait_until

pytestmark = pytest.mark.subprocess

CREDENTIALS = "ops:correct-horse-battery"


def flower_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env.pop("DATABASE_URL", None)  # Flower never touches the database
    env.update(REDIS_URL=TEST_REDIS_URL, CELERY_BROKER_URL=TEST_REDIS_URL, **extra)
    return env


def start_flower(port, env):
    return subprocess.Popen(
        [PY, "-m", "celery", "-A", "celery_app", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )


def status(url, credentials=None):
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=5)
    return process.stdout.read()


@pytest.fixture
def flower():
    port = free_port()
    process = start_flower(port, flower_env(FLOWER_BASIC_AUTH=CREDENTIALS))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status(base + "/healthcheck") == 200 or process.poll() is not None, 30,
                   what="Flower to answer /healthcheck")
        assert process.poll() is None, stop(process)
        yield base
    finally:
        output = stop(process)
        assert "correct-horse-battery" not in output, "Flower's log must not show its password"


def test_flower_answers_401_without_credentials(flower):
    assert status(flower + "/api/workers") == 401
    assert status(flower + "/") == 401
    assert status(flower + "/workers") == 401


def test_flower_answers_401_with_a_wrong_password(flower):
    assert status(flower + "/api/workers", "ops:wrong-password-123") == 401


def test_flower_answers_200_with_the_credentials_from_flower_basic_auth(flower):
    assert status(flower + "/api/workers", CREDENTIALS) == 200
    assert status(flower + "/", CREDENTIALS) == 200


def run_to_exit(env, timeout=60):
    process = start_flower(free_port(), env)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(process)
        pytest.fail("Flower started although it should have refused")
    return process.returncode, out


def test_flower_refuses_to_start_without_authentication():
    code, out = run_to_exit(flower_env())
    assert code != 0
    assert "Refusing to start Flower" in out
    assert "FLOWER_BASIC_AUTH" in out and "FLOWER_ALLOW_UNAUTHENTICATED" in out


def test_flower_refuses_a_malformed_or_weak_basic_auth_without_echoing_it():
    code, out = run_to_exit(flower_env(FLOWER_BASIC_AUTH="just-a-secret-token"))
    assert code != 0 and "user:password" in out
    assert "just-a-secret-token" not in out
    code, out = run_to_exit(flower_env(FLOWER_BASIC_AUTH="ops:short"))
    assert code != 0 and "shorter than 8" in out and "short" not in out.replace("shorter", "")


def test_flower_starts_open_only_when_explicitly_allowed_and_says_so():
    port = free_port()
    process = start_flower(port, flower_env(FLOWER_ALLOW_UNAUTHENTICATED="true", FLOWER_UNAUTHENTICATED_API="true"))
    try:
        wait_until(lambda: status(f"http://127.0.0.1:{port}/healthcheck") == 200 or process.poll() is not None,
                   30, what="Flower to answer")
        assert status(f"http://127.0.0.1:{port}/api/workers") == 200
    finally:
        output = stop(process)
    assert "WITHOUT authentication" in output


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_an_ambiguous_flower_allow_unauthenticated_is_refused(value):
    with pytest.raises(FlowerAuthError, match="FLOWER_ALLOW_UNAUTHENTICATED"):
        auth_mode([], "", {"FLOWER_ALLOW_UNAUTHENTICATED": value})


def test_basic_auth_wins_over_the_opt_out_and_oauth_needs_its_provider():
    assert auth_mode(["ops:long-enough-pw"], "", {"FLOWER_ALLOW_UNAUTHENTICATED": "true"}) == "basic"
    assert auth_mode([], ".*@example.org", {"FLOWER_AUTH_PROVIDER": "flower.views.auth.GithubLoginHandler"}) == "oauth"
    with pytest.raises(FlowerAuthError, match="FLOWER_AUTH_PROVIDER"):
        auth_mode([], ".*@example.org", {})
    with pytest.raises(FlowerAuthError, match="entry 2 of FLOWER_BASIC_AUTH"):
        auth_mode(["ops:long-enough-pw", ":nouser-password"], "", {})


def test_an_empty_flower_basic_auth_counts_as_no_login():
    # An environment file with `FLOWER_BASIC_AUTH=` gives Flower [""]; that is not a login.
    with pytest.raises(FlowerAuthError, match="no authentication configured"):
        auth_mode([""], "", {})
    assert auth_mode([""], "", {"FLOWER_ALLOW_UNAUTHENTICATED": "true"}) == "open"
