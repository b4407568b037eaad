"""Seconds per epoch on 50,000 MNIST training images with validation on 10,000: nas.train.engine against
the plain loop people write (a DataLoader collating single images, eager PyTorch, batch 128, the
same validation), alternating in one process.

    python3 benchmarks/epoch_speed.py [--device cpu|cuda] [--rounds 3] [--arch seed_9274 ...]
        [--batch-sizes 128,1024] [--threads N]

Each round times one epoch of the baseline, then one of nas.train.engine at each batch size, so a machine
whose speed drifts slows both alike; the table gives the median of the rounds and the ratio
baseline / nas. One untimed warm-up round comes first. Both loops validate on the same 10,000
images every epoch, so they do equal work (nas.train.engine's training also shuffles and cuts batches on
the device; with --augment it also augments, the baseline does not).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from nas.arch.model import build
from nas.arch.spec import load_arch
from nas.data.tensors import load
from nas.train.engine import TrainConfig, resolve_device, train


def cpu_name() -> str:
    """The CPU's model name, as the README's tables state it."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def baseline_epoch(arch, data, device: torch.device) -> float:
    """The plain loop: CPU dataset, per-image indexing and collation, a copy per batch, then the
    validation split in batches of 1,000 under no_grad."""
    torch.manual_seed(0)
    model = build(arch).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(data.train.x.cpu(), data.train.y.cpu()), batch_size=128, shuffle=True)
    start = time.perf_counter()
    model.train()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data.val), 1000):
            correct += (model(data.val.x[i : i + 1000]).argmax(1) == data.val.y[i : i + 1000]).sum().item()
    return time.perf_counter() - start


def nas_epoch(arch, data, batch_size: int, augment: bool) -> tuple[float, str]:
    """One epoch of nas.train.engine, its validation included (the learning rate is the baseline's:
    speed does not depend on it, and one epoch at the recipe's peak would diverge)."""
    trained = train(arch, data, TrainConfig(epochs=1, batch_size=batch_size, lr=0.01, augment=augment))
    return trained.history[0].seconds, trained.engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--arch", action="append", help="architecture file or built-in name (repeatable; default seed_9274)")
    p.add_argument("--batch-sizes", default="128,1024")
    p.add_argument("--augment", action="store_true", help="nas.train.engine augments (the baseline never does)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load(args.data_dir, device)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(
        f"{where}; torch {torch.__version__}; {len(data.train):,} training and {len(data.val):,} validation images; "
        f"median of {args.rounds} alternating rounds after a warm-up",
        flush=True,
    )
    print("| architecture | loop | s/epoch (min-max) | vs baseline |\n|---|---|---|---|", flush=True)
    for name in args.arch or ["seed_9274"]:
        arch = load_arch(name)
        times: dict[str, list[float]] = {"baseline": [], **{f"nas {b}": [] for b in sizes}}
        engine = ""
        for r in range(args.rounds + 1):
            base = baseline_epoch(arch, data, device)
            ours = [nas_epoch(arch, data, b, args.augment) for b in sizes]
            if r:  # round 0 warms up
                times["baseline"].append(base)
                for b, (secs, eng) in zip(sizes, ours):
                    times[f"nas {b}"].append(secs)
                    # the table's label names the engine of the last run
                    engine = eng
        base = statistics.median(times["baseline"])
        for loop, values in times.items():
            label = (
                "baseline: per-image DataLoader, eager, batch 128"
                if loop == "baseline"
                else f"nas.train.engine, batch {loop.split()[1]} ({engine})"
            )
            med = statistics.median(values)
            print(
                f"| {arch.name} | {label} | {med:.2f} ({min(values):.2f}-{max(values):.2f}) | {base / med:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
