"""The tests find MNIST the way the CLI does, and say in one line what to do when they cannot."""

import hashlib
import os
import subprocess
import sys
from dataclasses import replace

import conftest
import pytest
from conftest import ROOT, find_mnist, serve

from nas.data import datasets


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No NAS_TEST_MNIST, no ../shared copy, an empty user data folder."""
    monkeypatch.delenv("NAS_TEST_MNIST", raising=False)
    monkeypatch.setattr(conftest, "SHARED_MNIST", tmp_path / "shared")
    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path / "user"))
    return tmp_path / "user"


@pytest.fixture
def mirror(mnist_dir):
    """An HTTP server on loopback serving the real MNIST files, as a mirror would."""
    with serve(mnist_dir) as url:
        yield url


def test_explicit_folder_first_and_a_wrong_one_is_named(tmp_path, monkeypatch, mnist_dir):
    monkeypatch.setenv("NAS_TEST_MNIST", str(mnist_dir))
    assert find_mnist() == mnist_dir
    monkeypatch.setenv("NAS_TEST_MNIST", str(tmp_path))
    with pytest.raises(RuntimeError, match=f"NAS_TEST_MNIST={tmp_path} does not hold"):
        find_mnist()


def served_from(monkeypatch, *mirrors: str) -> None:
    """MNIST's published files and checksums, fetched from these mirrors."""
    monkeypatch.setitem(datasets.NAMED, "mnist", replace(datasets.NAMED["mnist"], mirrors=mirrors))


def test_user_folder_is_downloaded_with_checksums(nowhere, mirror, monkeypatch):
    served_from(monkeypatch, mirror)
    assert find_mnist() == nowhere
    files = datasets.NAMED["mnist"].files
    assert sorted(p.name for p in nowhere.iterdir()) == sorted(files)
    assert all(
        hashlib.sha256((nowhere / name).read_bytes()).hexdigest() == known.split(":")[1]
        for name, known in files.items()
    )


def test_no_data_and_no_network_is_one_clear_line(nowhere, monkeypatch):
    served_from(monkeypatch, "http://127.0.0.1:9/")  # refused at once
    with pytest.raises(RuntimeError) as e:
        find_mnist()
    message = str(e.value)
    assert "downloading it failed" in message and "set NAS_TEST_MNIST" in message and "\n" not in message


def test_pytest_stops_with_that_line_instead_of_a_failure_per_test(tmp_path):
    env = {**os.environ, "NAS_TEST_MNIST": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_train.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    assert f"tests need MNIST: NAS_TEST_MNIST={tmp_path} does not hold the four MNIST IDX files" in r.stdout + r.stderr
    assert "FAILED" not in r.stdout and "ERROR" not in r.stdout
