"""Checks on configuration values, and the one way a process stops on a configuration error.

Kept free of Django settings so that settings.py itself can use them. A message names the variable
and never echoes a value that may hold a secret (a URL's password).
"""

import importlib
import ipaddress
import sys
from email.utils import parseaddr
from urllib.parse import urlparse

EXIT_CONFIGURATION = 2  # README: exit code 2 is bad flags or configuration, for every command and worker


def exit_on_configuration_error(load, exit_code=EXIT_CONFIGURATION):
    """Call `load` (which imports the settings); an ImproperlyConfigured becomes one line and exit 2.

    Without this, a bad variable ends a command or a worker with a traceback and exit 1, which cron,
    systemd and Kubernetes report like any crash.
    """
    from django.core.exceptions import ImproperlyConfigured

    try:
        return load()
    except ImproperlyConfigured as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message was built from
        sys.stderr.write(f"Configuration error: {message}\n")
        sys.exit(exit_code)


# Keys this repository has published (old defaults) and the example files' placeholders.
PUBLISHED_SECRET_KEYS = {"insecure-development-key", "insecure-development-key-set-SECRET_KEY-in-production"}
PLACEHOLDER_MARKERS = ("replace_me", "replace-me", "changeme", "change_me", "change-me")


def secret_key_problem(key):
    """Why SECRET_KEY cannot sign anything outside DEBUG (None when it can); never shows the key."""
    if not key:
        return "is not set"
    if key in PUBLISHED_SECRET_KEYS or key.startswith("django-insecure") or any(
            marker in key.lower() for marker in PLACEHOLDER_MARKERS):
        return "is a published development key or an example's placeholder"
    return None


def is_email_sender(value):
    """An address (`noreply@example.org`) or a named one (`CheckTick <noreply@example.org>`)."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_email

    name, address = parseaddr(value)
    if not address or "\n" in value or "\r" in value:
        return False
    try:
        validate_email(address)
    except ValidationError:
        return False
    return True


def is_importable_class(dotted_path):
    module_name, _, name = dotted_path.rpartition(".")
    if not module_name:
        return False
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return False
    return isinstance(getattr(module, name, None), type)


def is_this_machine(host):
    """localhost, any loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.1) or the unspecified one."""
    host = (host or "").strip("[]").rstrip(".").lower()
    if host in ("", "localhost") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or bool(mapped and (mapped.is_loopback or mapped.is_unspecified))


def site_url_problems(site, *, debug):
    """R8: what is wrong with SITE_URL for links in emails (empty list when nothing is)."""
    example = "e.g. SITE_URL=https://checktick.example.org"
    if not site:
        return [f"SITE_URL is not set: warning emails link to it. Set it to the public address, {example}"]
    parsed = urlparse(site)
    try:
        hostname, has_credentials = parsed.hostname, bool(parsed.username or parsed.password)
        parsed.port
    except ValueError:
        return [f"SITE_URL is not an http(s) URL (its port is not a number); {example}"]
    if has_credentials and not debug:
        # Never echo it: the credentials would go into every email's links, and into this message.
        return ["SITE_URL carries a user name or password: every warning email would show it. "
                f"Remove them; {example}"]
    if parsed.scheme not in {"http", "https"} or not hostname:
        return [f"SITE_URL={site!r} is not an http(s) URL; {example}"]
    if is_this_machine(hostname) and not debug:
        return [f"SITE_URL={site!r} points at this machine: recipients could not open the links. "
                "Set the public address (a loopback address is accepted only with DEBUG=true)."]
    return []
