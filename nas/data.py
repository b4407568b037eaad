"""MNIST from the four standard IDX files, verified, split, and kept as tensors on the device.

Shuffling and augmentation work on a whole epoch at once on the training device, and batches are
static slices of it, so an epoch costs a few batched calls and no per-image Python.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from nas.errors import DataError

# SHA-256 of the gzip files every MNIST mirror serves.
FILES = {
    "train-images-idx3-ubyte.gz": "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
    "train-labels-idx1-ubyte.gz": "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
    "t10k-images-idx3-ubyte.gz": "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
    "t10k-labels-idx1-ubyte.gz": "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MEAN, STD = 0.1307, 0.3081
_DTYPES = {0x08: torch.uint8}


def default_data_dir() -> Path:
    env = os.environ.get("NAS_DATA_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nas" / "mnist"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (raw or .gz) into a uint8 tensor, checking magic number and length."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        blob = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); delete it so it can be fetched again") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _DTYPES or not 1 <= blob[3] <= 4:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number {blob[:4].hex() or 'none'})")
    ndim = blob[3]
    if len(blob) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim])
    count = 1
    for d in dims:
        count *= d
    body = blob[4 + 4 * ndim :]
    if len(body) != count:
        raise DataError(f"{path}: header says {'x'.join(map(str, dims))} = {count} bytes, file has {len(body)}; the file is truncated or corrupt")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


def _find(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / name, data_dir / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def download(data_dir: Path, mirrors: tuple[str, ...] = MIRRORS) -> None:
    """Fetch missing files from the first mirror that serves them with the right checksum."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, digest in FILES.items():
        if _find(data_dir, name):
            continue
        errors = []
        for base in mirrors:
            try:
                with urllib.request.urlopen(base + name, timeout=30) as r:
                    payload = r.read()
            except OSError as e:
                errors.append(f"{base}: {e}")
                continue
            if hashlib.sha256(payload).hexdigest() != digest:
                errors.append(f"{base}: checksum mismatch")
                continue
            tmp = data_dir / (name + ".part")
            tmp.write_bytes(payload)
            tmp.replace(data_dir / name)
            break
        else:
            raise DataError(
                f"MNIST file {name} is not in {data_dir} and could not be downloaded ({'; '.join(errors)}); "
                f"put the four IDX files there, or pass --data-dir / set NAS_DATA_DIR to where they are"
            )


def load_raw(data_dir: str | Path | None = None, split: str = "train", fetch: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 28, 28] and int64 labels [N] of the 'train' or 'test' split."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    prefix = "train" if split == "train" else "t10k"
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    if fetch and not all(_find(data_dir, n) for n in names):
        download(data_dir)
    paths = []
    for name in names:
        found = _find(data_dir, name)
        if found is None:
            raise DataError(f"{data_dir / name} not found; pass --data-dir or set NAS_DATA_DIR to a folder with the MNIST IDX files")
        if found.suffix == ".gz" and sha256(found) != FILES[name]:
            raise DataError(f"{found}: SHA-256 does not match the published MNIST file; delete it and run again to re-download")
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"{paths[0]} and {paths[1]} do not form a dataset ({tuple(images.shape)} images, {tuple(labels.shape)} labels)")
    return images, labels.long()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 1, H, W], standardised with MNIST's mean and std."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Data:
    train: Split
    val: Split


def load(
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    val_size: int = 10_000,
    train_size: int | None = None,
    seed: int = 0,
) -> Data:
    """Training and validation splits of the 60,000 training images (test set: load_test).

    The validation images are a fixed random subset (seeded), so every trial of a search and
    every `nas train` run is judged on the same held-out images. `train_size` keeps the first N
    of the remaining training images, for smoke runs.
    """
    images, labels = load_raw(data_dir, "train")
    if not 0 <= val_size < len(labels):
        raise DataError(f"validation size {val_size} must be between 0 and {len(labels) - 1}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_size is not None:
        train_idx = train_idx[:train_size]
    x = normalize(images).to(device)
    y = labels.to(device)
    return Data(train=Split(x[train_idx.to(device)], y[train_idx.to(device)]), val=Split(x[val_idx.to(device)], y[val_idx.to(device)]))


def load_full_train(data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Split:
    images, labels = load_raw(data_dir, "train")
    return Split(normalize(images).to(device), labels.to(device))


def load_test(data_dir: str | Path | None = None, device: str | torch.device = "cpu") -> Split:
    images, labels = load_raw(data_dir, "test")
    return Split(normalize(images).to(device), labels.to(device))


AUGMENT_CHUNK = 16_384  # images per grid_sample call: bounds the memory of a whole-epoch augmentation


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 10.0, translate: float = 0.1, scale: float = 0.0) -> torch.Tensor:
    """Per-sample small rotation, translation and (if scale > 0) scaling on x's device. The random
    draws for all of x are made in one call and the warp runs in chunks, so the result does not
    depend on the chunking."""
    n = x.shape[0]
    u = torch.rand(n, 3, generator=generator, device=x.device) * 2 - 1
    angle = u[:, 0] * degrees * torch.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    if scale > 0:  # drawn after the others, so scale = 0 draws exactly what it always did
        zoom = 1 + (torch.rand(n, generator=generator, device=x.device) * 2 - 1) * scale
        cos, sin = cos / zoom, sin / zoom  # the grid maps output to input: a smaller step enlarges the digit
    theta = torch.stack([torch.stack([cos, -sin, u[:, 1] * translate * 2], 1), torch.stack([sin, cos, u[:, 2] * translate * 2], 1)], 1).to(x.dtype)
    background = -MEAN / STD  # a black pixel after normalisation
    out = torch.empty_like(x)
    for i in range(0, n, AUGMENT_CHUNK):
        part = x[i : i + AUGMENT_CHUNK]
        grid = F.affine_grid(theta[i : i + AUGMENT_CHUNK], list(part.shape), align_corners=False)
        out[i : i + AUGMENT_CHUNK] = F.grid_sample(part - background, grid, align_corners=False, padding_mode="zeros") + background
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


def shuffled_epoch(split: Split, used: int, generator: torch.Generator, augment: dict[str, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `used` images of a fresh permutation of `split`, augmented by random_affine with
    `augment` (its degrees, translate, scale) unless None, drawn on its device in a few batched
    calls: the trainer then slices static batches out of it."""
    order = torch.randperm(len(split), generator=generator, device=split.x.device)[:used]
    x, y = split.x[order], split.y[order]
    return (random_affine(x, generator, **augment) if augment is not None else x), y
