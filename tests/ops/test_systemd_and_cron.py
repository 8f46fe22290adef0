"""ops/systemd/ units and the cron fallback in ops/cron/ (the wrapper is run for real)."""

import configparser
import fcntl
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.ops.helpers import ROOT, readme_variables

SYSTEMD = ROOT / "ops" / "systemd"
CRON = ROOT / "ops" / "cron"
UNITS = {
    "checktick-worker-governance.service": "worker -Q governance,deletion",
    "checktick-worker-email.service": "worker -Q email",
    "checktick-beat.service": "beat --scheduler django_celery_beat.schedulers:DatabaseScheduler",
    "checktick-flower.service": "flower",
    "checktick-web.service": "gunicorn checktick_app.wsgi",
}


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(SYSTEMD / name)
    return parser


@pytest.mark.parametrize("name", sorted(UNITS))
def test_each_unit_runs_its_process_with_the_environment_file_and_restarts_on_failure(name):
    service = unit(name)["Service"]
    assert UNITS[name] in service["ExecStart"]
    assert service["EnvironmentFile"] == "/etc/checktick/checktick.env"
    assert service["WorkingDirectory"] == "/srv/checktick", "Flower finds ./flowerconfig.py there"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["User"] == "checktick" and service["NoNewPrivileges"] == "yes"


def test_workers_get_longer_to_stop_than_a_warm_shutdown_needs():
    for name in ("checktick-worker-governance.service", "checktick-worker-email.service"):
        service = unit(name)["Service"]
        assert int(service["TimeoutStopSec"]) >= 60
        assert service["KillMode"] == "mixed", "SIGTERM to the worker only; its pool is its business"
        assert "@%%h" in service["ExecStart"], "%% so that Celery, not systemd, expands %h"


def test_flower_unit_listens_on_loopback_only():
    assert "--address=127.0.0.1" in unit("checktick-flower.service")["Service"]["ExecStart"]


def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser, with ExecStart pointed at this checkout's virtualenv so it exists."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        message = "systemd-analyze is not installed; `make system-deps` installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/srv/checktick/.venv/bin/", f"{ROOT}/.venv/bin/")
        (tmp_path / name).write_text(text)
    result = subprocess.run([analyze, "verify", *[str(tmp_path / n) for n in UNITS]],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if "checktick" in line and "Documentation" not in line]
    assert result.returncode == 0 and not problems, result.stderr


def crontab_lines(name):
    entries, env = [], {}
    for line in (CRON / name).read_text().splitlines():
        if re.match(r"^[A-Z_]+=", line):
            key, value = line.split("=", 1)
            env[key] = value
        elif line and not line.startswith("#"):
            fields = line.split(None, 6)
            entries.append((" ".join(fields[:5]), fields[5], fields[6]))
    return env, entries


def test_crontab_runs_governance_at_two_and_cleanup_at_three_utc_under_flock_with_logs():
    env, entries = crontab_lines("checktick.crontab")
    assert env["CRON_TZ"] == "UTC"
    jobs = {command.split("checktick-job ")[1].split()[0]: (when, command) for when, _, command in entries
            if "checktick-job" in command}
    assert jobs["process_data_governance"][0] == "0 2 * * *"
    assert jobs["cleanup_survey_progress"][0] == "0 3 * * *"
    for name in ("process_data_governance", "cleanup_survey_progress"):
        command = jobs[name][1]
        assert command.startswith("flock -n -E 75 /run/lock/")
        assert ">> /var/log/checktick/" in command and "2>&1" in command
    assert all("%" not in command for _, _, command in entries), "cron turns % into a newline"


def test_docker_compose_crontab_uses_services_that_exist():
    _, entries = crontab_lines("docker-compose.crontab")
    services = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])
    times = {}
    for when, user, command in entries:
        match = re.search(r"docker compose (exec|run --rm --no-deps) -T (\S+) python manage.py (\w+)", command)
        assert match, command
        assert match.group(2) in services
        times[match.group(3)] = when
    assert times["process_data_governance"] == "0 2 * * *"
    assert times["cleanup_survey_progress"] == "0 3 * * *"


def run_cron_line(command, tmp_path, env_file):
    """A crontab command with the paths of this machine instead of /srv, /run/lock and /var/log."""
    command = (command.replace("/srv/checktick", str(ROOT)).replace("/run/lock", str(tmp_path / "lock"))
               .replace("/var/log/checktick", str(tmp_path / "log")))
    env = {"PATH": os.environ["PATH"], "CHECKTICK_ENV_FILE": str(env_file), "HOME": str(tmp_path)}
    return subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=180)


def test_the_cron_lines_really_run_the_commands_log_them_and_yield_to_a_run_in_progress(tmp_path):
    (tmp_path / "lock").mkdir()
    (tmp_path / "log").mkdir()
    (tmp_path / "var").mkdir()
    env_file = tmp_path / "checktick.env"
    env_file.write_text(
        f"CHECKTICK_VAR_DIR={tmp_path / 'var'}\nSITE_URL=https://checktick.example.org\nDEBUG=false\n"
        "SECRET_KEY=cron-test-secret-key-4Hq8Zt1Wm6Rv3Nc9Lp2Xb7Kd\n"
        "DEFAULT_FROM_EMAIL=governance@checktick.example.org\n"
        "EMAIL_BACKEND=django.core.mail.backends.locmem.EmailBackend\nCHECKTICK_WARNING_DAYS=30,7,1\n")
    job = str(CRON / "checktick-job")
    clean = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # SQLite in tmp_path, both passes
    setup = subprocess.run([job, "migrate", "--no-input", "-v", "0"], env={**clean, "CHECKTICK_ENV_FILE": str(env_file)},
                           capture_output=True, text=True, timeout=180)
    assert setup.returncode == 0, setup.stdout + setup.stderr

    _, entries = crontab_lines("checktick.crontab")
    governance = next(command for _, _, command in entries if "process_data_governance" in command)
    result = run_cron_line(governance, tmp_path, env_file)
    assert result.returncode == 0 and result.stdout == "", "nothing for cron to mail on success"
    log = (tmp_path / "log" / "governance.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ start: process_data_governance$", log, re.MULTILINE)
    assert "Data governance processing completed" in log
    assert re.search(r"Z exit 0 after \d+s: process_data_governance$", log, re.MULTILINE)

    # While another run holds the lock, the newcomer steps aside with 75 and says so once.
    with open(tmp_path / "lock" / "checktick-governance.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = run_cron_line(governance, tmp_path, env_file)
    assert "failed (exit 75)" in busy.stdout
    assert (tmp_path / "log" / "governance.log").read_text().count("start:") == 1

    # A failing run (here: no SITE_URL) is mailed as one line naming the log.
    env_file.write_text(env_file.read_text().replace("SITE_URL=https://checktick.example.org\n", ""))
    failed = run_cron_line(governance, tmp_path, env_file)
    assert "process_data_governance failed (exit 2)" in failed.stdout
    assert "SITE_URL" in (tmp_path / "log" / "governance.log").read_text()


def test_the_environment_file_the_units_and_cron_read_has_only_documented_names():
    # The units and the wrapper read .env.example's format; every name in it is documented.
    names = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert names - readme_variables() == set()
