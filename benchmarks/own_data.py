"""The data of the README's "Your own data" measurements: two .npz files made from MNIST, as a user
would make theirs, and the seed network for the colour one.

    python3 benchmarks/own_data.py OUT_DIR [--train 5000] [--test 1000] [--data-dir DIR]

OUT_DIR/mnist.npz holds the first --train training and --test test images of MNIST as they are
(x [N, 28, 28] uint8, y, x_test, y_test). OUT_DIR/rgb.npz holds the same digits padded to 32x32 and
coloured: a random dark background and a random bright ink per image (x [N, 32, 32, 3]), with
class_names, so the colour says nothing about the class and the shape says it all.
OUT_DIR/seed_rgb.toml is seed_9274 taking 3x32x32 images, and OUT_DIR/digit_rgb.png one coloured
test digit for `nas predict`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from nas.arch.spec import arch_to_toml, load_arch
from nas.data.datasets import read

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def colour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey digits [N, 28, 28] as [N, 32, 32, 3]: ink blended over a background, per image."""
    ink = rng.integers(150, 256, (len(x), 1, 1, 3)).astype(np.float32)
    paper = rng.integers(0, 60, (len(x), 1, 1, 3)).astype(np.float32)
    alpha = np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None].astype(np.float32) / 255
    return np.rint(paper * (1 - alpha) + ink * alpha).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=5000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--data-dir", help="MNIST's folder (default: as nas finds it)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    m = read("mnist", args.data_dir)
    x, y = m.x_train[: args.train, 0], m.y_train[: args.train]
    x_test, y_test = m.x_test[: args.test, 0], m.y_test[: args.test]
    np.savez_compressed(args.out / "mnist.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    rng = np.random.default_rng(0)
    rgb_test = colour(x_test, rng)
    np.savez_compressed(
        args.out / "rgb.npz", x=colour(x, rng), y=y, x_test=rgb_test, y_test=y_test, class_names=np.array(NAMES)
    )
    (args.out / "seed_rgb.toml").write_text(
        arch_to_toml(replace(load_arch("seed_9274"), name="seed_rgb", input=(3, 32, 32)))
    )
    from PIL import Image

    Image.fromarray(rgb_test[0]).save(args.out / "digit_rgb.png")
    print(
        f"wrote {args.out}/mnist.npz, rgb.npz ({len(y):,} training and {len(y_test):,} test images each), "
        f"seed_rgb.toml and digit_rgb.png (a {NAMES[y_test[0]]})"
    )


if __name__ == "__main__":
    main()
