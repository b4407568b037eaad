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

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.data.download import Named, download, published
from nas.data.formats import ROLES, idx_files, images_chw, labels_int64, read_idx, read_npz
from nas.data.stats import digest, normalisation
from nas.errors import DataError

if TYPE_CHECKING:  # numpy is imported where arrays are read, so that settings and --help stay quick
    import numpy as np

Log = Callable[[str], None]

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
        "MD5 of github.com/pytorch/vision, torchvision/datasets/mnist.py, KMNIST.resources "
        "(the location is github.com/rois-codh/kmnist's README)",
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),  # the hiragana お き す つ な は ま や れ を
    ),
}
DEFAULT = "mnist"
HELD_OUT = 1 / 7  # of x held out as the test set when a file has no x_test (MNIST's 10,000 of 70,000) ...
MAX_HELD_OUT = 10_000  # ... at most this many
# The default validation split: a sixth of the training images (MNIST's 10,000 of 60,000), at most 10,000.
VAL_SHARE, MAX_VAL = 1 / 6, 10_000


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
    sha256: str  # of the decoded arrays (nas.data.stats.digest)
    class_names: tuple[str, ...] | None = None
    # where a user's file or folder was when the study was made
    path: str | None = field(default=None, compare=False)

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
        return (
            f"{self.name}: {'x'.join(map(str, self.shape))}, {self.classes} classes{names}, "
            f"{self.train:,} training and {test}"
        )

    def short(self) -> str:
        """Name, shape and hash: enough to tell two datasets apart in one line."""
        return (
            f"{self.name} ({'x'.join(map(str, self.shape))}, {self.classes} classes, "
            f"{self.train:,}+{self.test:,} images, SHA-256 {self.sha256[:12]})"
        )

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


def _hold_out(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): a fixed, seeded HELD_OUT share of the images as the
    test set; the training images keep their order."""
    import numpy as np

    n_test = min(MAX_HELD_OUT, round(len(y) * HELD_OUT))
    order = np.random.default_rng(0).permutation(len(y))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return x[train], y[train], x[test], y[test]


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
    channels, height, width = x_train.shape[1:]
    return DatasetSpec(
        name,
        (channels, height, width),
        classes,
        len(y_train),
        len(y_test),
        held_out,
        mean,
        std,
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
    y = labels_int64(y, len(x), f"{where}: {names[1]}")
    if x_test is None or y_test is None:
        held_out = True
        if len(y) < 10:
            raise DataError(f"{where}: {len(y)} images; give at least 10 (a test split is held out of them)")
        x, y, x_test, y_test = _hold_out(x, y)
    else:
        held_out = False
        x_test = images_chw(x_test, f"{where}: {names[2]}")
        y_test = labels_int64(y_test, len(x_test), f"{where}: {names[3]}")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{where}: test images are {list(x_test.shape[1:])}, training images {list(x.shape[1:])} "
                "([C, H, W]); give them one shape"
            )
    if len(y) < 2 or len(y_test) < 1:
        raise DataError(f"{where}: {len(y):,} training and {len(y_test):,} test images; give at least 2 and 1")
    return Dataset(spec_of(x, y, x_test, y_test, name, held_out, class_names, path), x, y, x_test, y_test)


def _read_idx_folder(folder: Path, name: str, class_names: tuple[str, ...] | None, path: str | None) -> Dataset:
    files = idx_files(folder)
    missing = [role for role in ROLES if role not in files]
    if missing:
        raise DataError(
            f"{folder}: no {' and no '.join(missing)} IDX file (looked for names ending in "
            "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz])"
        )
    x, y, x_test, y_test = (read_idx(files[role]) for role in ROLES)
    x_name, y_name, x_test_name, y_test_name = (files[role].name for role in ROLES)
    return _assemble(
        str(folder),
        name,
        x,
        y,
        x_test,
        y_test,
        class_names,
        path,
        names=(x_name, y_name, x_test_name, y_test_name),
    )


def _read_named(named: Named, data_dir: str | Path | None, fetch: bool, log: Log) -> Dataset:
    folder = folder_of(named.name, data_dir)
    if len(idx_files(folder)) < len(ROLES):
        if not fetch:
            raise DataError(
                f"{folder}: the {named.title} IDX files are not there; "
                "pass --data-dir (or set NAS_DATA_DIR) to the folder that holds them"
            )
        download(named, folder, log)
    published(named, folder)
    ds = _read_idx_folder(folder, named.name, named.class_names, None)
    if named.arrays_sha256 and ds.spec.sha256 != named.arrays_sha256:
        raise DataError(
            f"{folder}: these are not the published {named.title} images and labels (SHA-256 of the decoded arrays "
            f"{ds.spec.sha256[:12]}, published {named.arrays_sha256[:12]}); "
            "delete the files and run again to download them"
        )
    return ds


# The last dataset read in this process: a search checks its data, then its worker trains on it.
_CACHE: dict[tuple, Dataset] = {}


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
                f"--dataset {dataset}: give an .npz file (x, y and optionally x_test, y_test) "
                "or a folder of the four IDX files"
            )
    key = (dataset, str(place.resolve()), _stamp(place) if place.exists() else ())
    if key[2] and key in _CACHE:
        return _CACHE[key]
    if dataset in NAMED:
        loaded = _read_named(NAMED[dataset], data_dir, fetch, log)
    elif place.is_dir():
        loaded = _read_idx_folder(place, place.resolve().name, None, str(place.resolve()))
    else:
        x, y, x_test, y_test, class_names = read_npz(place)
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
                f"the study's data {spec.short()} was at {spec.path} where the study was made, "
                "and is not there on this machine; "
                "give --dataset PATH to where it is here (it is checked against the study's SHA-256)"
            )
        given = spec.path
    ds = read(given or spec.name, data_dir, log=log)
    if ds.spec != spec:
        raise DataError(
            f"--dataset {given or spec.name}: this is other data than the study's: "
            f"the study was made with {spec.short()}, "
            f"this is {ds.spec.short()}; give the study's data, or start a new study with --study-name"
        )
    return ds
