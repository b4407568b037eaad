"""A non-editable install carries the search spaces and seeds: built-in names work anywhere."""

import os
import shutil
import subprocess
import sys

from conftest import ROOT


def test_installed_package_finds_its_spaces_from_any_folder(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "nas", src / "nas", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    site = tmp_path / "site"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    assert (site / "nas" / "search_spaces" / "mnist_fcn.toml").is_file() and (
        site / "nas" / "search_spaces" / "seeds" / "seed_9274.toml"
    ).is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    for args, text in (
        (["space", "show"], "search space mnist_fcn"),
        (["summary", "seed_9274"], "Total params: 9,274"),
    ):
        r = subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True, cwd=elsewhere, env=env)
        assert r.returncode == 0 and text in r.stdout, r.stderr
        assert (
            str(site)
            in subprocess.run(
                [sys.executable, "-c", "import nas; print(nas.__file__)"],
                capture_output=True,
                text=True,
                cwd=elsewhere,
                env=env,
            ).stdout
        )
