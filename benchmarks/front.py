"""The measured front: search a budget at the CPU protocol, retrain the best at the full protocol,
export the best two with three seeds, and record every stage in benchmarks/results/front.csv.

    python3 benchmarks/front.py search  --budget 3000 --hours 3 [--sampler evolution] [--epochs 4 --train-size 20000]
    # 20 epochs on 50,000 images, 1 seed, validation
    python3 benchmarks/front.py confirm --budget 3000 [--top 5 | --under 3000,4000,5000]
    # nas export --seeds 3: all 60,000 images, tested once
    python3 benchmarks/front.py export  --budget 3000 [--best 2 | --trials 12,23]
    # a built-in network through the same export
    python3 benchmarks/front.py record  --arch rec_3762
    # front.csv and the README's table
    python3 benchmarks/front.py table
    # the study again from its committed JSON, to resume it
    python3 benchmarks/front.py restore --budget 3000

Searches run as `nas search` does (observe-mode pruning, so every curve is whole for the early-
stopping replay) on the mnist_tiny space, studies in studies/front-<budget>.sqlite3 with a JSON copy
in benchmarks/results/front/ (databases are not committed; the copy restores the study). Confirmed
and exported results are appended to benchmarks/results/front/*.jsonl as they finish, so every
stage resumes. Each winner is kept as a built-in architecture, nas/search_spaces/seeds/found_<params>.toml.
All training runs one thread a process; several processes share the cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "front"
SEEDS_DIR = ROOT / "nas" / "search_spaces" / "seeds"
FULL_EPOCHS, VAL = 20, 10_000


def study_name(budget: int) -> str:
    return f"front-{budget}"


def storage(budget: int) -> str:
    return f"sqlite:///{ROOT / 'studies' / f'{study_name(budget)}.sqlite3'}"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


# --- search -------------------------------------------------------------------------------------


def search(args: argparse.Namespace) -> None:
    cmd = [
        sys.executable,
        "-m",
        "nas",
        "search",
        "--space",
        "mnist_tiny",
        "--max-params",
        str(args.budget),
        "--max-epochs",
        str(args.epochs),
        "--train-size",
        str(args.train_size),
        "--val-size",
        str(VAL),
        "--target-accuracy",
        str(args.target),
        "--pruning",
        "observe",
        "--sampler",
        args.sampler,
        "--timeout",
        str(int(args.hours * 3600)),
        "--study-name",
        study_name(args.budget),
        "--storage",
        storage(args.budget),
        "--workers",
        str(args.workers),
        "--device",
        "cpu",
    ]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=False, env={**_env(), "OMP_NUM_THREADS": "1"})
    dump(args.budget)


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def dump(budget: int) -> Path:
    """The study as JSON (settings, every trial whole), small enough to commit."""
    import optuna

    study = optuna.load_study(study_name=study_name(budget), storage=storage(budget))
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "values": t.values,
            "params": t.params,
            "distributions": {k: optuna.distributions.distribution_to_json(d) for k, d in t.distributions.items()},
            "user_attrs": t.user_attrs,
            "system_attrs": t.system_attrs,
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        }
        for t in study.trials
    ]
    out = RESULTS / f"{study_name(budget)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "name": study.study_name,
                "directions": [d.name for d in study.directions],
                "user_attrs": study.user_attrs,
                "trials": trials,
            },
            indent=None,
        )
    )
    return out


def restore(args: argparse.Namespace) -> None:
    """Recreate the study from its JSON copy (finished trials; running ones are left out)."""
    import optuna

    data = json.loads((RESULTS / f"{study_name(args.budget)}.json").read_text())
    study = optuna.create_study(
        study_name=data["name"], storage=storage(args.budget), directions=[d.lower() for d in data["directions"]]
    )
    for k, v in data["user_attrs"].items():
        study.set_user_attr(k, v)
    for t in data["trials"]:
        if t["state"] not in ("COMPLETE", "PRUNED", "FAIL"):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState[t["state"]],
                values=t["values"],
                params=t["params"],
                distributions={k: optuna.distributions.json_to_distribution(d) for k, d in t["distributions"].items()},
                user_attrs=t["user_attrs"],
                system_attrs=t["system_attrs"],
            )
        )
    print(f"restored {len(study.trials)} trials into {storage(args.budget)}")


# --- confirm ------------------------------------------------------------------------------------


def top_trials(budget: int, n: int, under: list[int]) -> list:
    """The n most accurate complete trials within the budget or, with `under`, the most accurate
    one within each of those parameter counts (so a front is confirmed, not n variants of one network)."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=study_name(budget), storage=storage(budget))
    done = sorted(
        (
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("params", budget + 1) <= budget
        ),
        key=lambda t: -t.values[0],
    )
    if not under:
        return done[:n]
    picked = {
        next(t.number for t in done if t.user_attrs["params"] <= cap)
        for cap in under
        if any(t.user_attrs["params"] <= cap for t in done)
    }
    return [t for t in done if t.number in picked]


def full_protocol(job: dict) -> dict:
    """20 epochs on the 50,000 training images, one seed, judged on the 10,000 held-out ones."""
    import torch

    from nas.arch.spec import arch_from_dict
    from nas.data.tensors import load
    from nas.train.config import TrainConfig
    from nas.train.engine import train

    torch.set_num_threads(1)
    arch = arch_from_dict(json.loads(job["arch"]), job["name"])
    cfg = TrainConfig(**{**job["train_config"], "epochs": FULL_EPOCHS, "seed": 0})
    start = time.perf_counter()
    trained = train(arch, load(job.get("data_dir"), "cpu", val_size=VAL), cfg)
    return {
        **job,
        "full_val_acc": trained.history[-1].val_acc,
        "full_curve": [e.val_acc for e in trained.history],
        "full_seconds": time.perf_counter() - start,
        "full_config": cfg.to_dict(),
    }


def confirm(args: argparse.Namespace) -> None:
    log = RESULTS / f"{study_name(args.budget)}-confirm.jsonl"
    done = {r["trial"] for r in lines(log)}
    jobs = [
        {
            "budget": args.budget,
            "trial": t.number,
            "name": f"trial_{t.number}",
            "params": t.user_attrs["params"],
            "macs": t.user_attrs["macs"],
            "search_val_acc": t.values[0],
            "arch": t.user_attrs["arch"],
            "train_config": t.user_attrs["train_config"],
            "data_dir": args.data_dir,
        }
        for t in top_trials(args.budget, args.top, args.under)
        if t.number not in done
    ]
    with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(full_protocol, jobs):
            append(log, r)
            print(
                f"trial {r['trial']}: {r['params']:,} params, search {100 * r['search_val_acc']:.2f} %, "
                f"full protocol {100 * r['full_val_acc']:.2f} % val",
                flush=True,
            )


# --- export -------------------------------------------------------------------------------------


def keep_as_builtin(r: dict) -> str:
    """The confirmed network as a built-in architecture file, its full-protocol recipe as its train table."""
    from nas.arch.spec import arch_from_dict, arch_to_toml

    arch = arch_from_dict(json.loads(r["arch"]), "found")
    arch.name = f"found_{r['params']}"
    arch.train = {k: v for k, v in r["full_config"].items() if k != "seed"}
    path = SEEDS_DIR / f"{arch.name}.toml"
    header = (
        f"# Found by nas: study {study_name(r['budget'])} "
        f"(benchmarks/front.py, --max-params {r['budget']:,}), trial {r['trial']};\n"
        f"# {100 * r['search_val_acc']:.2f} % validation accuracy at the search protocol, "
        f"{100 * r['full_val_acc']:.2f} % after 20 epochs on\n"
        f"# 50,000 images (benchmarks/results/front.csv holds its test accuracy over 3 seeds).\n"
    )
    path.write_text(header + arch_to_toml(arch))
    return arch.name


def export_one(name: str, budget: int | None, data_dir: str | None, threads: int) -> dict:
    out = ROOT / "runs" / "front" / name
    cmd = [
        sys.executable,
        "-m",
        "nas",
        "export",
        "--arch",
        name,
        "--seeds",
        "3",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--force",
    ]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**_env(), "OMP_NUM_THREADS": str(threads)})
    m = json.loads((out / "metrics.json").read_text())
    return {
        "budget": budget,
        "name": name,
        "params": m["params"],
        "test_acc_mean": m["test_acc_mean"],
        "test_accs": [s["test_acc"] for s in m["seeds"]],
        "export_seconds": time.perf_counter() - start,
        "folder": str(out.relative_to(ROOT)),
        "onnx": m.get("onnx"),
    }


def export(args: argparse.Namespace) -> None:
    log = RESULTS / "exports.jsonl"
    confirmed = sorted(lines(RESULTS / f"{study_name(args.budget)}-confirm.jsonl"), key=lambda r: -r["full_val_acc"])
    confirmed = [r for r in confirmed if r["trial"] in args.trials] if args.trials else confirmed[: args.best]
    done = {r["name"] for r in lines(log)}
    for r in confirmed:
        name = keep_as_builtin(r)
        if name not in done:
            row = export_one(name, args.budget, args.data_dir, args.threads)
            append(
                log,
                {**row, "trial": r["trial"], "search_val_acc": r["search_val_acc"], "full_val_acc": r["full_val_acc"]},
            )
            print(
                f"{name}: test {100 * row['test_acc_mean']:.2f} % mean of 3 seeds "
                f"({', '.join(f'{100 * a:.2f}' for a in row['test_accs'])})",
                flush=True,
            )


def record(args: argparse.Namespace) -> None:
    log = RESULTS / "exports.jsonl"
    if args.arch not in {r["name"] for r in lines(log)}:
        append(log, export_one(args.arch, None, args.data_dir, args.threads))


# --- table --------------------------------------------------------------------------------------


def table(args: argparse.Namespace) -> None:
    from nas.arch.spec import costs, load_arch

    exports = {r["name"]: r for r in lines(RESULTS / "exports.jsonl")}
    rows = []
    for budget_file in sorted(RESULTS.glob("front-*.json")):
        budget = int(budget_file.stem.split("-")[1])
        study = json.loads(budget_file.read_text())
        trained = [t for t in study["trials"] if t["user_attrs"].get("train_seconds")]
        hours = sum(t["user_attrs"]["train_seconds"] for t in trained) / 3600
        for r in lines(RESULTS / f"front-{budget}-confirm.jsonl"):
            name = f"found_{r['params']}"
            e = exports.get(name)
            rows.append(
                {
                    "budget": budget,
                    "stage": "exported" if e else "confirmed",
                    "trial": r["trial"],
                    "params": r["params"],
                    "macs": r["macs"],
                    "search_val_acc": round(r["search_val_acc"], 4),
                    "full_val_acc": round(r["full_val_acc"], 4),
                    "test_acc_mean": round(e["test_acc_mean"], 4) if e else "",
                    "test_accs": " ".join(f"{a:.4f}" for a in e["test_accs"]) if e else "",
                    "trials": len(study["trials"]),
                    "trained_trials": len(trained),
                    "train_hours": round(hours, 2),
                    "arch_file": f"nas/search_spaces/seeds/{name}.toml" if e else "",
                }
            )
    for name, e in exports.items():
        if e.get("budget") is None:  # a built-in network exported for comparison
            c = costs(load_arch(name))
            rows.append(
                {
                    "budget": "",
                    "stage": "record",
                    "trial": "",
                    "params": c.params,
                    "macs": c.macs,
                    "search_val_acc": "",
                    "full_val_acc": "",
                    "test_acc_mean": round(e["test_acc_mean"], 4),
                    "test_accs": " ".join(f"{a:.4f}" for a in e["test_accs"]),
                    "trials": "",
                    "trained_trials": "",
                    "train_hours": "",
                    "arch_file": f"nas/search_spaces/seeds/{name}.toml",
                }
            )
    out = ROOT / "benchmarks" / "results" / "front.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["budget"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows)")
    for r in rows:
        print(r)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["search", "confirm", "export", "record", "table", "restore"])
    p.add_argument("--budget", type=int, default=3000)
    p.add_argument("--hours", type=float, default=3.0)
    p.add_argument("--sampler", default="evolution")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-size", type=int, default=20_000)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=5)
    p.add_argument(
        "--under",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[],
        help="confirm the best within each of these parameter counts",
    )
    p.add_argument("--best", type=int, default=2)
    p.add_argument(
        "--trials",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[],
        help="export these confirmed trials instead of the --best",
    )
    p.add_argument("--arch", default="rec_3762")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    {"search": search, "confirm": confirm, "export": export, "record": record, "table": table, "restore": restore}[
        args.stage
    ](args)


if __name__ == "__main__":
    main()
