from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "search_spaces" / "seeds" / "seed_9274.toml"
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


_MNIST = pytest.StashKey[Path]()


def has_mnist(folder: Path) -> bool:
    return all((folder / f"{n}.gz").is_file() or (folder / n).is_file() for n in MNIST_FILES)


def find_mnist() -> Path:
    """Where the tests read real MNIST, the way the CLI finds it: NAS_TEST_MNIST, then
    ../shared/data/mnist, then the user's data folder (nas.data.default_data_dir), downloaded
    there with checksum verification if missing. RuntimeError (one line) when none works."""
    env = os.environ.get("NAS_TEST_MNIST")
    if env:
        if has_mnist(Path(env)):
            return Path(env)
        raise RuntimeError(f"NAS_TEST_MNIST={env} does not hold the four MNIST IDX files (.gz or raw); point it at a folder that does, or unset it")
    if has_mnist(SHARED_MNIST):
        return SHARED_MNIST
    from nas.data import default_data_dir, download
    from nas.errors import DataError

    user = default_data_dir()
    if has_mnist(user):
        return user
    try:
        download(user)
    except DataError as e:
        reason = str(e).split(" could not be downloaded ", 1)[-1].split(";")[0].strip(" (")
        raise RuntimeError(f"real MNIST not found in {SHARED_MNIST} or {user}, and downloading it failed ({reason}); "
                           "set NAS_TEST_MNIST to a folder with the four IDX files") from None
    return user


def pytest_collection_modifyitems(session, config, items) -> None:
    """Find the data once, before any test runs, and only if a selected test needs it: when it
    cannot be found, stop with one message instead of a failure per test."""
    if any("mnist_dir" in getattr(item, "fixturenames", ()) or "small_data" in getattr(item, "fixturenames", ()) for item in items):
        try:
            config.stash[_MNIST] = find_mnist()
        except RuntimeError as e:
            pytest.exit(f"tests need MNIST: {e}", returncode=1)


@pytest.fixture(scope="session")
def mnist_dir(request) -> Path:
    return request.config.stash[_MNIST]


@pytest.fixture(scope="session")
def small_data(mnist_dir):
    """4,000 training and 2,000 validation images: enough to see learning within seconds."""
    from nas.data import load

    return load(mnist_dir, val_size=2000, train_size=4000)
