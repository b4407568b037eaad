"""The recipe study: train a network with training recipes and keep each run's curve.

    python3 benchmarks/recipe.py batch_size=32 lr=0.4 augment=true [--arch rec_3762] [--seeds 0,1,2] [--test]
    python3 benchmarks/recipe.py --plan benchmarks/recipe_plan.toml   # as many processes as cores

key=value pairs override the architecture's train table (any TrainConfig field). Each seed trains
separately, 20 epochs on the 50,000 training images, and is judged on the held-out 10,000
(nas.data.tensors.load's split); --test also reads the test set, for a recipe already chosen on
validation accuracy. The last line is one JSON record of the run.

With --plan, the candidates of a plan file ([[run]] tables: name, arch, seeds, train) are trained
one (candidate, seed) at a time, and each finished run is appended as one JSON line to
benchmarks/results/recipe/<arch>.jsonl; a run already there is skipped, so the study can be
stopped at any moment and resumed from where it stood. Several processes share a plan: each claims
the next pending run (a file under <results>/.running naming its process), so none idles while
another has a queue; a claim whose process has died is taken over.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
import tomllib
from pathlib import Path

import torch

from nas.arch.spec import load_arch
from nas.data.tensors import load, load_test
from nas.study.settings import DEFAULT_SEED_ARCH
from nas.train.config import TrainConfig
from nas.train.engine import Diverged, evaluate, resolve_device, train

RESULTS = Path(__file__).parent / "results" / "recipe"


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


def run_one(arch, cfg: TrainConfig, data, test=None) -> dict:
    """Train one seed of one recipe; its curve, time and (with `test`) test accuracy. A run whose
    loss diverges is a result too: its val_acc is None and `diverged` says where."""
    start, curve = time.perf_counter(), []

    def epoch_done(e) -> None:
        curve.append(e.val_acc)
        print(
            f"{arch.name} seed {cfg.seed} epoch {e.epoch:>2}  lr {e.lr:.4f}  train loss {e.train_loss:.4f}  "
            f"val acc {100 * e.val_acc:.2f} %  {e.seconds:.1f} s",
            flush=True,
        )

    try:
        trained = train(arch, data, cfg, on_epoch=epoch_done)
    except Diverged as e:
        return {
            "seed": cfg.seed,
            "val_acc": None,
            "diverged": str(e),
            "curve": curve,
            "seconds": time.perf_counter() - start,
        }
    run = {
        "seed": cfg.seed,
        "val_acc": trained.history[-1].val_acc,
        "best_val_acc": max(e.val_acc for e in trained.history),
        "curve": curve,
        "seconds": time.perf_counter() - start,
        "engine": trained.engine,
    }
    if test is not None:
        run["test_acc"] = evaluate(trained.model(), test)[1]
    return run


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    )
    return out.stdout.strip() or "unknown"


def results_of(results: Path) -> list[dict]:
    """Every finished run so far, from all the architectures' files."""
    return [json.loads(line) for path in sorted(results.glob("*.jsonl")) for line in path.read_text().splitlines()]


def confirmations(plan: dict, done: list[dict]) -> list[tuple[dict, int]]:
    """Once every screening run of an architecture is done: its `top` best candidates by
    validation accuracy of seed 0 (the plan's and earlier ones, with the config each ran with)
    get the plan's confirmation seeds, so each is judged on a mean of 1 + len(seeds) runs. The
    candidates named in `always` (the network's recipe before the study, a cheap contender) are
    among them whatever their rank, so the before and after are means of as many runs."""
    table = plan.get("confirm", {})
    out = []
    for arch in dict.fromkeys(c["arch"] for c in plan["run"]):
        # [confirm] holds the rule; [confirm.<arch>] may change it for one network
        rule = {**{k: v for k, v in table.items() if not isinstance(v, dict)}, **table.get(arch, {})}
        screened = {r["name"]: r for r in done if r["arch"] == arch and r["seed"] == 0}
        if any(c["name"] not in screened for c in plan["run"] if c["arch"] == arch):
            continue  # still screening: the ranking is not known yet
        ranked = sorted(screened.values(), key=lambda r: -(r["val_acc"] or 0))  # a diverged run last
        named = [r for r in ranked if r["name"] in rule.get("always", [])]
        best = (named + [r for r in ranked if r not in named])[: max(rule.get("top", 0), len(named))]
        out += [
            ({"arch": arch, "name": r["name"], "config": r["config"]}, s) for r in best for s in rule.get("seeds", [])
        ]
    return out


def alive(claim_file: Path) -> bool:
    """Whether the process named in a claim file still runs (on this machine)."""
    try:
        os.kill(int(claim_file.read_text()), 0)
        return True
    except (ProcessLookupError, ValueError, FileNotFoundError):
        return False


def claim(running: Path, key: tuple) -> Path | None:
    """The run's claim file if this process got it: created exclusively, or taken over from a
    process that no longer runs (a study stopped and restarted on this machine)."""
    path = running / "__".join(map(str, key))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if alive(path):
                return None
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    return None


def study(plan_path: Path, data_dir: str | None, device: torch.device, results: Path = RESULTS) -> None:
    """Run the plan's pending (candidate, seed) pairs, appending each result as it finishes: the
    screening runs, then the confirmations. Each process claims the next pending run; one with
    nothing to claim waits while others run what decides the confirmations. Pending confirmations
    run before further screening."""
    plan = tomllib.loads(plan_path.read_text())
    running = results / ".running"
    running.mkdir(parents=True, exist_ok=True)
    data = load(data_dir, device)

    while True:
        done = results_of(results)
        finished = {(r["arch"], r["name"], r["seed"]) for r in done}
        screening = [
            (c, s) for c in plan["run"] for s in c.get("seeds", [0]) if (c["arch"], c["name"], s) not in finished
        ]
        # confirmations first: a network whose screening is done is resolved before the next is screened
        todo = [(c, s) for c, s in confirmations(plan, done) + screening if (c["arch"], c["name"], s) not in finished]
        mine = next(((c, s, path) for c, s in todo if (path := claim(running, (c["arch"], c["name"], s)))), None)
        if mine is None:
            if not screening and not any(alive(f) for f in running.iterdir()):
                print(f"plan {plan_path}: nothing left to run", flush=True)
                return
            time.sleep(60)  # other processes' runs decide the confirmations
            continue
        c, seed, path = mine
        arch = load_arch(c["arch"])
        table = c.get("config") or {**arch.train, **c.get("train", {})}
        cfg = TrainConfig.from_dict({**table, "seed": seed}, f"{plan_path}: {c['name']}")
        run = run_one(arch, cfg, data)
        record = {
            "arch": arch.name,
            "name": c["name"],
            **run,
            "config": cfg.to_dict(),
            "torch": torch.__version__,
            "commit": commit(),
            "threads": torch.get_num_threads(),
            "device": str(device),
        }
        with open(results / f"{arch.name}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        path.unlink()
        print(
            f"{arch.name} {c['name']} seed {seed}: "
            + (run.get("diverged") or f"val {100 * run['val_acc']:.2f} %")
            + f"  {run['seconds']:.0f} s",
            flush=True,
        )


def by_candidate(results: Path) -> dict[tuple[str, str], list[dict]]:
    """The runs of each (network, candidate), diverged ones included."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in results_of(results):
        by.setdefault((r["arch"], r["name"]), []).append(r)
    return by


def table(results: Path) -> None:
    """Each candidate's validation accuracy: seeds, mean, range and a 95 % interval of the mean
    (Student's t), best mean first."""
    rows = []
    for (arch, name), runs in by_candidate(results).items():
        accs = [100 * r["val_acc"] for r in runs if r["val_acc"] is not None]
        if len(accs) < len(runs):
            name += f" [{len(runs) - len(accs)} of {len(runs)} diverged]"
        if not accs:
            rows.append((arch, 0.0, name, 0, *[float("nan")] * 4, statistics.mean(r["seconds"] for r in runs) / 60))
            continue
        mean = statistics.mean(accs)
        half = t95(len(accs) - 1) * statistics.stdev(accs) / len(accs) ** 0.5 if len(accs) > 1 else float("nan")
        minutes = statistics.mean(r["seconds"] for r in runs) / 60
        rows.append((arch, -mean, name, len(accs), mean, min(accs), max(accs), half, minutes))
    print(f"{'network':>10}  {'candidate':<42} {'n':>2}  {'mean':>6}  {'range':>13}  {'95 % CI':>8}  {'min/run':>7}")
    for arch, _, name, n, mean, lo, hi, half, minutes in sorted(rows):
        print(f"{arch:>10}  {name:<42} {n:>2}  {mean:6.2f}  {lo:6.2f}-{hi:6.2f}  +-{half:5.2f}  {minutes:7.1f}")


def against_tables(results: Path, plan: dict) -> None:
    """Each confirmed candidate (3 seeds or more) against its network's table before the study
    (the first of `always`): the difference of means with a 95 % interval (two-sample t, one
    spread for both), then each candidate pooled over the networks that ran it (their differences
    weighted by precision, degrees of freedom summed): if networks share a recipe's effect,
    together they resolve a smaller one than a single network can."""
    # diverged runs are left out here: the table above counts them
    by = {
        key: [100 * r["val_acc"] for r in runs if r["val_acc"] is not None]
        for key, runs in by_candidate(results).items()
    }
    print(f"\nagainst each network's table before the study (confirmed candidates, {'val acc points':>14}):")
    pooled: dict[str, list[tuple[float, float, int]]] = {}
    for arch, rule in plan.get("confirm", {}).items():
        if not isinstance(rule, dict) or not rule.get("always") or len(by.get((arch, rule["always"][0]), [])) < 3:
            continue
        base = by[(arch, rule["always"][0])]
        for (a, name), accs in sorted(by.items()):
            if a != arch or name == rule["always"][0] or len(accs) < 3:
                continue
            df = len(accs) + len(base) - 2
            var = ((len(accs) - 1) * statistics.variance(accs) + (len(base) - 1) * statistics.variance(base)) / df
            diff, se = statistics.mean(accs) - statistics.mean(base), (var * (1 / len(accs) + 1 / len(base))) ** 0.5
            pooled.setdefault(name, []).append((diff, se, df))
            print(f"{arch:>10}  {name:<42} {diff:+6.2f} +-{t95(df) * se:5.2f}  (n {len(accs)} vs {len(base)})")
    for name, rows in sorted(pooled.items()):
        if len(rows) < 2:
            continue
        weights = [1 / se**2 for _, se, _ in rows]
        diff = sum(w * d for w, (d, _, _) in zip(weights, rows)) / sum(weights)
        df = sum(d for _, _, d in rows)
        print(f"{'pooled':>10}  {name:<42} {diff:+6.2f} +-{t95(df) / sum(weights) ** 0.5:5.2f}  ({len(rows)} networks)")


# Student's t, two-sided 95 %, by degrees of freedom (a df between two keys takes the lower: wider)
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 10: 2.23, 15: 2.13, 20: 2.09, 30: 2.04}


def t95(df: int) -> float:
    return T95[max(k for k in T95 if k <= df)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="key=value, e.g. batch_size=512 lr=0.1")
    p.add_argument(
        "--arch", default=DEFAULT_SEED_ARCH, help="architecture file or built-in name (default the seed network)"
    )
    p.add_argument("--seeds", default="0")
    p.add_argument(
        "--test", action="store_true", help="also report test accuracy (only for a recipe chosen on validation)"
    )
    p.add_argument(
        "--plan", type=Path, help="a plan file of candidates to run, results appended under benchmarks/results/recipe/"
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="with --plan: the folder of results (default benchmarks/results/recipe)",
    )
    p.add_argument("--table", action="store_true", help="print each candidate's mean validation accuracy and stop")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.table:
        table(args.results)
        if args.plan:
            against_tables(args.results, tomllib.loads(args.plan.read_text()))
        return
    if args.plan:
        study(args.plan, args.data_dir, device, args.results)
        return
    arch = load_arch(args.arch)
    overrides = dict(kv.split("=", 1) for kv in args.overrides)
    base = TrainConfig.from_dict({**arch.train, **{k: value(v) for k, v in overrides.items()}}, "command line")
    data = load(args.data_dir, device)
    test = load_test(args.data_dir, device) if args.test else None
    runs = [
        run_one(arch, TrainConfig(**{**base.to_dict(), "seed": seed}), data, test)
        for seed in map(int, args.seeds.split(","))
    ]
    mean = lambda key: sum(r[key] for r in runs) / len(runs)  # noqa: E731
    print(
        json.dumps(
            {
                "arch": arch.name,
                "config": base.to_dict(),
                "val_acc_mean": mean("val_acc"),
                **({"test_acc_mean": mean("test_acc")} if test is not None else {}),
                "runs": runs,
                "device": str(device),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
