"""docker-compose.yml, checked with the real compose parser (`docker-compose config`), the
Dockerfile, and .env.example against the README's configuration table."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.ops.helpers import PY, ROOT, env_example_variables, readme_variables

SERVICES = {"postgres", "redis", "mailpit", "migrate", "web", "worker-governance", "worker-email", "beat", "flower"}
APP_SERVICES = {"migrate", "web", "worker-governance", "worker-email", "beat", "flower"}
REQUIRED = {
    "SECRET_KEY": "a-secret-key-for-the-compose-test-0123456789",
    "SITE_URL": "https://checktick.example.org",
    "DEFAULT_FROM_EMAIL": "governance@checktick.example.org",
    "POSTGRES_PASSWORD": "owner-password-123",
    "POSTGRES_APP_PASSWORD": "app-password-456",
    "FLOWER_BASIC_AUTH": "ops:flower-password-789",
}
# Table variables that the compose stack deliberately does not pass through, and why.
NOT_IN_COMPOSE = {
    "TIME_ZONE": "fixed to UTC, not configurable",
    "PORT": "the web service binds 8000 in its command",
    "FLOWER_PORT": "the flower service sets --port",
    "FLOWER_ADDRESS": "the flower service sets --address",
    "FLOWER_ALLOW_UNAUTHENTICATED": "never: Flower in compose always has a password",
}


def compose():
    path = shutil.which("docker-compose")
    if path:
        return path
    message = "docker-compose is not installed; `make system-deps` installs it (apt-get install docker-compose)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def compose_config(tmp_path, env_text, quiet=False):
    """`docker-compose config` with .env.example plus `env_text` as the only environment file."""
    env_file = tmp_path / "test.env"
    env_file.write_text(env_text)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # nothing from the developer's shell
    args = [compose(), "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"), "config"]
    return subprocess.run(args + (["-q"] if quiet else []), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def env_example_with_secrets():
    text = (ROOT / ".env.example").read_text()
    for name, value in REQUIRED.items():
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
    return text


@pytest.fixture
def config(tmp_path):
    result = compose_config(tmp_path, env_example_with_secrets())
    assert result.returncode == 0, result.stderr
    assert compose_config(tmp_path, env_example_with_secrets(), quiet=True).returncode == 0
    return yaml.safe_load(result.stdout)


def command(service):
    value = service.get("command") or []
    return value if isinstance(value, str) else " ".join(value)


def test_compose_names_every_service_and_each_has_a_healthcheck(config):
    services = config["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert not service["healthcheck"].get("disable"), name


def test_one_shot_migrate_runs_first_and_the_app_waits_for_it(config):
    services = config["services"]
    migrate = services["migrate"]
    assert "manage.py migrate" in command(migrate) and "apply_grants.py" in command(migrate)
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["environment"]["DATABASE_URL"].startswith("postgres://checktick:"), "migrations run as the owner"
    for name in APP_SERVICES - {"migrate"}:
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgres://checktick_app:"), name


def test_web_workers_and_exactly_one_beat(config):
    services = config["services"]
    assert command(services["web"]).startswith("gunicorn checktick_app.wsgi")
    assert "worker -Q governance,deletion" in command(services["worker-governance"])
    assert "worker -Q email" in command(services["worker-email"])
    beats = [name for name, service in services.items() if " beat" in command(service)]
    assert beats == ["beat"]
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "django_celery_beat.schedulers:DatabaseScheduler" in command(services["beat"])
    for name in ("worker-governance", "worker-email"):
        grace = services[name]["stop_grace_period"]
        assert grace in ("2m", "120s", "2m0s"), f"{name}: longer than the warm shutdown ({grace})"


def test_redis_never_evicts_and_persists(config):
    redis = command(config["services"]["redis"])
    assert "--maxmemory-policy noeviction" in redis
    assert "--appendonly yes" in redis
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in config["services"]["redis"]["volumes"]]
    assert "/data" in targets, "the append-only file lives on a volume"


def test_flower_has_basic_auth_and_ports_are_published_on_loopback_only(config):
    flower = config["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == REQUIRED["FLOWER_BASIC_AUTH"]
    assert "FLOWER_ALLOW_UNAUTHENTICATED" not in flower["environment"]
    assert command(flower).startswith("celery -A celery_app flower")
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]  # compose v1 or v2 form
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    assert config["services"]["mailpit"]["image"].startswith("axllent/mailpit")


def test_compose_refuses_to_start_without_the_required_secrets(tmp_path):
    # .env.example as shipped: the secrets are empty, and compose names the first one it misses.
    result = compose_config(tmp_path, (ROOT / ".env.example").read_text(), quiet=True)
    assert result.returncode != 0
    assert re.search(r"set (SECRET_KEY|SITE_URL|DEFAULT_FROM_EMAIL|POSTGRES_PASSWORD|POSTGRES_APP_PASSWORD|"
                     r"FLOWER_BASIC_AUTH)", result.stderr), result.stderr
    for missing in REQUIRED:
        text = re.sub(rf"^{missing}=.*$", f"{missing}=", env_example_with_secrets(), flags=re.MULTILINE)
        result = compose_config(tmp_path, text, quiet=True)
        assert result.returncode != 0 and f"set {missing}" in result.stderr, missing


def test_every_readme_variable_reaches_the_app_containers(config):
    passed = set()
    for name, service in config["services"].items():
        passed |= set(service.get("environment", {}))
    missing = readme_variables() - passed - set(NOT_IN_COMPOSE)
    assert missing == set(), "README variables that docker-compose.yml never passes to a container"
    app_env = set()
    for name in APP_SERVICES:
        app_env |= set(config["services"][name]["environment"])
    assert app_env - readme_variables() == set(), "compose passes variables the README does not document"


def test_env_example_lists_every_variable_of_the_readme_table_and_no_other():
    table, example = readme_variables(), env_example_variables()
    assert table - example == set(), "README variables missing from .env.example"
    assert example - table == set(), ".env.example variables missing from the README table"


def test_the_image_is_python_3_11_slim_installs_the_project_and_runs_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert froms and all(image == "python:3.11-slim" for image in froms)
    assert re.search(r"pip install \.$", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and not users[-1].startswith(("root", "0"))
    assert "flowerconfig.py" in dockerfile, "Flower's auth check must be in the image's working directory"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "var"} <= set(ignored)


def test_the_package_the_image_installs_carries_migrations_templates_and_celery_app(tmp_path):
    """What the Dockerfile's build stage does: copy what it copies, `pip wheel` it, look inside."""
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    copies = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[:2]
    for name in " ".join(copies).split():
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, src / name)
    result = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "celery_app.py" in names
    assert any(n.startswith("checktick_app/governance/migrations/0001") for n in names)
    assert any(n.startswith("checktick_app/governance/templates/") for n in names)
    assert "flowerauth.py" in names
