"""Flower must never run open: the check `flowerconfig.py` runs before Flower serves anything.

Flower reads `./flowerconfig.py` when it starts (its documented configuration file), after it has
applied the FLOWER_* environment variables and before it opens its port. That file calls
`enforce()`, which stops Flower with a message unless it has credentials:

- `FLOWER_BASIC_AUTH="user:password"` (Flower's own variable; several pairs separated by commas), or
  `--basic-auth` on the command line (not recommended: other users can read command lines), or
- Flower's OAuth (`FLOWER_AUTH` with `FLOWER_AUTH_PROVIDER`), or
- `FLOWER_ALLOW_UNAUTHENTICATED=true`, an explicit opt-out for a local, firewalled instance.

This module has no Django import: Flower loads it before the Celery app configures itself.
"""

import os
import sys

MIN_PASSWORD_LENGTH = 8
# The example files' placeholders (ops/k8s/secret.example.yaml) and their like: never a real password.
PLACEHOLDERS = ("replace_me", "replace-me", "changeme", "change_me", "change-me", "your-password", "password-here")
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


class FlowerAuthError(Exception):
    """Flower's authentication is missing or malformed; the message never contains a password."""


def allow_unauthenticated(environ):
    raw = environ.get("FLOWER_ALLOW_UNAUTHENTICATED", "").strip().lower()
    if raw in TRUE:
        return True
    if raw in FALSE:
        return False
    raise FlowerAuthError(f"FLOWER_ALLOW_UNAUTHENTICATED={raw!r} is ambiguous; set it to true or false.")


def check_basic_auth(entries):
    """Each entry is `user:password`; say which one is wrong, never what it contains."""
    for number, entry in enumerate(entries, start=1):
        user, colon, password = (entry or "").partition(":")
        where = f"entry {number} of FLOWER_BASIC_AUTH" if len(entries) > 1 else "FLOWER_BASIC_AUTH"
        if not colon or not user.strip():
            raise FlowerAuthError(f"{where} must be user:password (a user name, a colon, a password).")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise FlowerAuthError(f"{where} has a password shorter than {MIN_PASSWORD_LENGTH} characters.")
        if any(c.isspace() for c in user + password):
            raise FlowerAuthError(f"{where} has white space in it (a copy-paste slip?); remove it.")
        if any(marker in password.lower() for marker in PLACEHOLDERS):
            raise FlowerAuthError(f"{where} still has the example's placeholder password; set a real one.")
        if password.lower() in common_passwords():
            raise FlowerAuthError(f"{where} has a common password (on Django's list of 20,000); choose another.")


def common_passwords():
    """Django's list of common passwords (the CommonPasswordValidator's), read from the file it ships:
    no Django settings are needed, as Flower loads this before the Celery app configures itself."""
    global _COMMON
    if _COMMON is None:
        import gzip
        from pathlib import Path

        import django

        path = Path(django.__file__).parent / "contrib" / "auth" / "common-passwords.txt.gz"
        _COMMON = set(gzip.decompress(path.read_bytes()).decode().split())
    return _COMMON


_COMMON = None


def auth_mode(basic_auth, oauth, environ):
    """Return "basic", "oauth" or "open" (only when explicitly allowed); raise FlowerAuthError otherwise."""
    allow_open = allow_unauthenticated(environ)
    entries = [e for e in (basic_auth or []) if e]  # FLOWER_BASIC_AUTH="" counts as unset
    if entries:
        check_basic_auth(entries)
        return "basic"
    if oauth:
        if not environ.get("FLOWER_AUTH_PROVIDER"):
            raise FlowerAuthError("FLOWER_AUTH is set but FLOWER_AUTH_PROVIDER is not; Flower's OAuth needs both.")
        return "oauth"
    if allow_open:
        return "open"
    raise FlowerAuthError(
        "Flower has no authentication configured. Set FLOWER_BASIC_AUTH=user:password "
        "(see docs/operations.md, Monitoring), or FLOWER_ALLOW_UNAUTHENTICATED=true for a local, firewalled instance."
    )


def guard_flower_start():
    """Enforce the login whenever Flower parses its options, whatever the working directory or --conf.

    flowerconfig.py only runs when Flower finds it (./flowerconfig.py, or the file --conf names);
    celery_app.py calls this when the Celery command line starts Flower, so the check cannot be skipped.
    """
    from tornado.options import options

    options.add_parse_callback(lambda: enforce(options))


def enforce(options=None, environ=None):
    """Called from flowerconfig.py inside Flower: exit non-zero, with a clear message, if Flower would be open."""
    if options is None:
        from tornado.options import options
    environ = os.environ if environ is None else environ
    try:
        mode = auth_mode(options.basic_auth, options.auth, environ)
    except FlowerAuthError as exc:
        print(f"Refusing to start Flower: {exc}", file=sys.stderr)
        raise SystemExit(2)  # a configuration error, as every other process's (README, exit codes)
    if mode == "open":
        print(
            "WARNING: Flower is running WITHOUT authentication (FLOWER_ALLOW_UNAUTHENTICATED=true). "
            "Anyone who can reach its port can see and control the workers.",
            file=sys.stderr,
        )
    return mode
