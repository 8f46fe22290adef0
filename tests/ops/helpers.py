"""Small process helpers for the operations tests: free ports, bounded waits, process trees."""

import os
import shutil
from pathlib import Path

import pytest
from tests.support import free_port, wait_until  # noqa: F401 - the ops tests import them from here

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else "python"
TEST_REDIS_URL = os.environ.get("CHECKTICK_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")


def _stat(pid):
    """(state, ppid) of a process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def descendants(root_pid):
    """Every live process below `root_pid`, found by walking parent links in /proc."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat:
                children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    """A zombie is gone for our purpose: it holds no resources and is waiting for its reaper."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def require_tool(path_or_name, how):
    """Fail in CI (where `make test` installs it), skip on a developer machine that lacks it."""
    found = shutil.which(path_or_name) or (os.path.exists(path_or_name) and path_or_name)
    if found:
        return found
    message = f"{path_or_name} is not installed; `make system-deps` ({how}) installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def readme_section(title, path="README.md"):
    """The text of one `## title` section of README.md (or of another Markdown file of the project)."""
    text = (ROOT / path).read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_variables():
    """Every variable in the configuration table of docs/configuration.md (first column, in backticks)."""
    import re

    section = readme_section("Configuration", "docs/configuration.md")
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, re.MULTILINE))


def env_example_variables():
    """Every variable .env.example names, set (`NAME=...`) or shown commented out (`# NAME=...`)."""
    import re

    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
