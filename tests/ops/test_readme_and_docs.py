"""The README reads in five minutes, and what it and docs/ show works as written.

Every `python manage.py X` and `make X` in a fenced block names a real command or target, and the
sample output of `make run` in the README is what `make run-once` prints on the demo data.
"""

import os
import re
import subprocess

import pytest
from django.core.management import get_commands

from tests.ops.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00")


def fenced_lines(path):
    """(language, line) for every line inside a fenced block of a Markdown file."""
    language, found = None, []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            language = None if language is not None else (line[3:].strip() or "text")
            continue
        if language is not None:
            found.append((language, line))
    return found


def make_targets():
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_in_a_fenced_block_names_a_real_command_or_target(path):
    commands, targets = set(get_commands()), make_targets()
    unknown = []
    for _, line in fenced_lines(path):
        words = line.strip().removeprefix("$ ").split()
        if words[:2] == ["python", "manage.py"] and len(words) > 2 and words[2] not in commands:
            unknown.append(line)
        if words[:1] == ["make"] and len(words) > 1 and not words[1].startswith("-") and "=" not in words[1] \
                and words[1] not in targets:
            unknown.append(line)
    assert unknown == []


def test_the_readme_fits_two_screens_and_links_to_docs_that_exist():
    text = (ROOT / "README.md").read_text()

    assert len(text.splitlines()) <= 120
    links = re.findall(r"\]\(((?:docs|ops|bench)/[^)#]+)", text)
    assert {"docs/operations.md", "docs/configuration.md", "docs/deploying.md", "docs/reliability.md",
            "docs/security.md"} <= set(links)
    assert [link for link in links if not (ROOT / link).exists()] == []


def readme_sample_of_the_jobs():
    """The governance and cleanup lines of the README's `make run` sample, without their prefixes."""
    sample = [line for language, line in fenced_lines(ROOT / "README.md") if language == "text"]
    jobs = [re.sub(r"^(governance|cleanup) +\| ?", "", line) for line in sample
            if re.match(r"^(governance|cleanup) +\|", line)]
    return [TIMESTAMP.sub("<time>", line) for line in jobs]


@pytest.mark.subprocess
def test_the_readmes_sample_output_is_what_make_run_once_prints_on_the_demo_data(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "SITE_URL", "EMAIL_HOST", "MAKEFLAGS", "MAKELEVEL"}}
    env["CHECKTICK_VAR_DIR"] = str(tmp_path)

    ran = subprocess.run(["make", "-s", "run-once"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    assert ran.returncode == 0, ran.stderr[-3000:]
    out = ran.stdout.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("Starting data governance processing"))
    end = next(i for i, line in enumerate(out) if line == "Cleanup completed successfully")
    printed = [TIMESTAMP.sub("<time>", line) for line in out[start:end + 1]]
    assert printed == readme_sample_of_the_jobs()
