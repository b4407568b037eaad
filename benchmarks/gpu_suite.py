"""Everything issue 7 asks to measure on one GPU, in one command of under 7 minutes (8 with the CUDA tests).

    source .gpu-env; python3 benchmarks/gpu_suite.py [--data-dir .data/mnist] [--out runs/gpu_suite.json]
        [--only NAME,...] [--budget 400]
    # every section on 1,024 images for 2 epochs, on the CPU too: checks the suite itself
    python3 benchmarks/gpu_suite.py --smoke

Run from the project checkout; it needs only torch, optuna and the project's own dependencies.
The sections, in order of what matters most should the budget run out: correctness (the CUDA
graph engine against the eager one over the first steps, and a packed K-seed network against K
separately trained ones, on an average-pool network with TF32 off so that only float rounding
separates them); the recommended recipe's 20-epoch trial seconds and test accuracy for 3 seeds;
the cost of K seeds per trial; trials per minute for 1, 2, 4 and 8 concurrent trials in one
process (and concurrent trials with dropout); `nas search` itself (1 trial at a time and the
default), with the convergence rules replayed on its 20-epoch curves and its SQLite files kept
next to --out; speed per epoch (baseline, eager, graph at batch 128/512/1024, bf16 against
fp32); trial seconds of the 8 fixed architectures in benchmarks/archs/ (from 4 epochs, with cuDNN
autotuning on and off).

Every section's time cap is estimated from its work before it starts (printed with the estimate):
training runs x set-up seconds plus epochs x seconds per epoch, assumed until the recipe and speed
sections have measured them; no section runs past what is left of --budget. A section that runs
out of time reports what it has ("cut"); the correctness section cut counts as a failure. A
section that breaks prints one line "FAIL <section>: <reason>" and the others still run. Every
figure is written to --out as soon as it is measured; at the end a markdown table is printed. Exit
code 1 when a section failed, 2 when the suite cannot start (no GPU, no data), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's nas, installed or not
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import nas.train.engine  # noqa: E402
from nas.arch.spec import Arch, Pool, load_arch, param_count  # noqa: E402
from nas.data.tensors import Data, Split, load, load_test  # noqa: E402
from nas.search.placement import DEFAULT_TRIALS_PER_GPU  # noqa: E402
from nas.study.settings import DEFAULT_SEED_ARCH  # noqa: E402
from nas.train.config import TrainConfig  # noqa: E402
from nas.train.engine import Trained, evaluate, train  # noqa: E402

# In order of what matters most should the budget run out: correctness, then issue 7's goals.
SECTIONS = ("checks", "recipe", "kseeds", "concurrent", "search", "speed", "archs")
# seconds the suite may take, start-up and data included: with the CUDA tests after it, 8 minutes of the GPU machine
BUDGET = 400.0
SEARCH_SECONDS = 18  # --timeout of each `nas search` run in the search section
ARCH_EPOCHS = 4  # epochs each fixed architecture trains in the archs section
DROPOUT_ARCH = "fixed_5_9354"  # the fixed architecture (dropout after every conv) the concurrent section also runs
ARCHS = ROOT / "benchmarks" / "archs"


@dataclass
class Costs:
    """What the caps are estimated from: seconds a unit of work takes, assumed (for an H100/H200)
    until measured here; `measured` names those replaced by this run's own figures."""

    start: float = 3.0  # a training run's set-up: network, warm-up, capture, first autotuning and validation
    epoch: float = (
        0.25  # an epoch of the seed network on 50,000 images at batch 1024, graph engine, validation included
    )
    eager_epoch: float = 2.5  # an eager epoch at batch 128 on 50,000 images, the slowest speed row
    baseline: float = 25.0  # an epoch of the per-image DataLoader baseline on 50,000 images
    process: float = 20.0  # a `nas search` process's start: imports, data, CUDA
    measured: set[str] = field(default_factory=set)

    def trial(self, epochs: int = 20, images: int = 50_000) -> float:
        return self.start + epochs * self.epoch * images / 50_000

    def learn(self, **figures: float) -> None:
        for name, value in figures.items():
            if value > 0:
                setattr(self, name, value)
                self.measured.add(name)

    def says(self) -> str:
        return ", ".join(
            f"{k} {getattr(self, k):.2f} s ({'measured' if k in self.measured else 'assumed'})"
            for k in ("start", "epoch", "eager_epoch", "baseline", "process")
        )


def estimate(name: str, c: Costs, train_images: int) -> tuple[float, str]:
    """Seconds a section's work should take, and how that was reckoned."""
    e = Smoke.epochs if Smoke.on else 20
    small = 4 * 512 if not Smoke.on else 4 * 128
    trial, share = c.trial(e, train_images), train_images / 50_000
    if name == "checks":
        return (
            8 * c.start + 17 * c.epoch * small / 50_000 + 10,
            f"8 short runs (each a set-up, 17 epochs of {small:,} images in all) + 10 s of CUDA start-up",
        )
    if name == "speed":
        return (
            (2 * c.baseline + 2 * (4 * c.epoch + 3 * c.eager_epoch)) * share + 7 * c.start,
            "2 baseline epochs (one a warm-up) + 7 runs of 2 epochs "
            "(4 graph ~1 epoch, 3 eager up to an eager batch-128 epoch)",
        )
    if name == "recipe":
        return 3 * trial, f"3 trials of {e} epochs"
    if name == "kseeds":
        return (2 + 4) * trial, "K=3 and K=8 at up to 2x and 4x one trial"
    if name == "archs":
        n = 2 if Smoke.on else 8
        return 2 * n * c.trial(
            min(ARCH_EPOCHS, e), train_images
        ), f"{n} architectures x {min(ARCH_EPOCHS, e)} epochs, cuDNN autotuning on and off"
    if name == "concurrent":
        if Smoke.on:
            return 2 * trial + 2 * c.trial(
                min(ARCH_EPOCHS, e), train_images
            ), "2 trials at once as if they did not overlap + 2 dropout trials"
        return (2 + 4 + 8) * trial + 4 * c.trial(
            ARCH_EPOCHS, train_images
        ), "2, 4 and 8 trials at once as if they did not overlap + 4 dropout trials"
    return 2 * (
        c.process + SEARCH_SECONDS + trial
    ), f"2 nas search processes: start-up + {SEARCH_SECONDS} s + the last trial"


class Smoke:
    """--smoke: tiny data and 2 epochs, so that the suite's own code can be run anywhere."""

    on = False
    epochs = 2
    train_size, val_size = 1024, 512


def fit(cfg: TrainConfig) -> TrainConfig:
    return replace(cfg, epochs=min(cfg.epochs, Smoke.epochs)) if Smoke.on else cfg


def graph_engine(device: torch.device) -> str:
    return "graph" if device.type == "cuda" else "eager"


class OutOfTime(Exception):
    """A section reached its cap; it reports what it measured so far."""


class Section:
    """One section's clock, figures and table rows; every figure is saved as soon as it is recorded."""

    def __init__(self, name: str, cap: float, save: Callable[[], None]):
        self.name, self.cap, self.start, self.save = name, cap, time.perf_counter(), save
        self.figures: dict[str, Any] = {}
        self.rows: list[tuple[str, str]] = []
        self.failures: list[str] = []

    def left(self) -> float:
        return self.cap - (time.perf_counter() - self.start)

    def check_time(self, _epoch: Any = None) -> None:
        """An on_epoch callback: stops a training run once the section is out of time."""
        if self.left() <= 0:
            raise OutOfTime

    def row(self, what: str, figure: str, key: str | None = None, value: Any = None) -> None:
        self.rows.append((what, figure))
        if key is not None:
            self.figures[key] = value
        print(f"  {what}: {figure}", flush=True)
        self.save()

    def add(self, key: str, value: Any) -> None:
        """One more iteration's figures under `key` (a list), saved at once."""
        self.figures.setdefault(key, []).append(value)
        self.save()

    def expect(self, ok: bool, what: str) -> None:
        """A correctness check; a failed check fails the section (the rest still runs)."""
        self.row(what, "ok" if ok else "FAILED")
        if not ok:
            self.failures.append(what)

    def goal(self, ok: bool, what: str) -> None:
        """A goal of issue 7: judged like a check, except in a smoke run, whose figures mean nothing."""
        if Smoke.on:
            self.row(what, "not judged (smoke run)")
        else:
            self.expect(ok, what)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_train(sec: Section, arch: Arch, data: Data, cfg: TrainConfig, **kw: Any) -> tuple[Trained, float]:
    """train() with the section's clock as on_epoch; wall seconds from the call (building the
    network, capture and autotuning included) to the last validation. Each run starts with no
    failed capture counted: restarting after repeated failures is the search worker's policy."""
    sync()
    nas.train.engine._GRAPHS.failures = 0
    start = time.perf_counter()
    if kw.get("engine") == "graph":
        kw["engine"] = graph_engine(data.train.x.device)
    trained = train(arch, data, fit(cfg), sec.check_time, **kw)
    sync()
    return trained, time.perf_counter() - start


def subset(data: Data, n_train: int, n_val: int) -> Data:
    return Data(Split(data.train.x[:n_train], data.train.y[:n_train]), Split(data.val.x[:n_val], data.val.y[:n_val]))


def seed_arch() -> tuple[Arch, TrainConfig]:
    arch = load_arch(DEFAULT_SEED_ARCH)
    return arch, TrainConfig.from_dict(arch.train, DEFAULT_SEED_ARCH)


def avg_pool(arch: Arch) -> Arch:
    """The network with average pools: no max-pool ties for two kernels to break differently."""
    for layer in arch.layers:
        if isinstance(layer, Pool):
            layer.kind = "avg"
    return arch


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# --- sections -----------------------------------------------------------------------------------


def checks(sec: Section, data: Data, test: Split) -> None:
    """Graph vs eager losses over the first 12 steps; packed K=3 vs 3 separate runs; bf16 capture.
    An average-pool seed network with TF32 off, so that only float rounding separates the runs."""
    arch, recipe = avg_pool(seed_arch()[0]), seed_arch()[1]
    small = subset(data, 4 * 512 if not Smoke.on else 4 * 128, 2000)
    cfg = replace(
        recipe, epochs=3, batch_size=512 if not Smoke.on else 128, lr=0.01
    )  # a low lr: float differences are not amplified, a wrong step would be
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        graph, _ = timed_train(sec, arch, small, cfg, engine="graph")
        eager, _ = timed_train(sec, arch, small, cfg, engine="eager")
        sec.row("graph engine", graph.engine, "graph_engine", graph.engine)
        if not Smoke.on:
            sec.expect(graph.engine.startswith("cuda graph"), "the seed network's step captures in a CUDA graph")
        worst = max(
            max(rel(g.train_loss, e.train_loss), rel(g.val_loss, e.val_loss))
            for g, e in zip(graph.history, eager.history)
        )
        sec.row(
            "graph vs eager, 12 steps: largest relative loss difference", f"{worst:.2e}", "graph_vs_eager_rel", worst
        )
        sec.expect(worst < 2e-3, "graph and eager losses agree (< 2e-3 relative)")
        packed, _ = timed_train(sec, arch, small, cfg, seeds=3)
        diffs = []
        for k in range(3):
            alone, _ = timed_train(sec, arch, small, replace(cfg, seed=cfg.seed + k))
            diffs.append(rel(evaluate(packed.model(k), small.val)[0], evaluate(alone.model(), small.val)[0]))
            sec.add("packed_vs_separate", {"seed": cfg.seed + k, "rel": diffs[-1]})
        sec.row(
            "packed K=3 vs 3 separate runs: largest relative val-loss difference",
            f"{max(diffs):.2e}",
            "packed_vs_separate_rel",
            max(diffs),
        )
        sec.expect(max(diffs) < 2e-3, "each packed copy matches its separate run (< 2e-3 relative)")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for k in (1, 3):
        bf16, _ = timed_train(
            sec, seed_arch()[0], subset(data, 2 * 512, 1000), replace(cfg, epochs=1), seeds=k, precision="bf16"
        )
        sec.row(f"bf16 engine, K={k}", bf16.engine, f"bf16_engine_k{k}", bf16.engine)


def speed(sec: Section, data: Data, test: Split, costs: Costs) -> None:
    """Seconds per epoch (validation included) of the seed network: baseline, eager, graph."""
    from epoch_speed import baseline_epoch_seconds

    arch, recipe = seed_arch()
    base = baseline_epoch_seconds(data, data.train.x.device, 1)
    costs.learn(baseline=base * 50_000 / len(data.train))
    sec.row("baseline: per-image DataLoader, eager fp32, batch 128 (s/epoch)", f"{base:.3f}", "baseline", base)
    runs = [
        ("graph", "fp32", recipe.batch_size),
        ("graph", "fp32", 512),
        ("graph", "fp32", 128),
        ("graph", "bf16", 512),
        ("eager", "fp32", 512),
        ("eager", "fp32", 1024),
        ("eager", "fp32", 128),
    ]
    for engine, precision, batch in runs:
        trained, wall = timed_train(
            sec, arch, data, replace(recipe, epochs=2, batch_size=batch), engine=engine, precision=precision
        )
        secs = trained.history[-1].seconds  # the second epoch: no capture, no autotuning
        if (engine, precision, batch) == runs[0]:
            costs.learn(epoch=secs * 50_000 / len(data.train), start=wall - 2 * secs)
        if (engine, batch) == ("eager", 128):
            costs.learn(eager_epoch=secs * 50_000 / len(data.train))
        sec.row(
            f"{trained.engine} (asked: {engine}, {precision}), batch {batch} (s/epoch)",
            f"{secs:.3f} ({base / secs:.1f}x baseline)",
            f"{engine}_{precision}_{batch}",
            secs,
        )


def recipe(sec: Section, data: Data, test: Split, state: dict[str, Any], costs: Costs) -> None:
    """The recommended recipe (the seed file's train table), 20 epochs, 3 seeds, one at a time;
    each run is stored as it ends, and the first gives the later sections one trial's seconds
    (and the estimates their set-up and epoch seconds)."""
    arch, cfg = seed_arch()
    sec.row("recipe", json.dumps(cfg.to_dict()), "config", cfg.to_dict())
    runs: list[dict[str, Any]] = []
    for seed in range(3):
        trained, wall = timed_train(sec, arch, data, replace(cfg, seed=seed))
        test_acc = evaluate(trained.model(), test)[1]
        runs.append(
            {
                "seed": seed,
                "trial_seconds": wall,
                "val_acc": trained.history[-1].val_acc,
                "test_acc": test_acc,
                "engine": trained.engine,
                "epoch_seconds": [e.seconds for e in trained.history],
            }
        )
        sec.add("runs", runs[-1])
        if "one" not in state:
            later = [e.seconds for e in trained.history[1:]]
            if later:
                costs.learn(
                    epoch=statistics.mean(later) * 50_000 / len(data.train),
                    start=wall - len(trained.history) * statistics.mean(later),
                )
            state["one"] = wall
        sec.row(
            f"seed {seed}: trial seconds / final val / test",
            f"{wall:.2f} s / {100 * runs[-1]['val_acc']:.2f} % / {100 * test_acc:.2f} % ({trained.engine})",
        )
    mean_test = statistics.mean(r["test_acc"] for r in runs)
    trial = statistics.mean(r["trial_seconds"] for r in runs)
    sec.row(
        "mean over 3 seeds: trial seconds / test accuracy",
        f"{trial:.2f} s / {100 * mean_test:.2f} %",
        "mean",
        {"trial_seconds": trial, "test_acc": mean_test},
    )
    sec.goal(trial <= 4.0, "goal: <= 4 s per 20-epoch trial of the seed network")
    sec.goal(mean_test >= 0.994, "goal: >= 99.4 % test accuracy, mean of 3 seeds, final epoch")


def one_trial(sec: Section, data: Data, state: dict[str, Any]) -> float:
    """Seconds of one 20-epoch trial of the seed network: the recipe's first run, else trained here."""
    if "one" not in state:
        arch, cfg = seed_arch()
        state["one"] = timed_train(sec, arch, data, cfg)[1]
    return state["one"]


def kseeds(sec: Section, data: Data, test: Split, state: dict[str, Any]) -> None:
    """Cost of K seeds per trial: the seed network packed K=3 and K=8, 20 epochs."""
    arch, cfg = seed_arch()
    one = one_trial(sec, data, state)
    sec.row("K=1 trial seconds", f"{one:.2f}", "k1", one)
    for k in (3, 8):
        trained, wall = timed_train(sec, arch, data, cfg, seeds=k)
        tests = [evaluate(trained.model(i), test)[1] for i in range(k)]
        sec.figures[f"k{k}"] = {
            "trial_seconds": wall,
            "cost": wall / one,
            "val_accs": trained.history[-1].val_accs,
            "test_accs": tests,
            "engine": trained.engine,
        }
        sec.row(
            f"K={k}: trial seconds, cost vs K=1, test accuracies",
            f"{wall:.2f} s, {wall / one:.2f}x, {' '.join(f'{100 * t:.2f}' for t in tests)} % ({trained.engine})",
        )
        if k == 3:
            sec.goal(wall / one <= 2.0, "goal: K=3 costs <= 2x one seed")


def archs(sec: Section, data: Data, test: Split) -> None:
    """Trial seconds of the 8 fixed architectures of the default space, each with its own train
    table, with cuDNN autotuning (cudnn.benchmark) on, then off: autotuning times every new
    architecture's convolutions, which may cost more than it saves in a 20-epoch trial. To fit
    the budget each trains ARCH_EPOCHS epochs and its 20-epoch trial is estimated as the first
    epoch (build, capture, autotuning) plus 19 times the mean of the others."""
    files = sorted(ARCHS.glob("*.toml"))
    if len(files) != 8:
        raise RuntimeError(f"expected 8 architecture files in {ARCHS}, found {len(files)}")
    files = files[:2] if Smoke.on else files
    means = {}
    for benchmark in (True, False):
        nas.train.engine.CUDNN_BENCHMARK = benchmark
        label = "autotuning on" if benchmark else "autotuning off"
        try:
            for path in files:
                arch = load_arch(path)
                cfg = TrainConfig.from_dict(arch.train, str(path))
                trained, _ = timed_train(sec, arch, data, replace(cfg, epochs=ARCH_EPOCHS))
                secs = [e.seconds for e in trained.history]
                rest = statistics.mean(secs[1:]) if len(secs) > 1 else secs[0]
                estimate_s = secs[0] + (cfg.epochs - 1) * rest
                sec.add(
                    "archs",
                    {
                        "arch": path.stem,
                        "cudnn_benchmark": benchmark,
                        "params": param_count(arch),
                        "batch": cfg.batch_size,
                        "optimizer": cfg.optimizer,
                        "first_epoch": secs[0],
                        "epoch": rest,
                        "trial_seconds_estimate": estimate_s,
                        "engine": trained.engine,
                    },
                )
                sec.row(
                    f"{path.stem} ({param_count(arch):,} params, {cfg.optimizer}, batch {cfg.batch_size}), "
                    f"{label}: first epoch, next, {cfg.epochs}-epoch trial",
                    f"{secs[0]:.2f} s, {rest:.3f} s/epoch, ~{estimate_s:.1f} s ({trained.engine})",
                )
        finally:
            nas.train.engine.CUDNN_BENCHMARK = True
        rows = [r for r in sec.figures["archs"] if r["cudnn_benchmark"] == benchmark]
        means[benchmark] = statistics.mean(r["trial_seconds_estimate"] for r in rows)
        sec.row(
            f"mean estimated trial seconds, {label}",
            f"{means[benchmark]:.2f}",
            f"mean_trial_seconds_{'on' if benchmark else 'off'}",
            means[benchmark],
        )
    sec.row(
        "autotuning off vs on (mean estimated trial seconds)",
        f"{means[False] / means[True]:.2f}x",
        "benchmark_off_vs_on",
        means[False] / means[True],
    )


def concurrent(sec: Section, data: Data, test: Split, state: dict[str, Any]) -> None:
    """Trials per minute for N concurrent 20-epoch trials of the seed network in one process
    (threads, one CUDA stream each); then 4 concurrent trials of an architecture with dropout,
    which must all run on the graph engine (dropout in one trial while another captures is what
    breaks on a torch without per-capture RNG state)."""
    arch, cfg = seed_arch()
    one = one_trial(sec, data, state)
    sec.row("1 at a time (trials/min)", f"{60 / one:.1f}", "n1", 60 / one)

    def together(arch: Arch, cfgs: list[TrainConfig]) -> tuple[float, list[Trained]]:
        errors: list[BaseException] = []
        done: list[Trained] = []

        def run(c: TrainConfig) -> None:
            try:
                done.append(train(arch, data, fit(c), sec.check_time))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(c,)) for c in cfgs]
        nas.train.engine._GRAPHS.failures = 0
        sync()
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sync()
        if errors:
            if all(isinstance(e, OutOfTime) for e in errors):
                raise OutOfTime
            raise next(e for e in errors if not isinstance(e, OutOfTime))
        return time.perf_counter() - start, done

    for n in [2] if Smoke.on else sorted({2, DEFAULT_TRIALS_PER_GPU, 8}):
        wall, done = together(arch, [replace(cfg, seed=s) for s in range(n)])
        engines = sorted({t.engine for t in done})
        sec.row(
            f"{n} at once (trials/min)",
            f"{60 * n / wall:.1f} ({n * one / wall:.2f}x one at a time; {', '.join(engines)})",
            f"n{n}",
            {"trials_per_min": 60 * n / wall, "speedup": n * one / wall, "engines": engines},
        )
    drop = load_arch(ARCHS / f"{DROPOUT_ARCH}.toml")
    dcfg = TrainConfig.from_dict(drop.train, DROPOUT_ARCH)
    n = 2 if Smoke.on else 4
    wall, done = together(drop, [replace(dcfg, epochs=ARCH_EPOCHS, seed=s) for s in range(n)])
    engines = sorted({t.engine for t in done})
    sec.row(
        f"{n} at once with dropout ({DROPOUT_ARCH}, {ARCH_EPOCHS} epochs)",
        f"{wall:.2f} s ({', '.join(engines)})",
        "dropout",
        {"trials": n, "seconds": wall, "engines": engines},
    )
    if not Smoke.on:
        sec.expect(engines == ["cuda graph, fp32"], "concurrent trials with dropout all run as CUDA graphs")


def search(sec: Section, data_dir: str, workdir: Path, device: str, costs: Costs) -> None:
    """`nas search` in a subprocess, 1 trial at a time and on its defaults; trials finished per
    minute. Each study's SQLite file is kept next to --out."""
    import optuna

    from nas.study.analytics import rule_replays

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = [("one at a time", ["--trials-per-gpu", "1"]), ("defaults", [])]
    for label, flags in runs:
        if sec.left() < SEARCH_SECONDS + 10:
            raise OutOfTime
        name = f"suite-{label.replace(' ', '-')}"
        db = workdir / f"{name}.db"
        db.unlink(missing_ok=True)  # a fresh study: an old one would resume with its stored settings
        storage = f"sqlite:///{db}"
        cmd = [
            sys.executable,
            "-m",
            "nas",
            "search",
            "--study-name",
            name,
            "--storage",
            storage,
            "--trials",
            "1000",
            "--timeout",
            str(SEARCH_SECONDS),
            "--pruning",
            "observe",
            "--data-dir",
            data_dir,
            *flags,
        ]
        if Smoke.on:
            cmd += [
                "--train-size",
                str(Smoke.train_size),
                "--val-size",
                str(Smoke.val_size),
                "--max-epochs",
                str(Smoke.epochs),
                "--device",
                device,
            ]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        began = time.time()
        try:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(5, sec.left()))
        except subprocess.TimeoutExpired:
            sec.failures.append(f"nas search ({label}) ran past the section's cap")
            sec.row(f"nas search, {label}", "ran past the cap")
            continue
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            sec.failures.append(f"nas search ({label}) exited {done.returncode}: {last}")
            sec.row(f"nas search, {label}", f"FAILED (exit {done.returncode}: {last})")
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        first = min((t.datetime_start for t in study.trials if t.datetime_start), default=None)
        if first is not None:  # the process's start-up: from its start to its first trial's
            costs.learn(process=first.timestamp() - began)
        finished = [
            t for t in study.trials if t.datetime_complete and t.state.name == "COMPLETE" and t.user_attrs.get("curve")
        ]
        if not finished:
            sec.row(f"nas search, {label}", "no trial finished")
            continue
        window = (max(t.datetime_complete for t in finished) - first).total_seconds()
        rate = 60 * len(finished) / window
        engines = sorted({t.user_attrs.get("engine", "?") for t in finished})
        sec.row(
            f"nas search, {label}: complete 20-epoch trials per minute",
            f"{rate:.1f} ({len(finished)} in {window:.0f} s; {', '.join(engines)}; study {db.name})",
            label,
            {
                "trials_per_min": rate,
                "complete": len(finished),
                "seconds": window,
                "engines": engines,
                "storage": db.name,
            },
        )
        if label == "defaults":
            sec.goal(rate >= 12, "goal: >= 12 complete 20-epoch trials per minute on defaults")
            replays = rule_replays(study)
            sec.figures["rule_replays"] = replays
            sec.figures["curves"] = [
                {
                    "params": t.user_attrs["params"],
                    "curve": t.user_attrs["curve"],
                    "epoch_seconds": t.user_attrs["epoch_seconds"],
                }
                for t in finished
            ]
            for r in replays:
                print(
                    f"    rule from {r['start']:.0%} of epochs, slack {r['slack']}: "
                    + json.dumps({k: v for k, v in r.items() if k not in ("start", "slack")})
                )


# --- driver -------------------------------------------------------------------------------------


CORRECTNESS = {"checks"}  # sections whose cut is a failure: an unchecked engine is not a passed one


def run_section(
    name: str,
    results: dict[str, Any],
    rows: list[tuple[str, str, str]],
    fn: Callable[[Section], Any],
    cap: float,
    reckoning: str,
    save: Callable[[], None],
) -> None:
    sec = Section(name, cap, save)
    results[name] = {"status": "running", "cap": round(cap, 1), "estimate": reckoning, "figures": sec.figures}
    print(f"== {name} (cap {cap:.0f} s: {reckoning})", flush=True)
    status, error = "pass", None
    try:
        fn(sec)
    except OutOfTime:
        status = "cut"
        print(f"  {name}: stopped at its {cap:.0f} s cap; figures so far are kept", flush=True)
        if name in CORRECTNESS:
            status, error = "fail", f"cut at its {cap:.0f} s cap before every check ran"
    except Exception as e:  # noqa: BLE001 - one broken section must not stop the others
        status, error = "fail", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        traceback.print_exc(file=sys.stderr)
    if sec.failures and status != "fail":
        status, error = "fail", "; ".join(sec.failures)
    if status == "fail":
        print(f"FAIL {name}: {error}", flush=True)
    seconds = time.perf_counter() - sec.start
    results[name] = {
        "status": status,
        "seconds": round(seconds, 1),
        "cap": round(cap, 1),
        "estimate": reckoning,
        "error": error,
        **sec.figures,
    }
    rows += [(name, what, figure) for what, figure in sec.rows] + [
        (name, "status", f"{status} in {seconds:.0f} s" + (f": {error}" if error else ""))
    ]
    save()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("NAS_DATA_DIR", ".data/mnist"))
    p.add_argument("--out", default="runs/gpu_suite.json")
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections to run ({', '.join(SECTIONS)})"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help=f"seconds the whole suite may take (default {BUDGET:.0f}, none with --smoke); "
        "a section is cut at the lesser of its cap and what is left",
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny data, 2 epochs, CPU allowed: checks the suite, measures nothing"
    )
    args = p.parse_args()
    Smoke.on = args.smoke
    budget = args.budget or (math.inf if Smoke.on else BUDGET)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f"error: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not Smoke.on:
        print(
            "error: torch sees no CUDA GPU; this suite measures the GPU path "
            "(run it on the GPU machine, or add --smoke)",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        data = load(
            args.data_dir,
            device,
            val_size=Smoke.val_size if Smoke.on else 10_000,
            train_size=Smoke.train_size if Smoke.on else None,
        )
        test = load_test(args.data_dir, device)
    except Exception as e:  # noqa: BLE001
        print(
            f"error: cannot load MNIST from {args.data_dir} ({e}); pass --data-dir or set NAS_DATA_DIR", file=sys.stderr
        )
        return 2
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    costs, slow = Costs(), 1.0
    if Smoke.on:
        gpu += ", SMOKE RUN (tiny data, 2 epochs: the figures mean nothing)"
        if device.type == "cpu":  # a CPU is slower at everything but the baseline of 1,024 images
            costs, slow = Costs(start=2.0, epoch=15.0, eager_epoch=15.0, baseline=20.0, process=10.0), 3.0
    print(
        f"{gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}; python {platform.python_version()}; "
        f"{len(data.train):,} training images on the GPU ({time.perf_counter() - started:.1f} s to load); "
        f"budget {budget:.0f} s",
        flush=True,
    )
    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str]] = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report = {
            "gpu": gpu,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "seconds": round(time.perf_counter() - started, 1),
            "costs": {**{k: v for k, v in vars(costs).items() if k != "measured"}, "measured": sorted(costs.measured)},
            "sections": results,
        }
        out.write_text(json.dumps(report, indent=1, default=str))

    state: dict[str, Any] = {}
    plan: dict[str, Callable[[Section], Any]] = {
        "checks": lambda s: checks(s, data, test),
        "recipe": lambda s: recipe(s, data, test, state, costs),
        "kseeds": lambda s: kseeds(s, data, test, state),
        "concurrent": lambda s: concurrent(s, data, test, state),
        "search": lambda s: search(s, args.data_dir, out.parent, device.type, costs),
        "speed": lambda s: speed(s, data, test, costs),
        "archs": lambda s: archs(s, data, test),
    }
    for name in SECTIONS:
        if name not in wanted:
            continue
        fn = plan[name]
        seconds, how = estimate(name, costs, len(data.train))
        left = budget - (time.perf_counter() - started)
        cap = min(slow * (1.5 * seconds + 10), left)
        if left < 10:
            results[name] = {"status": "skipped", "error": f"the suite's {budget:.0f} s budget is spent"}
            rows.append((name, "status", f"skipped: the suite's {budget:.0f} s budget is spent"))
            print(f"== {name}: skipped, the suite's {budget:.0f} s budget is spent", flush=True)
            save()
            continue
        run_section(name, results, rows, fn, cap, f"estimate {seconds:.0f} s = {how}; from {costs.says()}", save)
    total = time.perf_counter() - started
    print(f"\n## GPU suite: {gpu}, torch {torch.__version__}, {total:.0f} s\n")
    print("| section | what | figure |\n|---|---|---|")
    for section, what, figure in rows:
        print(f"| {section} | {what} | {figure} |")
    save()
    print(f"\nwrote {out}")
    return 1 if any(r["status"] == "fail" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
