"""Train the seed network with a training recipe and print its curve: the sweep behind the
TrainConfig defaults (README, "The large-batch recipe").

    python3 benchmarks/recipe.py batch_size=512 lr=0.1 augment=true [--arch seed_9274] [--seeds 0,1,2] [--test] [--save PREFIX] [--threads 1]

key=value pairs override the architecture's train table (any TrainConfig field). Each seed trains
separately, 20 epochs on the 50,000 training images, and is judged on the held-out 10,000
(nas.data.load's split); --test also reads the test set, for the recipe already chosen on
validation accuracy. The last line is one JSON record of the run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from nas.arch import load_arch
from nas.config import TrainConfig
from nas.data import load, load_test
from nas.settings import DEFAULT_SEED_ARCH
from nas.train import evaluate, resolve_device, train


def value(text: str):
    """A key=value override's value as TOML would read it (bool, int, float or string)."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="key=value, e.g. batch_size=512 lr=0.1")
    p.add_argument("--arch", default=DEFAULT_SEED_ARCH, help="architecture file or built-in name (default the seed network)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--test", action="store_true", help="also report test accuracy (only for a recipe chosen on validation)")
    p.add_argument("--save", default=None, help="save each seed's state_dict as SAVE_seed<N>.pt (to test later the recipe chosen)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    arch = load_arch(args.arch)
    overrides = dict(kv.split("=", 1) for kv in args.overrides)
    base = TrainConfig.from_dict({**arch.train, **{k: value(v) for k, v in overrides.items()}}, "command line")
    data = load(args.data_dir, device)
    test = load_test(args.data_dir, device) if args.test else None
    runs = []
    for seed in map(int, args.seeds.split(",")):
        cfg = TrainConfig(**{**base.to_dict(), "seed": seed})
        start = time.perf_counter()
        trained = train(arch, data, cfg, on_epoch=lambda e: print(
            f"seed {cfg.seed} epoch {e.epoch:>2}  lr {e.lr:.4f}  train loss {e.train_loss:.4f}  val acc {100 * e.val_acc:.2f} %  {e.seconds:.1f} s", flush=True))
        run = {"seed": seed, "val_acc": trained.history[-1].val_acc, "best_val_acc": max(e.val_acc for e in trained.history),
               "curve": [e.val_acc for e in trained.history], "seconds": time.perf_counter() - start, "engine": trained.engine}
        if args.save:
            torch.save(trained.model().state_dict(), f"{args.save}_seed{seed}.pt")
        if test is not None:
            run["test_acc"] = evaluate(trained.model(), test)[1]
        runs.append(run)
        print(f"seed {seed}: final val acc {100 * run['val_acc']:.2f} %" + (f", test acc {100 * run['test_acc']:.2f} %" if test is not None else ""), flush=True)
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    print(json.dumps({"arch": arch.name, "config": base.to_dict(), "val_acc_mean": mean("val_acc"), **({"test_acc_mean": mean("test_acc")} if test is not None else {}),
                      "runs": runs, "device": str(device), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
