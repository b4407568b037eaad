"""The data as tensors on the training device: split, normalised, shuffled and augmented there.

nas.data.datasets reads and checks the data (MNIST, Fashion-MNIST, KMNIST or the user's own, grey or
colour); this module turns it into normalised tensors [N, C, H, W]. Shuffling and augmentation
work on a whole epoch at once on the training device, and batches are static slices of it, so an
epoch costs a few batched calls and no per-image Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.data import datasets, formats
from nas.data.datasets import MNIST, Dataset, DatasetSpec
from nas.errors import DataError


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file (raw or .gz) as a uint8 tensor (nas.data.formats.read_idx)."""
    return torch.from_numpy(formats.read_idx(path).copy())


def _dataset(dataset: str | Dataset, data_dir: str | Path | None, fetch: bool = True) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else datasets.read(dataset, data_dir, fetch)


def load_raw(
    data_dir: str | Path | None = None,
    split: str = "train",
    fetch: bool = True,
    dataset: str | Dataset = datasets.DEFAULT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, C, H, W] and int64 labels [N] of the 'train' or 'test' split."""
    ds = _dataset(dataset, data_dir, fetch)
    x, y = (ds.x_train, ds.y_train) if split == "train" else (ds.x_test, ds.y_test)
    return torch.from_numpy(x), torch.from_numpy(y)


def _per_channel(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def normalize(images: torch.Tensor, spec: DatasetSpec = MNIST) -> torch.Tensor:
    """uint8 [N, C, H, W] (or [N, H, W], one channel) -> float [N, C, H, W], standardised per channel
    with the data's mean and std."""
    x = images.float() / 255.0
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return (x - _per_channel(spec.mean)) / _per_channel(spec.std)


def black(spec: DatasetSpec) -> tuple[float, ...]:
    """A black pixel after normalisation, per channel: what augmentation fills the corners with."""
    return tuple(-m / s for m, s in zip(spec.mean, spec.std))


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor
    fill: tuple[float, ...] = black(MNIST)  # a black pixel, normalised (per channel, or one for all)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    train: Split
    val: Split


def load(
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    val_size: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    dataset: str | Dataset = datasets.DEFAULT,
) -> Data:
    """Training and validation splits of the data's training images (test set: load_test).

    The validation images are a fixed random subset (seeded), so every trial of a search and
    every `nas train` run is judged on the same held-out images; `val_size` defaults to the data's
    (DatasetSpec.default_val_size: 10,000 of MNIST's 60,000). `train_size` keeps the first N of the
    remaining training images, for smoke runs.
    """
    ds = _dataset(dataset, data_dir)
    val_size = ds.spec.default_val_size if val_size is None else val_size
    images, labels = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    if not 0 <= val_size < len(labels):
        raise DataError(
            f"validation size {val_size} must be between 0 and {len(labels) - 1} "
            f"({ds.spec.name} has {len(labels):,} training images)"
        )
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_size is not None:
        train_idx = train_idx[:train_size]
    x = normalize(images, ds.spec).to(device)
    y = labels.to(device)
    fill = black(ds.spec)
    return Data(
        train=Split(x[train_idx.to(device)], y[train_idx.to(device)], fill),
        val=Split(x[val_idx.to(device)], y[val_idx.to(device)], fill),
    )


def _split(images: np.ndarray, labels: np.ndarray, ds: Dataset, device: str | torch.device) -> Split:
    """A whole set of the data's images as a normalised Split on `device`."""
    return Split(
        normalize(torch.from_numpy(images), ds.spec).to(device), torch.from_numpy(labels).to(device), black(ds.spec)
    )


def load_full_train(
    data_dir: str | Path | None = None, device: str | torch.device = "cpu", dataset: str | Dataset = datasets.DEFAULT
) -> Split:
    ds = _dataset(dataset, data_dir)
    return _split(ds.x_train, ds.y_train, ds, device)


def load_test(
    data_dir: str | Path | None = None, device: str | torch.device = "cpu", dataset: str | Dataset = datasets.DEFAULT
) -> Split:
    ds = _dataset(dataset, data_dir)
    return _split(ds.x_test, ds.y_test, ds, device)


AUGMENT_CHUNK = 16_384  # images per grid_sample call: bounds the memory of a whole-epoch augmentation


def random_affine(
    x: torch.Tensor,
    generator: torch.Generator,
    degrees: float = 10.0,
    translate: float = 0.1,
    scale: float = 0.0,
    fill: tuple[float, ...] = black(MNIST),
) -> torch.Tensor:
    """Per-sample small rotation, translation and (if scale > 0) scaling on x's device, the
    uncovered corners `fill`ed (a black pixel, normalised, per channel). The random draws for all
    of x are made in one call and the warp runs in chunks, so the result does not depend on the
    chunking."""
    n = x.shape[0]
    u = torch.rand(n, 3, generator=generator, device=x.device) * 2 - 1
    angle = u[:, 0] * degrees * torch.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    if scale > 0:  # drawn after the others, so scale = 0 draws exactly what it always did
        zoom = 1 + (torch.rand(n, generator=generator, device=x.device) * 2 - 1) * scale
        cos, sin = cos / zoom, sin / zoom  # the grid maps output to input: a smaller step enlarges the digit
    theta = torch.stack(
        [torch.stack([cos, -sin, u[:, 1] * translate * 2], 1), torch.stack([sin, cos, u[:, 2] * translate * 2], 1)], 1
    ).to(x.dtype)
    background = torch.tensor(fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    out = torch.empty_like(x)
    for i in range(0, n, AUGMENT_CHUNK):
        part = x[i : i + AUGMENT_CHUNK]
        grid = F.affine_grid(theta[i : i + AUGMENT_CHUNK], list(part.shape), align_corners=False)
        out[i : i + AUGMENT_CHUNK] = (
            F.grid_sample(part - background, grid, align_corners=False, padding_mode="zeros") + background
        )
    return out


def static_batches(n: int, batch_size: int) -> tuple[int, int]:
    """(batch, steps) of an epoch with one static batch shape, as a CUDA graph needs.

    The last partial batch is dropped, not wrapped: each epoch is a fresh shuffle, so the dropped
    images differ from epoch to epoch, and the trainer counts only the steps x batch images it
    trained on. A split smaller than one batch trains as a single batch of all its images.
    """
    if n < 1:
        raise DataError("the training split is empty; give --train-size of at least 1")
    batch = min(batch_size, n)
    return batch, n // batch


def shuffled_epoch(
    split: Split, used: int, generator: torch.Generator, augment: dict[str, float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `used` images of a fresh permutation of `split`, augmented by random_affine with
    `augment` (its degrees, translate, scale) unless None, drawn on its device in a few batched
    calls: the trainer then slices static batches out of it."""
    order = torch.randperm(len(split), generator=generator, device=split.x.device)[:used]
    x, y = split.x[order], split.y[order]
    return (random_affine(x, generator, **augment, fill=split.fill) if augment is not None else x), y
