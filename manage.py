#!/usr/bin/env python
import os
import sys
from pathlib import Path


def read_quickstart_env():
    """Next to `make run`, commands use its settings: <var>/quickstart.env, written by make run
    (tooling/devstack.py), when it exists. A variable already in the environment wins."""
    var_dir = Path(os.environ.get("CHECKTICK_VAR_DIR") or Path(__file__).resolve().parent / "var")
    path = var_dir / "quickstart.env"
    if path.is_file():
        import environ

        environ.Env.read_env(str(path), overwrite=False)


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")
    read_quickstart_env()
    from django.core.management import execute_from_command_line

    from checktick_app.config_checks import exit_on_configuration_error

    # A bad variable: one line naming it and exit 2, from every command (README, exit codes).
    exit_on_configuration_error(lambda: execute_from_command_line(sys.argv))


if __name__ == "__main__":
    main()
