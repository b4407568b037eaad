"""CPU seconds per 10,000 training images at small batches, one thread: what the recipe study's
batch 32 costs against batch 128 for each network (issue 24: within 1.5x per image, or find where
the step's overhead goes).

    python3 benchmarks/small_batch.py [--arch rec_3762 found_2576 rec_7918 seed_9274] [--batch-sizes 32,64,128]
        [--rounds 3]

Each round trains one epoch of 10,000 augmented images (no validation) at each batch size in turn,
timed with the process's own CPU clock (time.process_time), so other work on the machine does not
count; the table gives the median of the rounds and the ratio to the largest batch. One untimed
warm-up epoch comes first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from nas.arch.spec import load_arch
from nas.data.tensors import Data, load
from nas.train.config import TrainConfig
from nas.train.engine import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["rec_3762", "found_2576", "rec_7918", "seed_9274"])
    p.add_argument("--batch-sizes", default="32,64,128")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load(args.data_dir, "cpu", train_size=args.images)
    data = Data(data.train, replace(data.val, x=data.val.x[:0], y=data.val.y[:0]))  # no validation: the step alone
    batches = [int(b) for b in args.batch_sizes.split(",")]
    print(
        f"torch {torch.__version__}, 1 thread, {args.images:,} augmented images an epoch, "
        f"CPU seconds per 10,000 images (median of {args.rounds})"
    )
    print(
        f"{'network':>12}  "
        + "  ".join(f"{'batch ' + str(b):>9}" for b in batches)
        + "  "
        + "  ".join(f"{f'{b}/{batches[-1]}':>7}" for b in batches[:-1])
    )
    for name in args.arch:
        arch = load_arch(name)
        cfg = TrainConfig.from_dict({**arch.train, "epochs": 1, "augment": True}, name)
        train(arch, data, TrainConfig(**{**cfg.to_dict(), "batch_size": batches[-1]}))  # warm-up
        times: dict[int, list[float]] = {b: [] for b in batches}
        for _ in range(args.rounds):
            for b in batches:
                start = time.process_time()
                train(arch, data, TrainConfig(**{**cfg.to_dict(), "batch_size": b}))
                times[b].append((time.process_time() - start) * 10_000 / args.images)
        med = {b: statistics.median(t) for b, t in times.items()}
        print(
            f"{name:>12}  "
            + "  ".join(f"{med[b]:>8.2f}s" for b in batches)
            + "  "
            + "  ".join(f"{med[b] / med[batches[-1]]:>6.2f}x" for b in batches[:-1]),
            flush=True,
        )


if __name__ == "__main__":
    main()
