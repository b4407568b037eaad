"""The data a study searches on: MNIST, Fashion-MNIST or KMNIST by name, or the user's own (a
folder of IDX files, or an .npz), grey or colour. Torch-free (numpy), so the settings and the
commands that only read a study stay light.

What defines the data is a study setting (DatasetSpec: name, image shape, classes, class names,
normalisation, counts and the SHA-256 of the decoded arrays); where it lies is per machine
(--data-dir for the named ones, the PATH itself for the user's). Each machine reads its copy and
checks it against the study's SHA-256, so a gunzipped copy of the same files, or an .npz of the
same arrays, is the same data, and other data is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.errors import DataError

if TYPE_CHECKING:  # numpy is imported where arrays are read, so that settings and --help stay quick
    import numpy as np

Log = Callable[[str], None]


@dataclass(frozen=True)
class Named:
    """A dataset nas knows by name: where it is published and the checksums of its files."""

    name: str
    title: str
    mirrors: tuple[str, ...]  # base URLs, tried in order
    files: dict[str, str]  # file name -> "sha256:..." or "md5:..." of the published .gz file
    checksums: str  # where the checksums come from
    class_names: tuple[str, ...] | None = None
    arrays_sha256: str | None = (
        None  # DatasetSpec.sha256 of the published data, where known: checks uncompressed copies too
    )


IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
NAMED: dict[str, Named] = {
    "mnist": Named(
        "mnist",
        "MNIST",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
        dict(
            zip(
                IDX,
                (
                    "sha256:0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
                    "sha256:1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
                    "sha256:1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
                    "sha256:b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
                ),
            )
        ),
        "SHA-256 of the gzip files every MNIST mirror serves",
        arrays_sha256="05a957b0b09cc315ea671d991648f7d65cdfaf58727210d1d752cc52e29e461f",
    ),
    "fashion-mnist": Named(
        "fashion-mnist",
        "Fashion-MNIST",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        dict(
            zip(
                IDX,
                (
                    "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "md5:25c81989df183df01b3e8a0aad5dffbe",
                    "md5:bef4ecab320f06d8554ea6380940ec79",
                    "md5:bb300cfdad3c16e7a12a480ee83cd310",
                ),
            )
        ),
        "MD5 of github.com/zalandoresearch/fashion-mnist, README.md, 'Get the Data' (the location is the same table's)",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    "kmnist": Named(
        "kmnist",
        "Kuzushiji-MNIST",
        ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        dict(
            zip(
                IDX,
                (
                    "md5:bdb82020997e1d708af4cf47b453dcf7",
                    "md5:e144d726b3acfaa3e44228e80efcd344",
                    "md5:5c965bf0a639b31b8f53240b1b52f4d7",
                    "md5:7320c461ea6c1c855c0b718fb2a4b134",
                ),
            )
        ),
        "MD5 of github.com/pytorch/vision, torchvision/datasets/mnist.py, KMNIST.resources (the location is github.com/rois-codh/kmnist's README)",
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),  # the hiragana お き す つ な は ま や れ を
    ),
}
DEFAULT = "mnist"
HELD_OUT = 1 / 7  # of x held out as the test set when a file has no x_test (MNIST's 10,000 of 70,000) ...
MAX_HELD_OUT = 10_000  # ... at most this many
VAL_SHARE, MAX_VAL = (
    1 / 6,
    10_000,
)  # the default validation split: a sixth of the training images (MNIST's 10,000 of 60,000), at most 10,000
MAX_CHANNELS, MAX_SIDE, MAX_CLASSES = 4, 4096, 4096  # grey, grey + alpha, RGB, RGBA; nas.arch.spec's limits
NPZ_KEYS = ("x", "y", "x_test", "y_test", "class_names")
_IDX_TYPES = {0x08: "uint8"}  # IDX type code -> numpy dtype


@dataclass(frozen=True)
class DatasetSpec:
    """What a study's data is (a setting stored with the study). Two specs are equal when their
    data is: the name and the path where it was found are not compared."""

    name: str = field(compare=False)
    shape: tuple[int, int, int]  # channels, height, width
    classes: int
    train: int  # training images; the validation split is drawn from them
    test: int
    held_out: bool  # the test images were held out of x (the file had no x_test)
    mean: tuple[float, ...]  # per channel, of the training pixels in [0, 1]
    std: tuple[float, ...]
    sha256: str  # of the decoded arrays (nas.data.datasets.digest)
    class_names: tuple[str, ...] | None = None
    path: str | None = field(default=None, compare=False)  # where a user's file or folder was when the study was made

    def __post_init__(self) -> None:
        for key in ("shape", "mean", "std", "class_names"):  # lists when read back from a study
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))

    @property
    def default_val_size(self) -> int:
        return max(1, min(MAX_VAL, round(self.train * VAL_SHARE)))

    def label(self, k: int) -> str:
        """Class k as people name it: its index, and its name where the data has names."""
        return f"{k} {self.class_names[k]}" if self.class_names else str(k)

    def describe(self) -> str:
        test = f"{self.test:,} test images" + (" (held out of x, seeded)" if self.held_out else "")
        names = f" ({', '.join(self.class_names)})" if self.class_names else ""
        return f"{self.name}: {'x'.join(map(str, self.shape))}, {self.classes} classes{names}, {self.train:,} training and {test}"

    def short(self) -> str:
        """Name, shape and hash: enough to tell two datasets apart in one line."""
        return f"{self.name} ({'x'.join(map(str, self.shape))}, {self.classes} classes, {self.train:,}+{self.test:,} images, SHA-256 {self.sha256[:12]})"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


# The default data: what StudySettings() means. The arrays' SHA-256 and normalisation are what
# spec_of gives the published files (a test reads them and compares).
MNIST = DatasetSpec(
    "mnist", (1, 28, 28), 10, 60_000, 10_000, False, (0.1307,), (0.3081,), NAMED["mnist"].arrays_sha256 or ""
)


@dataclass
class Dataset:
    """A dataset as read on this machine: its spec and its arrays, images [N, C, H, W] uint8,
    labels int64."""

    spec: DatasetSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --- places -----------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where named datasets are downloaded when no --data-dir is given: ~/.cache/nas/NAME."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nas"


def default_data_dir() -> Path:
    """MNIST's folder: NAS_DATA_DIR, or the cache."""
    env = os.environ.get("NAS_DATA_DIR")
    return Path(env) if env else cache_root() / "mnist"


def folder_of(name: str, data_dir: str | Path | None) -> Path:
    """Where a named dataset's files are: for mnist --data-dir itself (the folder of its four
    files), for the others NAME/ under --data-dir (a cache root); without it, the cache."""
    if name == "mnist":
        return Path(data_dir) if data_dir else default_data_dir()
    return (Path(data_dir) if data_dir else cache_root()) / name


def _names() -> str:
    return ", ".join(NAMED)


# --- reading ----------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (raw or .gz) as a uint8 array, its magic number and length checked."""
    import numpy as np

    path = Path(path)
    try:
        raw = path.read_bytes()
        blob = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e}); delete it so it can be fetched again") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_TYPES or not 1 <= blob[3] <= 4:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number {blob[:4].hex() or 'none'})")
    ndim = blob[3]
    if len(blob) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated header")
    dims = struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = blob[4 + 4 * ndim :]
    if len(body) != count:
        raise DataError(
            f"{path}: header says {'x'.join(map(str, dims))} = {count} bytes, file has {len(body)}; the file is truncated or corrupt"
        )
    return np.frombuffer(bytearray(body), dtype=np.uint8).reshape(dims)  # writable: torch takes it over without a copy


_ROLES = {  # file name endings of the four IDX files (EMNIST prefixes its own, e.g. emnist-letters-train-images-idx3-ubyte.gz)
    "train images": r"train-images-idx[34]-ubyte",
    "train labels": r"train-labels-idx1-ubyte",
    "test images": r"(t10k|test)-images-idx[34]-ubyte",
    "test labels": r"(t10k|test)-labels-idx1-ubyte",
}


def idx_files(folder: Path) -> dict[str, Path]:
    """The IDX files of a folder by role (those found; .gz preferred to an uncompressed copy).
    Several candidates for one role are refused: the folder must hold one dataset."""
    found: dict[str, Path] = {}
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    for role, pattern in _ROLES.items():
        matches = [n for n in names if re.search(rf"(^|[-_.]){pattern}(\.gz)?$", n)]
        stems = {n.removesuffix(".gz") for n in matches}
        if len(stems) > 1:
            raise DataError(
                f"{folder}: holds several {role} files ({', '.join(sorted(stems))}); give a folder with one dataset's four IDX files"
            )
        if matches:
            found[role] = folder / max(matches, key=lambda n: n.endswith(".gz"))
    return found


def images_chw(x: np.ndarray, where: str) -> np.ndarray:
    """Images [N, H, W] or [N, H, W, C] as [N, C, H, W] uint8."""
    import numpy as np

    if x.dtype != np.uint8:
        raise DataError(
            f"{where}: images must be uint8 pixels 0-255 (got {x.dtype}); convert them, e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] > MAX_CHANNELS and 1 <= x.shape[1] <= MAX_CHANNELS:
            raise DataError(
                f"{where}: images are {list(x.shape)}, channels first; nas reads [N, H, W, C] (channels last): np.moveaxis(x, 1, -1)"
            )
        if not 1 <= x.shape[-1] <= MAX_CHANNELS:
            raise DataError(
                f"{where}: images [N, H, W, C] have {x.shape[-1]} channels; 1 to {MAX_CHANNELS} (grey, grey + alpha, RGB, RGBA)"
            )
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: images must be [N, H, W] or [N, H, W, C] (got {x.ndim} dimensions, {list(x.shape)})")
    if not all(1 <= s <= MAX_SIDE for s in x.shape[2:]):
        raise DataError(f"{where}: images are {x.shape[2]}x{x.shape[3]}; each side must be 1 to {MAX_SIDE:,} pixels")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    import numpy as np

    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-d array of integers (got {y.dtype}, {list(y.shape)})")
    if len(y) != n:
        raise DataError(f"{where}: {len(y):,} labels for {n:,} images; give one label per image")
    if len(y) and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise DataError(
            f"{where}: labels must be 0 to {MAX_CLASSES - 1} (got {y.min()} to {y.max()}); number the classes from 0"
        )
    return y.astype(np.int64)


def _read_npz(
    path: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, tuple[str, ...] | None]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.files)
            unknown = sorted(set(keys) - set(NPZ_KEYS))
            if unknown:
                raise DataError(
                    f"{path}: unknown array {unknown[0]!r}; an .npz for nas holds x and y, optionally x_test and y_test, and class_names"
                )
            for need in ("x", "y"):
                if need not in keys:
                    raise DataError(
                        f"{path}: no array {need!r}; save images as x (uint8 [N, H, W] or [N, H, W, C]) and labels as y"
                    )
            if ("x_test" in keys) != ("y_test" in keys):
                raise DataError(
                    f"{path}: x_test and y_test go together; give both, or neither (a test split is then held out of x)"
                )
            arrays = {k: f[k] for k in keys}
    except DataError:
        raise
    except ValueError as e:  # an object array: allow_pickle is off, on purpose
        raise DataError(f"{path}: {e}; save plain numeric arrays (np.savez(path, x=..., y=...))") from None
    except (OSError, EOFError, KeyError) as e:
        raise DataError(
            f"{path}: not a readable .npz file ({e}); make one with np.savez(path, x=images, y=labels)"
        ) from None
    names = arrays.get("class_names")
    if names is not None and (names.ndim != 1 or names.dtype.kind != "U"):
        raise DataError(f"{path}: class_names must be a 1-d array of strings (got {names.dtype}, {list(names.shape)})")
    return (
        arrays["x"],
        arrays["y"],
        arrays.get("x_test"),
        arrays.get("y_test"),
        tuple(str(n) for n in names) if names is not None else None,
    )


def _hold_out(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): a fixed, seeded HELD_OUT share of the images as the
    test set; the training images keep their order."""
    import numpy as np

    n_test = min(MAX_HELD_OUT, round(len(y) * HELD_OUT))
    order = np.random.default_rng(0).permutation(len(y))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return x[train], y[train], x[test], y[test]


def digest(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    class_names: tuple[str, ...] | None,
) -> str:
    """SHA-256 of the data as nas uses it: each array's name, shape and type, then its bytes
    (images [N, C, H, W] uint8, labels int64), then the class names. It does not depend on how the
    data was stored (gzip or not, IDX or .npz)."""
    import numpy as np

    h = hashlib.sha256()
    for name, a in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        h.update(f"{name}{list(a.shape)}{a.dtype.str}".encode())
        h.update(np.ascontiguousarray(a).data)
    if class_names:
        h.update(json.dumps(list(class_names)).encode())
    return h.hexdigest()


def normalisation(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixels in [0, 1], rounded to 4 decimals (MNIST's
    training images give the customary 0.1307 and 0.3081). Exact, from each channel's histogram."""
    import numpy as np

    means, stds = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        values = np.arange(256) / 255.0
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = max(0.0, (counts * values**2).sum() / n - mean**2)
        means.append(round(float(mean), 4))
        stds.append(max(round(float(var**0.5), 4), 1e-4))  # a constant channel still divides
    return tuple(means), tuple(stds)


def edge_level(x: np.ndarray) -> float:
    """Mean brightness in [0, 1] of the border pixels of images [N, C, H, W]: their background."""
    import numpy as np

    edge = np.concatenate([x[:, :, [0, -1], :].reshape(len(x), -1), x[:, :, :, [0, -1]].reshape(len(x), -1)], 1)
    return float(edge.mean()) / 255 if edge.size else 0.5


def background(x: np.ndarray) -> str:
    """What the edge of the training images shows: "dark" (MNIST's black around a white digit),
    "light", or "mixed" (natural images). nas predict inverts a picture only for a model trained on
    dark or light backgrounds, when the picture is on the other side of grey."""
    level = edge_level(x)
    return "dark" if level < 0.2 else "light" if level > 0.8 else "mixed"


def spec_of(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    name: str,
    held_out: bool,
    class_names: tuple[str, ...] | None,
    path: str | None,
) -> DatasetSpec:
    classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    if classes < 2:
        raise DataError(f"{path or name}: every label is 0; a classifier needs at least 2 classes")
    if class_names is not None and len(class_names) != classes:
        raise DataError(
            f"{path or name}: {len(class_names)} class names for labels 0 to {classes - 1}; give one name per class"
        )
    mean, std = normalisation(x_train)
    return DatasetSpec(
        name,
        tuple(x_train.shape[1:]),
        classes,
        len(y_train),
        len(y_test),
        held_out,
        mean,
        std,  # type: ignore[arg-type]
        digest(x_train, y_train, x_test, y_test, class_names),
        class_names,
        path,
    )


def _assemble(
    where: str,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    class_names: tuple[str, ...] | None,
    path: str | None,
    names: tuple[str, str, str, str] = ("x", "y", "x_test", "y_test"),
) -> Dataset:
    """A Dataset from the arrays of a file or folder (`where`), each checked and named in errors by `names`."""
    x = images_chw(x, f"{where}: {names[0]}")
    y = _labels(y, len(x), f"{where}: {names[1]}")
    held_out = x_test is None or y_test is None
    if held_out:
        if len(y) < 10:
            raise DataError(f"{where}: {len(y)} images; give at least 10 (a test split is held out of them)")
        x, y, x_test, y_test = _hold_out(x, y)
    else:
        x_test = images_chw(x_test, f"{where}: {names[2]}")
        y_test = _labels(y_test, len(x_test), f"{where}: {names[3]}")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{where}: test images are {list(x_test.shape[1:])}, training images {list(x.shape[1:])} ([C, H, W]); give them one shape"
            )
    if len(y) < 2 or len(y_test) < 1:
        raise DataError(f"{where}: {len(y):,} training and {len(y_test):,} test images; give at least 2 and 1")
    return Dataset(spec_of(x, y, x_test, y_test, name, held_out, class_names, path), x, y, x_test, y_test)


def _read_idx_folder(folder: Path, name: str, class_names: tuple[str, ...] | None, path: str | None) -> Dataset:
    files = idx_files(folder)
    missing = [role for role in _ROLES if role not in files]
    if missing:
        raise DataError(
            f"{folder}: no {' and no '.join(missing)} IDX file (looked for names ending in train-images-idx3-ubyte[.gz], "
            f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])"
        )
    return _assemble(
        str(folder),
        name,
        *(read_idx(files[role]) for role in _ROLES),
        class_names,
        path,  # type: ignore[arg-type]
        names=tuple(files[role].name for role in _ROLES),
    )  # type: ignore[arg-type]


def _published(named: Named, folder: Path) -> None:
    """Refuse a named dataset's .gz file whose checksum is not the published one (an
    uncompressed copy is checked through the decoded arrays where their hash is known)."""
    for path in idx_files(folder).values():
        known = named.files.get(path.name)
        if known is not None and not _matches(path, known):
            algorithm = {"sha256": "SHA-256", "md5": "MD5"}[known.split(":")[0]]
            raise DataError(
                f"{path}: {algorithm} does not match the published {named.title} file; delete it and run again to download it again"
            )


def _matches(path: Path, known: str) -> bool:
    algorithm, digest_ = known.split(":")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == digest_


def _read_named(named: Named, data_dir: str | Path | None, fetch: bool, log: Log) -> Dataset:
    folder = folder_of(named.name, data_dir)
    if len(idx_files(folder)) < len(_ROLES):
        if not fetch:
            raise DataError(
                f"{folder}: the {named.title} IDX files are not there; pass --data-dir (or set NAS_DATA_DIR) to the folder that holds them"
            )
        download(named, folder, log)
    _published(named, folder)
    ds = _read_idx_folder(folder, named.name, named.class_names, None)
    if named.arrays_sha256 and ds.spec.sha256 != named.arrays_sha256:
        raise DataError(
            f"{folder}: these are not the published {named.title} images and labels (SHA-256 of the decoded arrays "
            f"{ds.spec.sha256[:12]}, published {named.arrays_sha256[:12]}); delete the files and run again to download them"
        )
    return ds


_CACHE: dict[
    tuple, Dataset
] = {}  # the last dataset read in this process: a search checks its data, then its worker trains on it


def _stamp(path: Path) -> tuple:
    """What identifies a file or folder's content cheaply (name, size, modification time of each file)."""
    paths = sorted(path.iterdir()) if path.is_dir() else [path]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file())


def read(dataset: str = DEFAULT, data_dir: str | Path | None = None, fetch: bool = True, log: Log = print) -> Dataset:
    """The data a --dataset value names: mnist, fashion-mnist or kmnist (from --data-dir,
    downloaded there if missing), or a PATH: a folder of the four IDX files, or an .npz with x and
    y (uint8 images [N, H, W] or [N, H, W, C], integer labels), optionally x_test and y_test (else a
    test split is held out of x) and class_names."""
    if dataset in NAMED:
        place = folder_of(dataset, data_dir)
    else:
        place = Path(dataset).expanduser()
        if not place.exists():
            raise DataError(
                f"--dataset {dataset}: no such file or folder, and not a dataset nas knows by name ({_names()}); "
                "give a folder of IDX files or an .npz file"
            )
        if place.is_file() and place.suffix != ".npz":
            raise DataError(
                f"--dataset {dataset}: give an .npz file (x, y and optionally x_test, y_test) or a folder of the four IDX files"
            )
    key = (dataset, str(place.resolve()), _stamp(place) if place.exists() else ())
    if key[2] and key in _CACHE:
        return _CACHE[key]
    if dataset in NAMED:
        loaded = _read_named(NAMED[dataset], data_dir, fetch, log)
    elif place.is_dir():
        loaded = _read_idx_folder(place, place.resolve().name, None, str(place.resolve()))
    else:
        x, y, x_test, y_test, class_names = _read_npz(place)
        loaded = _assemble(str(place), place.name, x, y, x_test, y_test, class_names, str(place.resolve()))
    _CACHE.clear()
    _CACHE[(dataset, str(place.resolve()), _stamp(place))] = loaded
    return loaded


def for_study(spec: DatasetSpec, given: str | None, data_dir: str | Path | None, log: Log = print) -> Dataset:
    """A study's data on this machine: the --dataset this run gave, else the named dataset (from
    --data-dir), else the path the study was made with; refused unless it is the study's data."""
    if given is None and spec.path is not None:  # a user's data: where it was
        if not Path(spec.path).exists():
            raise DataError(
                f"the study's data {spec.short()} was at {spec.path} where the study was made, and is not there on this machine; "
                "give --dataset PATH to where it is here (it is checked against the study's SHA-256)"
            )
        given = spec.path
    ds = read(given or spec.name, data_dir, log=log)
    if ds.spec != spec:
        raise DataError(
            f"--dataset {given or spec.name}: this is other data than the study's: the study was made with {spec.short()}, "
            f"this is {ds.spec.short()}; give the study's data, or start a new study with --study-name"
        )
    return ds


# --- downloading ------------------------------------------------------------------------------


class _Bar:
    """A download's progress bar, drawn by rich on the terminal, driven by pooch through the
    interface it gives a custom bar (total, update, reset, close)."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task: Any = None

    @property
    def total(self) -> float | None:
        return None if self.task is None else self.progress.tasks[0].total

    @total.setter
    def total(self, value: float) -> None:
        self.progress.start()
        self.task = self.progress.add_task("", total=value or None)

    def update(self, n: int) -> None:
        self.progress.update(self.task, advance=n)

    def reset(self) -> None:
        self.progress.reset(self.task)

    def close(self) -> None:
        self.progress.stop()


def download(named: Named, folder: Path, log: Log = print) -> None:
    """Fetch the files of a named dataset missing from `folder`, each from the first mirror that
    serves it with the published checksum (pooch: a temporary file, checked, then moved into place,
    so a failed or tampered download leaves nothing behind). A progress bar shows on a terminal."""
    try:
        import pooch
    except ImportError:
        raise DataError(
            f"downloading {named.title} needs pooch (pip install pooch), or put its four IDX files in {folder}"
        ) from None
    pooch.get_logger().setLevel("WARNING")  # nas says what it downloads, once
    have = {p.name.removesuffix(".gz") for p in idx_files(folder).values()}
    for fname, known in named.files.items():
        if fname.removesuffix(".gz") in have:
            continue
        errors = []
        for base in named.mirrors:
            log(f"downloading {named.title} {fname} from {base} into {folder}/")
            bar = _Bar(fname) if sys.stderr.isatty() else False
            try:
                pooch.retrieve(
                    base + fname,
                    known_hash=known,
                    fname=fname,
                    path=folder,
                    downloader=pooch.HTTPDownloader(progressbar=bar, timeout=30, chunk_size=1 << 16),
                )
                break
            except Exception as e:  # noqa: BLE001 - requests and pooch fail in many types; each is a reason to try the next mirror
                if bar:
                    bar.close()
                errors.append(
                    f"{base}: {'checksum mismatch' if 'does not match the known hash' in str(e) else _reason(e)}"
                )
        else:
            raise DataError(
                f"{named.title} file {fname} is not in {folder} and could not be downloaded ({'; '.join(errors)}); "
                f"put the four IDX files there, or pass --data-dir / set NAS_DATA_DIR to where they are"
            )


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."
