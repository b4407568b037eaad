"""What nas computes from a dataset's arrays: the SHA-256 that says which data a study was made
with (so every machine can check its copy), the per-channel normalisation the networks see,
and the brightness of the images' edges, which tells nas predict when a picture is the other
way round from the training images. Torch-free (numpy), like nas.data.datasets.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where arrays are read, so that settings and --help stay quick
    import numpy as np


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
