"""Seconds per training epoch of the seed network: nas's loop against the original notebook's
way (a DataLoader collating single images, eager PyTorch), in the same process.

    python3 benchmarks/epoch_speed.py [--device auto|cpu|cuda] [--epochs 2] [--data-dir DIR] [--engine auto|eager|graph]

Each figure is the fastest of --epochs timed epochs on the 50,000 training images, after one
untimed warm-up epoch (cuDNN autotuning, allocator, graph capture); the ratio is baseline / nas.
benchmarks/gpu_suite.py measures the rest of the GPU path.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from nas.arch import load_arch
from nas.data import load
from nas.model import build
from nas.settings import DEFAULT_SEED_ARCH as DEFAULT_SEED
from nas.train import TrainConfig, resolve_device, train


def baseline_epoch_seconds(data, device: torch.device, epochs: int) -> float:
    """The notebook's loop: CPU dataset, per-image indexing and collation, copy every batch."""
    torch.manual_seed(0)
    model = build(load_arch(DEFAULT_SEED)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(data.train.x.cpu(), data.train.y.cpu()), batch_size=128, shuffle=True)
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        model.train()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        loss.item()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def nas_epoch_seconds(data, epochs: int, batch_size: int, engine: str = "auto") -> tuple[float, float, str]:
    """Fastest timed epoch of nas.train (validation included), the final validation accuracy and the engine.
    The learning rate is the baseline's (0.01 per 128 images): a few epochs at the recipe's peak
    would diverge (nas.config.MIN_UPDATES), and speed does not depend on it."""
    cfg = TrainConfig(epochs=epochs + 1, batch_size=batch_size, lr=0.01)
    trained = train(load_arch(DEFAULT_SEED), data, cfg, engine=engine)
    return min(e.seconds for e in trained.history[1:]), trained.history[-1].val_acc, trained.engine


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-sizes", default="128,512")
    p.add_argument("--engine", default="auto", choices=["auto", "eager", "graph"])
    args = p.parse_args()
    device = resolve_device(args.device)
    data = load(args.data_dir, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; seed network, {len(data.train):,} training images")
    base = baseline_epoch_seconds(data, device, args.epochs)
    print(f"baseline (per-image DataLoader, eager, fp32, batch 128): {base:.2f} s/epoch")
    for bs in map(int, args.batch_sizes.split(",")):
        secs, acc, engine = nas_epoch_seconds(data, args.epochs, bs, args.engine)
        print(f"nas.train batch {bs:>4} ({engine}, device-resident data): "
              f"{secs:.2f} s/epoch incl. validation, {base / secs:.2f}x baseline (val acc after {args.epochs + 1} epochs {100 * acc:.2f} %)")


if __name__ == "__main__":
    main()
