"""The files data comes in, read as numpy arrays and checked: IDX files (raw or gzip, MNIST's
format), a folder's four IDX files found by role, an .npz of x, y, x_test, y_test and
class_names, and the image and label arrays in them. Each mistake is refused with what to do
about it, before anything trains. Torch-free, like nas.data.datasets, which assembles a Dataset
from these arrays.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from nas.errors import DataError

if TYPE_CHECKING:  # numpy is imported where arrays are read, so that settings and --help stay quick
    import numpy as np

MAX_CHANNELS, MAX_SIDE, MAX_CLASSES = 4, 4096, 4096  # grey, grey + alpha, RGB, RGBA; nas.arch.spec's limits
NPZ_KEYS = ("x", "y", "x_test", "y_test", "class_names")
_IDX_TYPES = {0x08: "uint8"}  # IDX type code -> numpy dtype
# File name endings of the four IDX files (EMNIST prefixes its own, e.g.
# emnist-letters-train-images-idx3-ubyte.gz).
ROLES = {
    "train images": r"train-images-idx[34]-ubyte",
    "train labels": r"train-labels-idx1-ubyte",
    "test images": r"(t10k|test)-images-idx[34]-ubyte",
    "test labels": r"(t10k|test)-labels-idx1-ubyte",
}


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
            f"{path}: header says {'x'.join(map(str, dims))} = {count} bytes, file has {len(body)}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(bytearray(body), dtype=np.uint8).reshape(dims)  # writable: torch takes it over without a copy


def idx_files(folder: Path) -> dict[str, Path]:
    """The IDX files of a folder by role (those found; .gz preferred to an uncompressed copy).
    Several candidates for one role are refused: the folder must hold one dataset."""
    found: dict[str, Path] = {}
    names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    for role, pattern in ROLES.items():
        matches = [n for n in names if re.search(rf"(^|[-_.]){pattern}(\.gz)?$", n)]
        stems = {n.removesuffix(".gz") for n in matches}
        if len(stems) > 1:
            raise DataError(
                f"{folder}: holds several {role} files ({', '.join(sorted(stems))}); "
                "give a folder with one dataset's four IDX files"
            )
        if matches:
            found[role] = folder / max(matches, key=lambda n: n.endswith(".gz"))
    return found


def images_chw(x: np.ndarray, where: str) -> np.ndarray:
    """Images [N, H, W] or [N, H, W, C] as [N, C, H, W] uint8."""
    import numpy as np

    if x.dtype != np.uint8:
        raise DataError(
            f"{where}: images must be uint8 pixels 0-255 (got {x.dtype}); convert them, "
            "e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1]"
        )
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] > MAX_CHANNELS and 1 <= x.shape[1] <= MAX_CHANNELS:
            raise DataError(
                f"{where}: images are {list(x.shape)}, channels first; "
                "nas reads [N, H, W, C] (channels last): np.moveaxis(x, 1, -1)"
            )
        if not 1 <= x.shape[-1] <= MAX_CHANNELS:
            raise DataError(
                f"{where}: images [N, H, W, C] have {x.shape[-1]} channels; "
                f"1 to {MAX_CHANNELS} (grey, grey + alpha, RGB, RGBA)"
            )
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{where}: images must be [N, H, W] or [N, H, W, C] (got {x.ndim} dimensions, {list(x.shape)})")
    if not all(1 <= s <= MAX_SIDE for s in x.shape[2:]):
        raise DataError(f"{where}: images are {x.shape[2]}x{x.shape[3]}; each side must be 1 to {MAX_SIDE:,} pixels")
    return np.ascontiguousarray(x)


def labels_int64(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Labels for n images as int64, each a class 0 to MAX_CLASSES - 1."""
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


def read_npz(
    path: Path,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, tuple[str, ...] | None]:
    """(x, y, x_test, y_test, class_names) of an .npz, as stored; x_test and y_test come together."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.files)
            unknown = sorted(set(keys) - set(NPZ_KEYS))
            if unknown:
                raise DataError(
                    f"{path}: unknown array {unknown[0]!r}; an .npz for nas holds x and y, "
                    "optionally x_test and y_test, and class_names"
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
