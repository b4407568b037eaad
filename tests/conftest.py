from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "search_spaces" / "seeds" / "seed_9274.toml"
MNIST = Path(os.environ.get("NAS_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST expected at {MNIST} (set NAS_TEST_MNIST to its folder)")
    return MNIST


@pytest.fixture(scope="session")
def small_data(mnist_dir):
    """4,000 training and 2,000 validation images: enough to see learning within seconds."""
    from nas.data import load

    return load(mnist_dir, val_size=2000, train_size=4000)
