import gzip
import shutil

import numpy as np
import pytest
import torch

from nas.data import datasets
from nas.data.datasets import IDX, MNIST, read
from nas.data.tensors import (
    Split,
    black,
    load,
    load_raw,
    load_test,
    normalize,
    random_affine,
    read_idx,
    shuffled_epoch,
    static_batches,
)
from nas.errors import DataError


def test_idx_files_as_tensors(mnist_dir):
    """nas.data.tensors.read_idx is nas.data.datasets.read_idx as a torch tensor (the reading is tested there)."""
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert (
        labels.dtype == torch.uint8
        and labels.shape == (10000,)
        and np.array_equal(labels.numpy(), datasets.read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz"))
    )


def test_checksum_mismatch_is_refused(tmp_path, mnist_dir):
    for name in IDX:
        shutil.copy(mnist_dir / name, tmp_path / name)
    tampered = tmp_path / "t10k-labels-idx1-ubyte.gz"
    tampered.write_bytes(gzip.compress(gzip.decompress(tampered.read_bytes())))  # same content, other bytes
    with pytest.raises(DataError, match="SHA-256 does not match the published MNIST file"):
        load_raw(tmp_path, "test", fetch=False)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="NAS_DATA_DIR"):
        load_raw(tmp_path, "test", fetch=False)


def test_split_is_fixed_disjoint_and_sized(mnist_dir):
    a = load(mnist_dir, val_size=1000, train_size=3000, seed=0)
    b = load(mnist_dir, val_size=1000, train_size=3000, seed=0)
    assert len(a.train) == 3000 and len(a.val) == 1000
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    val_rows = {bytes(r.numpy()) for r in a.val.x[:, 0, 14].to(torch.float16).view(torch.uint8)}
    assert not any(
        bytes(r.numpy()) in val_rows for r in a.train.x[:, 0, 14].to(torch.float16).view(torch.uint8)[:500] if r.any()
    )
    test = load_test(mnist_dir)
    assert len(test) == 10000 and abs(a.train.x.mean().item()) < 0.2
    assert len(load(mnist_dir).val) == MNIST.default_val_size == 10_000  # the data's default


def test_colour_images_are_normalised_per_channel_and_augmented_on_black(tmp_path):
    """An RGB .npz: [N, H, W, 3] becomes [N, 3, H, W], each channel standardised with its own mean
    and std, and the corners augmentation uncovers are black in every channel."""
    rng = np.random.default_rng(0)
    x = np.zeros((60, 16, 16, 3), np.uint8)
    x[:, 4:12, 4:12] = rng.integers(0, 256, size=(60, 1, 1, 3), dtype=np.uint8) // np.array(
        [1, 2, 4], np.uint8
    )  # a coloured square, channels unequal
    np.savez(tmp_path / "rgb.npz", x=x, y=np.arange(60) % 3)
    data = load(dataset=str(tmp_path / "rgb.npz"), val_size=10)
    spec = read(str(tmp_path / "rgb.npz")).spec
    assert data.train.x.shape[1:] == (3, 16, 16) and len(set(spec.mean)) == 3
    whole = torch.cat([data.train.x, data.val.x])
    assert torch.allclose(whole.mean((0, 2, 3)), torch.zeros(3), atol=2e-3) and torch.allclose(
        whole.std((0, 2, 3)), torch.ones(3), atol=2e-3
    )
    assert data.train.fill == black(spec) and torch.allclose(
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), spec)[0, :, 0, 0], torch.tensor(black(spec))
    )
    blank = normalize(
        torch.zeros(8, 3, 16, 16, dtype=torch.uint8), spec
    )  # black pictures stay black, whatever a shift uncovers
    assert torch.allclose(
        random_affine(blank, torch.Generator().manual_seed(1), translate=0.3, fill=data.train.fill), blank, atol=1e-5
    )
    assert not torch.allclose(
        random_affine(blank, torch.Generator().manual_seed(1), translate=0.3), blank, atol=1e-2
    )  # MNIST's black is not this data's


def test_static_batches_drop_the_last_partial_batch():
    assert static_batches(50_000, 512) == (512, 97)  # 97 x 512 = 49,664 images an epoch
    assert static_batches(10, 3) == (3, 3)
    assert static_batches(40, 512) == (40, 1)  # smaller than a batch: one batch of everything
    with pytest.raises(DataError, match="empty"):
        static_batches(0, 64)


def test_shuffled_epoch_is_a_seeded_permutation():
    split = Split(torch.arange(10.0).reshape(10, 1, 1, 1), torch.arange(10))
    x, y = shuffled_epoch(split, 10, torch.Generator().manual_seed(0), augment=None)
    assert sorted(y.tolist()) == list(range(10)) and y.tolist() != list(range(10))
    assert torch.equal(x.flatten(), y.float())  # images travel with their labels
    again, _ = shuffled_epoch(split, 10, torch.Generator().manual_seed(0), augment=None)
    assert torch.equal(again, x)
    part, labels = shuffled_epoch(split, 6, torch.Generator().manual_seed(1), augment=None)
    assert len(part) == 6 and len(set(labels.tolist())) == 6


def test_whole_epoch_augmentation_does_not_depend_on_chunking(monkeypatch):
    import nas.data.tensors

    x = torch.randn(50, 1, 28, 28)
    whole = random_affine(x, torch.Generator().manual_seed(3))
    monkeypatch.setattr(nas.data.tensors, "AUGMENT_CHUNK", 7)
    assert torch.allclose(random_affine(x, torch.Generator().manual_seed(3)), whole, atol=1e-6)


def test_augmentation_is_small_and_per_sample():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 2.0
    out = random_affine(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.allclose(out[0], out[1])  # each sample gets its own transform
    assert (out - x).abs().mean() < 0.5  # small: most of the picture stays put


def test_scaling_enlarges_or_shrinks_and_costs_nothing_when_off():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0  # an 8x8 square: 64 bright pixels
    plain = random_affine(x, torch.Generator().manual_seed(5), degrees=0, translate=0)
    assert torch.allclose(plain, x, atol=1e-5)  # nothing asked, nothing changed
    zoomed = random_affine(x, torch.Generator().manual_seed(5), degrees=0, translate=0, scale=0.3)
    areas = (zoomed > 0.5).flatten(1).sum(1).float()
    assert areas.min() < 55 and areas.max() > 75  # some squares shrank, some grew
    rotated = random_affine(x, torch.Generator().manual_seed(5), degrees=10, translate=0.1)
    assert torch.equal(
        rotated, random_affine(x, torch.Generator().manual_seed(5), degrees=10, translate=0.1, scale=0.0)
    )
