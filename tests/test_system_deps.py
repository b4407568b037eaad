"""The README's test command on a machine without the Debian packages some tests need: those tests
are skipped with one line naming the package, unless NAS_REQUIRE_SYSTEM_DEPS=1 (CI) makes a missing
one a failure."""

import os
import subprocess
import sys

from conftest import ROOT

_NEEDY = """
from conftest import needs_system


def test_needs_a_package_this_machine_lacks():
    needs_system("the example tests", "nas-no-such-package", False)


def test_needs_nothing():
    pass
"""


def run(tmp_path, **env):
    (tmp_path / "test_needy.py").write_text(_NEEDY)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "conftest",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_needy.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests"), **env},
    )


def test_a_missing_package_skips_its_tests_and_says_which(tmp_path):
    r = run(tmp_path, NAS_REQUIRE_SYSTEM_DEPS="0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout
    assert (
        r.stdout.count("skipped: the example tests need nas-no-such-package: apt-get install nas-no-such-package") == 1
    ), r.stdout


def test_ci_fails_instead_of_skipping(tmp_path):
    r = run(tmp_path, NAS_REQUIRE_SYSTEM_DEPS="1")
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    assert "NAS_REQUIRE_SYSTEM_DEPS=1" in r.stdout
