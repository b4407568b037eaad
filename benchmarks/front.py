"""The measured front: a ladder search at a budget (`nas search`, screened at 4 epochs x 20,000
images, the best promoted to 20 x 50,000), the best two exported with three seeds (`nas export`),
every stage recorded in benchmarks/results/front.csv.

    python3 benchmarks/front.py search  --budget 3000 --hours 3 [--sampler evolution] [--workers 2]
    python3 benchmarks/front.py search  --budget 3000 --objective accuracy   # front-3000-accuracy
    # nas export --seeds 3 of the best top-level trials: all 60,000 images, tested once
    python3 benchmarks/front.py export  --budget 3000 [--best 2 | --trials 12,23]
    python3 benchmarks/front.py export  --study default-20000     # any ladder study there
    # a built-in network through the same export
    python3 benchmarks/front.py record  --arch rec_3762
    # front.csv and the README's table
    python3 benchmarks/front.py table

The study is a journal file, benchmarks/results/studies/front-<budget>.log: one text file that
holds the whole study (both levels), committed as it grows; `search` again on a fresh clone
resumes it where it stopped, its --hours summed over runs. Exported results are appended to
benchmarks/results/front/exports.jsonl as they finish. Each winner is kept as a built-in
architecture, nas/search_spaces/seeds/found_<params>.toml. Earlier searches (front-5000.json and
its -confirm.jsonl: searched at level A with `--pruning observe`, confirmed by this script) stay
in the table as they were. All training runs one thread a process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # hints only: each stage imports what it uses when it runs
    import optuna
    from optuna.trial import FrozenTrial

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "front"
STUDIES = ROOT / "benchmarks" / "results" / "studies"
SEEDS_DIR = ROOT / "nas" / "search_spaces" / "seeds"


def study_name(budget: int, objective: str = "pareto") -> str:
    """front-<budget>, and front-<budget>-accuracy for a search of accuracy alone under the budget."""
    return f"front-{budget}" + ("" if objective == "pareto" else f"-{objective}")


def journal(name: str) -> Path:
    """A study's journal file under benchmarks/results/studies/, where every study here lives."""
    return STUDIES / f"{name}.log"


def storage(name: str) -> str:
    return f"journal:///{journal(name)}"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def nas(*args: str, threads: int = 1) -> None:
    cmd = [sys.executable, "-m", "nas", *args]
    print(" ".join(cmd), flush=True)
    try:
        code = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
    except KeyboardInterrupt:  # a terminal's Ctrl-C reaches both: nas has said where it stopped
        code = 130
    if code:  # nas has said why in its own words (an error, or where it stopped and how to resume)
        sys.exit(code)


def search(args: argparse.Namespace) -> None:
    """`nas search` on the mnist_tiny space with its default ladder; resumes the committed study."""
    nas(
        "search",
        "--space",
        "mnist_tiny",
        "--max-params",
        str(args.budget),
        "--sampler",
        args.sampler,
        # every curve whole: at a budget below what reaches the target, the mission's rule would prune
        # every top-level trial near its end (found_2576 at epoch 19 of 20), leaving no front to export
        "--pruning",
        "observe",
        "--objective",
        args.objective,
        "--hours",
        str(args.hours),
        "--study-name",
        study_name(args.budget, args.objective),
        "--storage",
        storage(study_name(args.budget, args.objective)),
        "--workers",
        str(args.workers),
        "--device",
        "cpu",
        *(["--data-dir", args.data_dir] if args.data_dir else []),
    )


def best_trials(study: optuna.Study, n: int, numbers: list[int]) -> list[FrozenTrial]:
    """The trials named, or the n best drawn top-level trials: by Pareto rank of (validation
    accuracy, parameters) among the complete draws, then accuracy (by accuracy alone in a study of
    objective accuracy). Built-ins are left out: they are no find, and `record` exports them."""
    from optuna.trial import TrialState

    from nas.study.analytics import study_settings
    from nas.study.levels import pareto_ranks

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if numbers:
        return [t for t in done if t.number in numbers]
    drawn = [t for t in done if "seed_arch" not in t.user_attrs]
    pareto = study_settings(study).objective == "pareto"
    ranks = pareto_ranks([(t.values[0], t.user_attrs["params"]) for t in drawn]) if pareto else [0] * len(drawn)
    order = sorted(range(len(drawn)), key=lambda i: (ranks[i], -drawn[i].values[0]))
    return [drawn[i] for i in order[:n]]


# --- export -------------------------------------------------------------------------------------


def found_name(params: int) -> str:
    return f"found_{params}"


def keep_as_builtin(study: str, budget: int, t: FrozenTrial) -> None:
    """A top-level trial as a built-in architecture file, the recipe it trained with as its train table."""
    from nas.arch.spec import arch_from_dict, arch_to_toml

    arch = arch_from_dict(json.loads(t.user_attrs["arch"]), "found")
    arch.name = found_name(t.user_attrs["params"])
    arch.train = {k: v for k, v in t.user_attrs["train_config"].items() if k != "seed"}
    header = (
        f"# Found by nas: study {study} (benchmarks/results/studies/, --max-params {budget:,}), top-level "
        f"trial {t.number};\n# {100 * t.values[0]:.2f} % validation accuracy after 20 epochs on 50,000 images "
        "(benchmarks/results/front.csv holds\n# its test accuracy over 3 seeds).\n"
    )
    (SEEDS_DIR / f"{arch.name}.toml").write_text(header + arch_to_toml(arch))


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
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    m = json.loads((out / "metrics.json").read_text())
    return {
        "budget": budget,
        "name": name,
        "train_config": recipe_of(m["train_config"]),
        "params": m["params"],
        "test_acc_mean": m["test_acc_mean"],
        "test_accs": [s["test_acc"] for s in m["seeds"]],
        "export_seconds": time.perf_counter() - start,
        "folder": str(out.relative_to(ROOT)),
        "onnx": m.get("onnx"),
    }


def export(args: argparse.Namespace) -> None:
    from nas.study.analytics import study_settings
    from nas.study.storage import load_study

    log = RESULTS / "exports.jsonl"
    done = {r["name"] for r in lines(log)}
    study = args.study or study_name(args.budget, args.objective)
    top = load_study(study, storage(study))
    budget = study_settings(top).max_params
    for t in best_trials(top, args.best, args.trials):
        name = found_name(t.user_attrs["params"])
        # exported already, or a trial of the same size before it in this run: its file is not made again
        if name in done:
            print(f"trial {t.number}: {name} exported already; skipped", flush=True)
            continue
        done.add(name)
        keep_as_builtin(study, budget, t)
        row = export_one(name, budget, args.data_dir, args.threads)
        append(
            log,
            {
                **row,
                "study": study,
                "trial": t.number,
                "full_val_acc": t.values[0],
                "parent": t.user_attrs.get("parent"),
            },
        )
        print(
            f"{name}: test {100 * row['test_acc_mean']:.2f} % mean of 3 seeds "
            f"({', '.join(f'{100 * a:.2f}' for a in row['test_accs'])})",
            flush=True,
        )


def recipe_of(config: dict) -> dict:
    """A train config without its seed: what makes two exports of one network the same recipe."""
    return {k: v for k, v in config.items() if k != "seed"}


def recipe_label(config: dict) -> str:
    """The recipe in a few words, peak learning rate stated at the batch that ran."""
    c = config
    words = [f"batch {c['batch_size']}", f"{c['optimizer']} peak {c['lr'] * c['batch_size'] / 128:.3g}"]
    words += [
        f"wd {c['weight_decay']:g}",
        f"{c['schedule']}" + (f" warm-up {c['warmup']:g}" if c["schedule"] == "onecycle" else ""),
    ]
    if c["augment"]:
        words.append(f"rot {c['rotate']:g} / tr {c['translate']:g} / sc {c['scale']:g}")
    words += [
        w
        for w, on in (
            (f"ema {c.get('ema_half_life', 0):g}", c.get("ema_half_life")),
            ("bn/bias undecayed", not c.get("decay_norm_bias", True)),
        )
        if on
    ]
    return ", ".join(words)


def record(args: argparse.Namespace) -> None:
    """A built-in network through the export, once per recipe: its train table as it stands."""
    from nas.arch.spec import load_arch
    from nas.train.config import TrainConfig

    log = RESULTS / "exports.jsonl"
    recipe = recipe_of(TrainConfig.from_dict(load_arch(args.arch).train, args.arch).to_dict())
    if not any(r["name"] == args.arch and r.get("train_config") == recipe for r in lines(log)):
        append(log, export_one(args.arch, None, args.data_dir, args.threads))


# --- table --------------------------------------------------------------------------------------


def table(args: argparse.Namespace) -> None:
    from nas.arch.spec import costs, load_arch

    every = lines(RESULTS / "exports.jsonl")
    exports = {r["name"]: r for r in every}  # a searched network's latest export
    rows = []
    for budget_file in sorted(RESULTS.glob("front-*.json")):
        budget = int(budget_file.stem.split("-")[1])
        study = json.loads(budget_file.read_text())
        trained = [t for t in study["trials"] if t["user_attrs"].get("train_seconds")]
        hours = sum(t["user_attrs"]["train_seconds"] for t in trained) / 3600
        for r in lines(RESULTS / f"front-{budget}-confirm.jsonl"):
            name = found_name(r["params"])
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
                    "recipe": recipe_label(e["train_config"]) if e and "train_config" in e else "",
                }
            )
    for name in sorted({e["study"] for e in exports.values() if "parent" in e}):
        rows += ladder_rows(name, exports)
    for e in every:
        if e.get("budget") is None:  # a built-in network exported for comparison, once per recipe
            name = e["name"]
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
                    "recipe": recipe_label(e["train_config"]) if "train_config" in e else "",
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


def ladder_rows(name: str, exports: dict[str, dict]) -> list[dict]:
    """The exported winners of a ladder study, with what the search spent (both levels, every run)."""
    from nas.study import levels
    from nas.study.analytics import study_settings
    from nas.study.storage import load_study

    top = load_study(name, storage(name))
    settings = study_settings(top)
    budget = settings.max_params
    studies = [s for s in levels.lower_studies(top, settings.ladder) if s]
    trials = [t for s in (*studies, top) for t in s.get_trials(deepcopy=False)]
    trained = [t for t in trials if t.user_attrs.get("train_seconds")]
    rows = []
    for e in exports.values():
        if e.get("study") != name or "parent" not in e:
            continue
        t = top.trials[e["trial"]]
        rows.append(
            {
                "budget": budget,
                "stage": "exported",
                "trial": t.number,
                "params": t.user_attrs["params"],
                "macs": t.user_attrs["macs"],
                "search_val_acc": round(studies[0].trials[e["parent"]].values[0], 4) if studies else "",
                "full_val_acc": round(t.values[0], 4),
                "test_acc_mean": round(e["test_acc_mean"], 4),
                "test_accs": " ".join(f"{a:.4f}" for a in e["test_accs"]),
                "trials": len(trials),
                "trained_trials": len(trained),
                "train_hours": round(sum(t.user_attrs["train_seconds"] for t in trained) / 3600, 2),
                # a find equal to a smaller built-in within the noise is not kept as one (every study
                # within its size would retrain it): its architecture stays in the study's journal
                "arch_file": f"nas/search_spaces/seeds/{e['name']}.toml"
                if (SEEDS_DIR / f"{e['name']}.toml").exists()
                else f"not kept; {STUDIES.name}/{name}.log, trial {t.number}",
                "recipe": recipe_label(e["train_config"]) if "train_config" in e else "",
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["search", "export", "record", "table"])
    p.add_argument("--budget", type=int, default=3000)
    p.add_argument("--hours", type=float, default=3.0, help="hours of searching for the study, over every run")
    p.add_argument("--sampler", default="evolution")
    p.add_argument(
        "--objective",
        choices=["pareto", "accuracy"],
        default="pareto",
        help="search: nas search --objective (accuracy: the study front-<budget>-accuracy)",
    )
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--best", type=int, default=2)
    p.add_argument(
        "--trials",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[],
        help="export these top-level trials instead of the --best",
    )
    p.add_argument(
        "--study",
        default=None,
        help="export: the study under benchmarks/results/studies/ (default front-<budget>; its budget is its own)",
    )
    p.add_argument("--arch", default="rec_3762")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    {"search": search, "export": export, "record": record, "table": table}[args.stage](args)


if __name__ == "__main__":
    main()
