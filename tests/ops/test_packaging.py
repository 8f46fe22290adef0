"""The project builds as `make install` builds it, without setuptools' deprecation warnings."""

import subprocess

import pytest

from tests.ops.helpers import PY, ROOT

pytestmark = pytest.mark.subprocess


def test_the_project_builds_without_deprecation_warnings(tmp_path):
    built = subprocess.run([PY, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=300)

    assert built.returncode == 0, built.stderr[-3000:]
    output = built.stdout + built.stderr
    assert "deprecated" not in output.lower(), output[-3000:]
    assert list(tmp_path.glob("checktick_governance-*.whl"))
