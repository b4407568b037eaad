"""Choose the CPU search protocol: how well do short, cheap trainings rank architectures the way the
full protocol (20 epochs on 50,000 images, judged on the 10,000 held-out validation images) does?

    python3 benchmarks/protocol.py --out benchmarks/results/protocol [--workers 2]

About 12 architectures of 1,500 to 5,000 parameters (the public record rec_3762, two scaled-down
seed networks, and draws from the mnist_tiny space with the training settings drawn with them) are
trained once at the full protocol, three of them with a second seed (the seed-to-seed spread), and
once at each candidate fidelity (epochs x training images, each architecture's batch size held
fixed). Every job appends one JSON line to OUT/runs.jsonl as it finishes, so an interrupted run
resumes where it stopped; the table is computed from that file: Spearman rank correlation of each
fidelity's final validation accuracy with the full protocol's, whether its top 5 holds the full
protocol's top 3, and its CPU seconds per trial. The cheapest fidelity with rho >= 0.8 that keeps
the top 3 is the search protocol. Workers run one thread each (several two-thread processes on two
cores slow each other many times over); CPU seconds are the figure to trust on a shared machine.
The test set is never read.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from dataclasses import replace
from pathlib import Path

FULL = (20, 50_000)  # epochs, training images
FIDELITIES = {
    "A": (4, 20_000),
    "B": (8, 10_000),
    "C": (8, 20_000),
}  # each >= 300 updates at batch 256, so no batch is halved
REPEATS = 3  # architectures trained at the full protocol with a second seed
DRAWS = 9  # architectures drawn from the space
SPACE = "mnist_tiny"
LOW, HIGH = 1_500, 5_000


def seed_variant(name: str, channels: list[int], last: int) -> dict:
    """The seed network's shape with other channel counts (its own recipe)."""
    a, b, c, d, e, f = channels
    return {
        "name": name,
        "layers": [
            {"conv": a},
            {"conv": b},
            {"conv": c},
            {"pool": "max"},
            {"conv": d},
            {"conv": e},
            {"conv": f},
            {"pool": "max"},
            {"conv": last, "padding": 0},
        ],
        "head": {"type": "conv_gap", "kernel": 3, "padding": 0},
        "train": {"batch_size": 128, "lr": 0.1, "augment": True},
    }


def architectures() -> list[dict]:
    """The architectures to calibrate on, as TOML-like dicts with their train tables."""
    from nas.arch.spec import arch_from_dict, arch_to_dict, costs, load_arch
    from nas.errors import SpecError
    from nas.space.spaces import load_space, sample

    out = [
        arch_to_dict(load_arch("rec_3762")) | {"train": load_arch("rec_3762").train},
        seed_variant("seed_x0.6", [3, 3, 5, 7, 7, 10], 12),
        seed_variant("seed_x0.7", [3, 3, 6, 8, 8, 12], 14),
    ]
    space, rng = load_space(SPACE), random.Random(2026)

    class Draw:  # uniform over each choice, one value per parameter name (like a trial)
        def __init__(self):
            self.drawn = {}

        def suggest_categorical(self, name, choices):
            return self.drawn.setdefault(name, rng.choice(list(choices)))

        def suggest_int(self, name, low, high):
            return self.drawn.setdefault(name, rng.randint(low, high))

        def suggest_float(self, name, low, high, *, log=False):
            import math

            return self.drawn.setdefault(name, math.exp(rng.uniform(math.log(low), math.log(high))))

    while len(out) < 3 + DRAWS:
        arch, cfg = sample(space, Draw())
        try:
            params = costs(arch).params
        except SpecError:
            continue
        if LOW <= params <= HIGH:
            arch.name = f"draw_{len(out) - 2}"
            out.append(
                arch_to_dict(arch) | {"train": {k: v for k, v in cfg.to_dict().items() if k not in ("epochs", "seed")}}
            )
    for d in out:
        arch_from_dict(d, d["name"])  # every one is a valid architecture
    return out


def jobs(archs: list[dict]) -> list[dict]:
    """Full-protocol runs first (the longest), then the fidelities."""
    out = [
        {"id": f"{a['name']}/full/0", "arch": a, "epochs": FULL[0], "images": FULL[1], "seed": 0, "fidelity": "full"}
        for a in archs
    ]
    repeat = [archs[0], archs[3], archs[4]][:REPEATS]
    out += [
        {"id": f"{a['name']}/full/1", "arch": a, "epochs": FULL[0], "images": FULL[1], "seed": 1, "fidelity": "full"}
        for a in repeat
    ]
    out += [
        {"id": f"{a['name']}/{f}/0", "arch": a, "epochs": e, "images": n, "seed": 0, "fidelity": f}
        for f, (e, n) in FIDELITIES.items()
        for a in archs
    ]
    return out


def run_job(job: dict, data_dir: str | None) -> dict:
    import torch

    from nas.arch.spec import arch_from_dict, param_count
    from nas.data.tensors import load
    from nas.train.config import TrainConfig
    from nas.train.engine import train

    torch.set_num_threads(1)
    arch = arch_from_dict(job["arch"], job["arch"]["name"])
    data = load(data_dir, "cpu", val_size=10_000, train_size=min(job["images"], 50_000))
    cfg = replace(TrainConfig.from_dict(arch.train, arch.name), epochs=job["epochs"], seed=job["seed"])
    fitted = cfg.fitted(len(data.train))
    if fitted.batch_size != cfg.batch_size:
        raise SystemExit(
            f"{job['id']}: batch {cfg.batch_size} would be halved at this fidelity; the protocol holds it fixed"
        )
    cpu, wall = time.process_time(), time.perf_counter()
    trained = train(arch, data, cfg)
    return {
        **{k: v for k, v in job.items() if k != "arch"},
        "name": arch.name,
        "params": param_count(arch),
        "train": cfg.to_dict(),
        "curve": [e.val_acc for e in trained.history],
        "val_acc": trained.history[-1].val_acc,
        "cpu_seconds": time.process_time() - cpu,
        "wall_seconds": time.perf_counter() - wall,
    }


def _worker(args: tuple) -> dict:
    job, data_dir = args
    return run_job(job, data_dir)


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):  # ties share their mean rank
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def table(runs: list[dict]) -> list[str]:
    full = {r["name"]: r for r in runs if r["fidelity"] == "full" and r["seed"] == 0}
    names = sorted(full, key=lambda n: -full[n]["val_acc"])
    lines = [
        "| architecture | params | full protocol val acc (seed 0) | seed 1 | "
        + " | ".join(f"{f}: {e} ep x {n:,}" for f, (e, n) in FIDELITIES.items())
        + " |",
        "|---" * (4 + len(FIDELITIES)) + "|",
    ]
    by = {(r["name"], r["fidelity"], r["seed"]): r for r in runs}
    for n in names:
        again = by.get((n, "full", 1))
        cells = [f"{100 * by[(n, f, 0)]['val_acc']:.2f} %" if (n, f, 0) in by else "" for f in FIDELITIES]
        second = f"{100 * again['val_acc']:.2f} %" if again else ""
        lines.append(
            f"| {n} | {full[n]['params']:,} | {100 * full[n]['val_acc']:.2f} % | {second} | " + " | ".join(cells) + " |"
        )
    spread = [abs(by[(n, "full", 0)]["val_acc"] - by[(n, "full", 1)]["val_acc"]) for n in names if (n, "full", 1) in by]
    lines += [
        "",
        f"full protocol: {len(full)} architectures, "
        f"{sum(r['cpu_seconds'] for r in full.values()) / max(1, len(full)):.0f} CPU s a trial (one thread)"
        + (f"; seed-to-seed differences {', '.join(f'{100 * s:.2f}' for s in spread)} points" if spread else ""),
        "",
        "| fidelity | epochs x images | Spearman rho with the full protocol | top 5 holds the full top 3 | "
        "CPU s a trial (one thread) | wall s a trial |",
        "|---|---|---|---|---|---|",
    ]
    top3 = set(names[:3])
    for f, (e, n) in FIDELITIES.items():
        got = [by[(m, f, 0)] for m in names if (m, f, 0) in by]
        if len(got) < len(names):
            lines.append(f"| {f} | {e} x {n:,} | ({len(got)} of {len(names)} done) | | | |")
            continue
        rho = spearman([full[m]["val_acc"] for m in names], [r["val_acc"] for r in got])
        top5 = {r["name"] for r in sorted(got, key=lambda r: -r["val_acc"])[:5]}
        lines.append(
            f"| {f} | {e} x {n:,} | {rho:.2f} | "
            f"{'yes' if top3 <= top5 else 'no: misses ' + ', '.join(sorted(top3 - top5))} | "
            f"{sum(r['cpu_seconds'] for r in got) / len(got):.0f} | "
            f"{sum(r['wall_seconds'] for r in got) / len(got):.0f} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/protocol"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--table-only", action="store_true", help="print the table from what has finished, train nothing")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    done = {json.loads(line)["id"] for line in log.read_text().splitlines()} if log.exists() else set()
    fixed = args.out / "architectures.json"  # drawn once: a resumed run (or a changed space) keeps the same networks
    archs = json.loads(fixed.read_text()) if fixed.exists() else architectures()
    fixed.write_text(json.dumps(archs, indent=1))
    todo = [j for j in jobs(archs) if j["id"] not in done]
    if not args.table_only and todo:
        print(f"{len(todo)} runs to do ({len(done)} done), {args.workers} workers of one thread", flush=True)
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            for result in pool.imap_unordered(_worker, [(j, args.data_dir) for j in todo]):
                with log.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                print(
                    f"{result['id']}: {result['params']:,} params, val acc {100 * result['val_acc']:.2f} %, "
                    f"{result['cpu_seconds']:.0f} CPU s, {result['wall_seconds']:.0f} s",
                    flush=True,
                )
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    text = "\n".join(table(runs)) if runs else "no runs yet"
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
