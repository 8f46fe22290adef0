#!/usr/bin/env python
import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "checktick_app.settings")
    from django.core.management import execute_from_command_line

    from checktick_app.config_checks import exit_on_configuration_error

    # A bad variable: one line naming it and exit 2, from every command (README, exit codes).
    exit_on_configuration_error(lambda: execute_from_command_line(sys.argv))


if __name__ == "__main__":
    main()
