"""Small helpers the specification modules share: calling the commands and reading received emails."""

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


class CommandResult:
    def __init__(self, out, err, error=None):
        self.out, self.err, self.error = out, err, error

    @property
    def returncode(self):
        return 0 if self.error is None else self.error.returncode


def run_command(name, *args):
    """Run a management command as cron would; its output and exit code are what we assert on."""
    out, err = StringIO(), StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=err)
    except CommandError as exc:
        return CommandResult(out.getvalue(), err.getvalue(), exc)
    return CommandResult(out.getvalue(), err.getvalue())


def run_command_ok(name, *args):
    result = run_command(name, *args)
    if result.error is not None:
        pytest.fail(f"{name} {' '.join(args)} failed with {result.returncode}: {result.error}\n{result.out}{result.err}")
    return result.out


def text_and_html(message):
    """The decoded plain-text and HTML parts of a received email."""
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None, "a warning has both a plain-text and an HTML part"
    return text.get_content(), html.get_content()


def everything_readable(message):
    """Subject and every decoded text part: what a recipient could ever see."""
    parts = [str(message["Subject"])]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)
