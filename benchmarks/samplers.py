"""Which sampler finds good small networks soonest? Every sampler of nas.search.samplers searches the same
budget at the same cheap protocol, from several sampler seeds, with the same enqueued built-ins.

    python3 benchmarks/samplers.py --out benchmarks/results/samplers [--seeds 5] [--trained 60] [--workers 2]

Each search is a real nas study (the mnist_tiny space, --max-params 5000, pruning off) trained until
it has --trained trials that trained (trials pruned before training, over the budget or invalid,
cost nothing and are not counted). For each search, after a third, two thirds and all of its trained
trials: the hypervolume of (validation accuracy, parameters) of its complete trials, with the
reference point (90 % accuracy, the budget) and parameters scaled by the budget, and the best
validation accuracy. Per sampler: the mean over seeds with a 95 % bootstrap interval; one sampler is
called better than another only where their intervals do not overlap. Then each sampler's most
accurate network is retrained with two other training seeds at the same protocol, so a lucky draw is
told from a good one. Searches run in their own processes, one thread each; studies live in
OUT/studies (SQLite; an interrupted run resumes) and every finished search is summarised in
OUT/searches.jsonl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import time
from pathlib import Path

REF_ACC = 0.90


def settings_for(sampler: str, seed: int, args: argparse.Namespace):
    from nas.space.spaces import read_space
    from nas.study.settings import StudySettings

    return StudySettings(
        max_params=args.max_params,
        max_epochs=args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        target_accuracy=0.98,
        pruning="off",
        sampler=sampler,
        seed=seed,
        space=read_space("mnist_tiny"),
    )


def trained(study) -> list:
    """Trials that trained, in the order they were numbered."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("train_seconds") and "duplicate_of" not in t.user_attrs
    ]


def run_search(job: tuple[str, int, argparse.Namespace]) -> dict:
    import optuna
    import torch

    from nas.data.tensors import load
    from nas.search.ladder import sampler_seed
    from nas.search.objective import Objective
    from nas.search.samplers import make_sampler
    from nas.study import storage as st

    sampler, seed, args = job
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = settings_for(sampler, seed, args)
    url = f"sqlite:///{args.out / 'studies' / f'{sampler}-{seed}.sqlite3'}"
    study = st.open_study("bench", url, settings)
    study.sampler = make_sampler(sampler, sampler_seed(seed, 0), settings)
    data = load(args.data_dir, "cpu", val_size=settings.val_size, train_size=settings.train_size)
    objective = Objective(settings, data, torch.device("cpu"), log=lambda msg: None)

    def enough(study, _trial) -> None:
        if len(trained(study)) >= args.trained:
            study.stop()

    start = time.perf_counter()
    if len(trained(study)) < args.trained:
        study.optimize(objective, callbacks=[enough], catch=(Exception,))
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.user_attrs.get("params"),
            "val_acc": t.values[0] if t.values else None,
            "train_seconds": t.user_attrs.get("train_seconds", 0.0),
            "seed_arch": t.user_attrs.get("seed_arch"),
            "arch": t.user_attrs.get("arch"),
            "train_config": t.user_attrs.get("train_config"),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return {"sampler": sampler, "seed": seed, "trials": rows, "seconds": time.perf_counter() - start}


def hypervolume(points: list[tuple[float, int]], budget: int) -> float:
    """The front's dominated area from (REF_ACC, budget), parameters as a share of the budget."""
    from nas.study import levels

    return levels.hypervolume(points, REF_ACC, budget) / budget


def checkpoints(trained: int) -> tuple[int, ...]:
    """Where each search is measured: after a third, two thirds and all of its trained trials."""
    return tuple(round(trained * k / 3) for k in (1, 2, 3))


def measures(search: dict, budget: int, at: tuple[int, ...]) -> dict[str, float]:
    ran = [t for t in search["trials"] if t["train_seconds"] and t["val_acc"] is not None]
    out = {}
    for n in at:
        done = [(t["val_acc"], t["params"]) for t in ran[:n] if t["state"] == "COMPLETE"]
        out[f"hv@{n}"] = hypervolume(done, budget)
        out[f"best@{n}"] = max((a for a, _ in done), default=float("nan"))
    return out


def bootstrap(values: list[float], rounds: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile bootstrap interval of the mean."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(rounds))
    return statistics.fmean(values), means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1]


def retrain_best(job: tuple[str, dict, argparse.Namespace]) -> dict:
    """The most accurate network of a sampler, trained again with the two training seeds after its own."""
    import torch

    from nas.arch.spec import arch_from_dict
    from nas.data.tensors import load
    from nas.train.config import TrainConfig
    from nas.train.engine import train

    sampler, best, args = job
    torch.set_num_threads(1)
    arch = arch_from_dict(json.loads(best["arch"]), "best")
    data = load(args.data_dir, "cpu", val_size=args.val_size, train_size=args.train_size)
    accs = [best["val_acc"]]
    for step in (1, 2):  # a trial's own seed is the study's seed plus its number: retraining with seed 1 repeated one
        cfg = TrainConfig(**{**best["train_config"], "seed": best["train_config"]["seed"] + step})
        accs.append(train(arch, data, cfg).history[-1].val_acc)
    return {"sampler": sampler, "params": best["params"], "val_accs": accs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/samplers"))
    p.add_argument("--samplers", default="tpe,nsga2,gp,random,evolution")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--trained", type=int, default=60)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=5_000)
    p.add_argument("--val-size", type=int, default=5_000)
    p.add_argument("--max-params", type=int, default=5_000)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    (args.out / "studies").mkdir(parents=True, exist_ok=True)
    log = args.out / "searches.jsonl"
    done = {(s["sampler"], s["seed"]) for s in map(json.loads, log.read_text().splitlines())} if log.exists() else set()
    samplers = args.samplers.split(",")
    todo = [(s, seed, args) for seed in range(args.seeds) for s in samplers if (s, seed) not in done]
    ctx = mp.get_context("spawn")
    at = checkpoints(args.trained)
    if todo:
        print(f"{len(todo)} searches to run ({len(done)} done), {args.workers} at a time, one thread each", flush=True)
        with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
            for result in pool.imap_unordered(run_search, todo):
                with log.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                m = measures(result, args.max_params, at)
                print(
                    f"{result['sampler']} seed {result['seed']}: {len(result['trials'])} trials, "
                    f"hv@{at[-1]} {m[f'hv@{at[-1]}']:.4f}, best@{at[-1]} {100 * m[f'best@{at[-1]}']:.2f} %, "
                    f"{result['seconds']:.0f} s",
                    flush=True,
                )
    searches = [s for s in map(json.loads, log.read_text().splitlines()) if s["sampler"] in samplers]
    lines = [
        "| sampler | searches | "
        + " | ".join(f"hypervolume @{n}" for n in at)
        + " | "
        + " | ".join(f"best val acc @{n}" for n in at)
        + f" | trials drawn for {at[-1]} trained |",
        "|---" * (3 + 2 * len(at)) + "|",
    ]
    summary = {}
    for s in samplers:
        mine = [x for x in searches if x["sampler"] == s]
        if not mine:
            continue
        ms = [measures(x, args.max_params, at) for x in mine]
        summary[s] = {k: bootstrap([m[k] for m in ms]) for k in ms[0]}
        cells = [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for m, lo, hi in (summary[s][f"hv@{n}"] for n in at)]
        cells += [
            f"{100 * m:.2f} [{100 * lo:.2f}, {100 * hi:.2f}] %" for m, lo, hi in (summary[s][f"best@{n}"] for n in at)
        ]
        drawn = statistics.fmean(len(x["trials"]) for x in mine)
        lines.append(f"| {s} | {len(mine)} | " + " | ".join(cells) + f" | {drawn:.0f} |")
    best_file = args.out / "retrained.jsonl"
    retrained = (
        {r["sampler"]: r for r in map(json.loads, best_file.read_text().splitlines())} if best_file.exists() else {}
    )
    jobs = []
    for s in summary:
        if s in retrained:
            continue
        candidates = [
            t for x in searches if x["sampler"] == s for t in x["trials"] if t["state"] == "COMPLETE" and t["arch"]
        ]
        jobs.append((s, max(candidates, key=lambda t: t["val_acc"]), args))
    if jobs:
        with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
            for r in pool.imap_unordered(retrain_best, jobs):
                retrained[r["sampler"]] = r
                with best_file.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    lines += [
        "",
        "| sampler | its most accurate network | val acc found | with the next two training seeds | mean of 3 |",
        "|---|---|---|---|---|",
    ]
    for s, r in retrained.items():
        a = r["val_accs"]
        lines.append(
            f"| {s} | {r['params']:,} params | {100 * a[0]:.2f} % | {100 * a[1]:.2f} %, {100 * a[2]:.2f} % | "
            f"{100 * statistics.fmean(a):.2f} % |"
        )
    text = "\n".join(lines)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
