"""Everything issue 7 asks to measure on one GPU, in one command of at most 4 minutes.

    source .gpu-env; python3 benchmarks/gpu_suite.py [--data-dir .data/mnist] [--out runs/gpu_suite.json] [--only NAME,...]
    python3 benchmarks/gpu_suite.py --smoke      # every section on 1,024 images for 2 epochs, on the CPU too: checks the suite itself

Run from the project checkout; it needs only torch, optuna and the project's own dependencies.
Correctness comes first: the CUDA graph engine against the eager one over the first steps, and a
packed K-seed network against K separately trained ones. Then speed (baseline, eager, graph at
batch 128/512/1024, bf16 against fp32), the recommended recipe's 20-epoch accuracy for 3 seeds,
trial seconds of the 8 fixed architectures in benchmarks/archs/ (from 4 epochs), the cost of K seeds per trial,
trials per minute for concurrent trials in one process, and `nas search` itself (1 trial at a
time and the default), with the convergence rules replayed on its 20-epoch curves.

Every section has its own time cap (CAPS): a section that runs out of time reports what it has;
a section that breaks prints one line "FAIL <section>: <reason>" and the others still run. At the
end a markdown table is printed and the figures are written as JSON (--out). Exit code 1 when a
section failed (a section cut at its cap is not a failure), 2 when the suite cannot start (no GPU,
no data), 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's nas, installed or not
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from nas.arch import Arch, load_arch, param_count  # noqa: E402
from nas.config import TrainConfig  # noqa: E402
from nas.data import Data, Split, load, load_test  # noqa: E402
from nas.placement import DEFAULT_TRIALS_PER_GPU  # noqa: E402
from nas.settings import DEFAULT_SEED_ARCH  # noqa: E402
from nas.train import Trained, evaluate, train  # noqa: E402

# Seconds each section may take (about 225 s in all, with data loading and start-up under 4 minutes).
CAPS = {"checks": 20, "speed": 30, "recipe": 35, "kseeds": 30, "archs": 20, "concurrent": 25, "search": 65}
SEARCH_SECONDS = 18  # --timeout of each `nas search` run in the search section
ARCH_EPOCHS = 4  # epochs each fixed architecture trains in the archs section
ARCHS = ROOT / "benchmarks" / "archs"


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
    """One section's clock, figures and table rows."""

    def __init__(self, name: str, cap: float):
        self.name, self.cap, self.start = name, cap, time.perf_counter()
        self.figures: dict[str, Any] = {}
        self.rows: list[tuple[str, str]] = []
        self.failures: list[str] = []
        self.cut = False

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

    def expect(self, ok: bool, what: str) -> None:
        """A correctness check or a goal; a failed check fails the section (the rest still runs)."""
        self.row(what, "ok" if ok else "FAILED")
        if not ok:
            self.failures.append(what)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_train(sec: Section, arch: Arch, data: Data, cfg: TrainConfig, **kw: Any) -> tuple[Trained, float]:
    """train() with the section's clock as on_epoch; wall seconds from the call (building the
    network, capture and autotuning included) to the last validation."""
    sync()
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


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# --- sections -----------------------------------------------------------------------------------


def checks(sec: Section, data: Data, test: Split) -> None:
    """Graph vs eager losses over the first 12 steps; packed K=3 vs 3 separate runs; bf16 capture."""
    arch, recipe = seed_arch()
    small = subset(data, 4 * 512 if not Smoke.on else 4 * 128, 2000)
    cfg = replace(recipe, epochs=3, batch_size=512 if not Smoke.on else 128, lr=0.01)  # a low lr: float differences are not amplified, a wrong step would be
    graph, _ = timed_train(sec, arch, small, cfg, engine="graph")
    eager, _ = timed_train(sec, arch, small, cfg, engine="eager")
    sec.row("graph engine", graph.engine, "graph_engine", graph.engine)
    if not Smoke.on:
        sec.expect(graph.engine.startswith("cuda graph"), "the seed network's step captures in a CUDA graph")
    worst = max(max(rel(g.train_loss, e.train_loss), rel(g.val_loss, e.val_loss)) for g, e in zip(graph.history, eager.history))
    sec.row("graph vs eager, 12 steps: largest relative loss difference", f"{worst:.2e}", "graph_vs_eager_rel", worst)
    sec.expect(worst < 2e-3, "graph and eager losses agree (< 2e-3 relative)")
    packed, _ = timed_train(sec, arch, small, cfg, seeds=3)
    diffs = []
    for k in range(3):
        alone, _ = timed_train(sec, arch, small, replace(cfg, seed=cfg.seed + k))
        diffs.append(rel(evaluate(packed.model(k), small.val)[0], evaluate(alone.model(), small.val)[0]))
    sec.row("packed K=3 vs 3 separate runs: largest relative val-loss difference", f"{max(diffs):.2e}", "packed_vs_separate_rel", max(diffs))
    sec.expect(max(diffs) < 2e-3, "each packed copy matches its separate run (< 2e-3 relative)")
    for k in (1, 3):
        bf16, _ = timed_train(sec, arch, subset(data, 2 * 512, 1000), replace(cfg, epochs=1), seeds=k, precision="bf16")
        sec.row(f"bf16 engine, K={k}", bf16.engine, f"bf16_engine_k{k}", bf16.engine)


def speed(sec: Section, data: Data, test: Split) -> None:
    """Seconds per epoch (validation included) of the seed network: baseline, eager, graph."""
    from epoch_speed import baseline_epoch_seconds

    arch, recipe = seed_arch()
    base = baseline_epoch_seconds(data, data.train.x.device, 1)
    sec.row("baseline: per-image DataLoader, eager fp32, batch 128 (s/epoch)", f"{base:.3f}", "baseline", base)
    runs = [("graph", "fp32", 512), ("graph", "fp32", 1024), ("graph", "fp32", 128), ("graph", "bf16", 512),
            ("eager", "fp32", 512), ("eager", "fp32", 1024), ("eager", "fp32", 128)]
    for engine, precision, batch in runs:
        trained, _ = timed_train(sec, arch, data, replace(recipe, epochs=2, batch_size=batch), engine=engine, precision=precision)
        secs = trained.history[1].seconds  # the second epoch: no capture, no autotuning
        sec.row(f"{trained.engine}, batch {batch} (s/epoch)", f"{secs:.3f} ({base / secs:.1f}x baseline)", f"{engine}_{precision}_{batch}", secs)


def recipe(sec: Section, data: Data, test: Split) -> dict[str, Any]:
    """The recommended recipe (the seed file's train table), 20 epochs, 3 seeds, one at a time."""
    arch, cfg = seed_arch()
    sec.row("recipe", json.dumps(cfg.to_dict()), "config", cfg.to_dict())
    runs = []
    for seed in range(3):
        trained, wall = timed_train(sec, arch, data, replace(cfg, seed=seed))
        test_acc = evaluate(trained.model(), test)[1]
        runs.append({"seed": seed, "trial_seconds": wall, "val_acc": trained.history[-1].val_acc, "test_acc": test_acc, "engine": trained.engine})
        sec.row(f"seed {seed}: trial seconds / final val / test", f"{wall:.2f} s / {100 * runs[-1]['val_acc']:.2f} % / {100 * test_acc:.2f} %")
    sec.figures["runs"] = runs
    mean_test = statistics.mean(r["test_acc"] for r in runs)
    trial = statistics.mean(r["trial_seconds"] for r in runs)
    sec.row("mean over 3 seeds: trial seconds / test accuracy", f"{trial:.2f} s / {100 * mean_test:.2f} %", "mean", {"trial_seconds": trial, "test_acc": mean_test})
    sec.expect(trial <= 4.0, "goal: <= 4 s per 20-epoch trial of the seed network")
    sec.expect(mean_test >= 0.994, "goal: >= 99.4 % test accuracy, mean of 3 seeds, final epoch")
    return {"trial_seconds": trial}


def kseeds(sec: Section, data: Data, test: Split, one: float | None) -> None:
    """Cost of K seeds per trial: the seed network packed K=3 and K=8, 20 epochs."""
    arch, cfg = seed_arch()
    if one is None:
        _, one = timed_train(sec, arch, data, cfg)
    sec.row("K=1 trial seconds", f"{one:.2f}", "k1", one)
    for k in (3, 8):
        trained, wall = timed_train(sec, arch, data, cfg, seeds=k)
        tests = [evaluate(trained.model(i), test)[1] for i in range(k)]
        sec.figures[f"k{k}"] = {"trial_seconds": wall, "cost": wall / one, "val_accs": trained.history[-1].val_accs, "test_accs": tests, "engine": trained.engine}
        sec.row(f"K={k}: trial seconds, cost vs K=1, test accuracies", f"{wall:.2f} s, {wall / one:.2f}x, {' '.join(f'{100 * t:.2f}' for t in tests)} % ({trained.engine})")
        if k == 3:
            sec.expect(wall / one <= 2.0, "goal: K=3 costs <= 2x one seed")


def archs(sec: Section, data: Data, test: Split) -> None:
    """Trial seconds of the 8 fixed architectures of the default space, each with its own train
    table. To fit the budget each trains ARCH_EPOCHS epochs and its 20-epoch trial is estimated as
    the first epoch (build, capture, autotuning) plus 19 times the mean of the others."""
    files = sorted(ARCHS.glob("*.toml"))
    if len(files) != 8:
        raise RuntimeError(f"expected 8 architecture files in {ARCHS}, found {len(files)}")
    rows = []
    for path in files:
        arch = load_arch(path)
        cfg = TrainConfig.from_dict(arch.train, str(path))
        trained, _ = timed_train(sec, arch, data, replace(cfg, epochs=ARCH_EPOCHS))
        secs = [e.seconds for e in trained.history]
        estimate = secs[0] + (cfg.epochs - 1) * statistics.mean(secs[1:])
        rows.append({"arch": path.stem, "params": param_count(arch), "batch": cfg.batch_size, "optimizer": cfg.optimizer, "first_epoch": secs[0],
                     "epoch": statistics.mean(secs[1:]), "trial_seconds_estimate": estimate, "engine": trained.engine})
        sec.row(f"{path.stem} ({param_count(arch):,} params, {cfg.optimizer}, batch {cfg.batch_size}): first epoch, next, {cfg.epochs}-epoch trial",
                f"{secs[0]:.2f} s, {statistics.mean(secs[1:]):.3f} s/epoch, ~{estimate:.1f} s ({trained.engine})")
    sec.figures["archs"] = rows
    sec.row("mean estimated trial seconds", f"{statistics.mean(r['trial_seconds_estimate'] for r in rows):.2f}", "mean_trial_seconds",
            statistics.mean(r["trial_seconds_estimate"] for r in rows))


def concurrent(sec: Section, data: Data, test: Split, one: float | None) -> None:
    """Trials per minute for N concurrent 20-epoch trials of the seed network in one process (threads, one CUDA stream each)."""
    arch, cfg = seed_arch()
    if one is None:
        _, one = timed_train(sec, arch, data, cfg)
    sec.row("1 at a time (trials/min)", f"{60 / one:.1f}", "n1", 60 / one)
    for n in sorted({2, DEFAULT_TRIALS_PER_GPU, 8}):
        errors: list[BaseException] = []
        engines: set[str] = set()

        def run(seed: int) -> None:
            try:
                engines.add(train(arch, data, fit(replace(cfg, seed=seed)), sec.check_time).engine)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(s,)) for s in range(n)]
        sync()
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sync()
        wall = time.perf_counter() - start
        if errors:
            if all(isinstance(e, OutOfTime) for e in errors):
                raise OutOfTime
            raise errors[0]
        sec.row(f"{n} at once (trials/min)", f"{60 * n / wall:.1f} ({n * one / wall:.2f}x one at a time; {', '.join(sorted(engines))})", f"n{n}", 60 * n / wall)


def search(sec: Section, data_dir: str, workdir: Path, device: str) -> None:
    """`nas search` in a subprocess, 1 trial at a time and on its defaults; trials finished per minute."""
    import optuna

    from nas.analytics import rule_replays

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = [("one at a time", ["--trials-per-gpu", "1"]), ("defaults", [])]
    for label, flags in runs:
        if sec.left() < SEARCH_SECONDS + 10:
            raise OutOfTime
        name = f"suite-{label.replace(' ', '-')}"
        db = workdir / f"{name}.db"
        db.unlink(missing_ok=True)  # a fresh study: an old one would resume with its stored settings
        storage = f"sqlite:///{db}"
        cmd = [sys.executable, "-m", "nas", "search", "--study-name", name, "--storage", storage, "--trials", "1000",
               "--timeout", str(SEARCH_SECONDS), "--pruning", "observe", "--data-dir", data_dir, *flags]
        if Smoke.on:
            cmd += ["--train-size", str(Smoke.train_size), "--val-size", str(Smoke.val_size), "--max-epochs", str(Smoke.epochs), "--device", device]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
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
        finished = [t for t in study.trials if t.datetime_complete and t.state.name == "COMPLETE" and t.user_attrs.get("curve")]
        if not finished:
            sec.row(f"nas search, {label}", "no trial finished")
            continue
        window = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in study.trials if t.datetime_start)).total_seconds()
        rate = 60 * len(finished) / window
        engines = sorted({t.user_attrs.get("engine", "?") for t in finished})
        sec.row(f"nas search, {label}: complete 20-epoch trials per minute", f"{rate:.1f} ({len(finished)} in {window:.0f} s; {', '.join(engines)})",
                label, {"trials_per_min": rate, "complete": len(finished), "seconds": window, "engines": engines})
        if label == "defaults":
            sec.expect(rate >= 12, "goal: >= 12 complete 20-epoch trials per minute on defaults")
            replays = rule_replays(study)
            sec.figures["rule_replays"] = replays
            sec.figures["curves"] = [{"params": t.user_attrs["params"], "curve": t.user_attrs["curve"], "epoch_seconds": t.user_attrs["epoch_seconds"]} for t in finished]
            for r in replays:
                print(f"    rule from {r['start']:.0%} of epochs, slack {r['slack']}: " + json.dumps({k: v for k, v in r.items() if k not in ("start", "slack")}))


# --- driver -------------------------------------------------------------------------------------


def run_section(name: str, results: dict[str, Any], rows: list[tuple[str, str, str]], fn: Callable[[Section], Any]) -> Any:
    sec = Section(name, CAPS[name])
    print(f"== {name} (cap {sec.cap} s)", flush=True)
    out, status, error = None, "pass", None
    try:
        out = fn(sec)
    except OutOfTime:
        status = "cut"
        print(f"  {name}: stopped at its {sec.cap} s cap; figures so far are kept", flush=True)
    except Exception as e:  # noqa: BLE001 - one broken section must not stop the others
        status, error = "fail", f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        traceback.print_exc(file=sys.stderr)
    if sec.failures and status == "pass":
        status, error = "fail", "; ".join(sec.failures)
    if status == "fail":
        print(f"FAIL {name}: {error}", flush=True)
    seconds = time.perf_counter() - sec.start
    results[name] = {"status": status, "seconds": round(seconds, 1), "error": error, **sec.figures}
    rows += [(name, what, figure) for what, figure in sec.rows] + [(name, "status", f"{status} in {seconds:.0f} s" + (f": {error}" if error else ""))]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("NAS_DATA_DIR", ".data/mnist"))
    p.add_argument("--out", default="runs/gpu_suite.json")
    p.add_argument("--only", default=",".join(CAPS), help=f"comma-separated sections to run ({', '.join(CAPS)})")
    p.add_argument("--smoke", action="store_true", help="tiny data, 2 epochs, CPU allowed: checks the suite, measures nothing")
    args = p.parse_args()
    Smoke.on = args.smoke
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in CAPS]
    if unknown:
        print(f"error: unknown section {unknown[0]!r}; choose from {', '.join(CAPS)}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not Smoke.on:
        print("error: torch sees no CUDA GPU; this suite measures the GPU path (run it on the GPU machine, or add --smoke)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        data = load(args.data_dir, device, val_size=Smoke.val_size if Smoke.on else 10_000, train_size=Smoke.train_size if Smoke.on else None)
        test = load_test(args.data_dir, device)
    except Exception as e:  # noqa: BLE001
        print(f"error: cannot load MNIST from {args.data_dir} ({e}); pass --data-dir or set NAS_DATA_DIR", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    if Smoke.on:
        gpu += ", SMOKE RUN (tiny data, 2 epochs: the figures mean nothing)"
        for name in CAPS:
            CAPS[name] *= 3 if device.type == "cpu" else 1
    print(f"{gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}; python {platform.python_version()}; "
          f"{len(data.train):,} training images on the GPU ({time.perf_counter() - started:.1f} s to load)", flush=True)
    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str]] = []
    workdir = ROOT / "runs" / "gpu_suite"
    workdir.mkdir(parents=True, exist_ok=True)
    one = None
    plan: list[tuple[str, Callable[[Section], Any]]] = [
        ("checks", lambda s: checks(s, data, test)),
        ("speed", lambda s: speed(s, data, test)),
        ("recipe", lambda s: recipe(s, data, test)),
        ("kseeds", lambda s: kseeds(s, data, test, one)),
        ("archs", lambda s: archs(s, data, test)),
        ("concurrent", lambda s: concurrent(s, data, test, one)),
        ("search", lambda s: search(s, args.data_dir, workdir, device.type)),
    ]
    for name, fn in plan:
        if name in wanted:
            out = run_section(name, results, rows, fn)
            if name == "recipe" and out:
                one = out["trial_seconds"]
    total = time.perf_counter() - started
    print(f"\n## GPU suite: {gpu}, torch {torch.__version__}, {total:.0f} s\n")
    print("| section | what | figure |\n|---|---|---|")
    for section, what, figure in rows:
        print(f"| {section} | {what} | {figure} |")
    report = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(), "seconds": round(total, 1),
              "sections": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {args.out}")
    return 1 if any(r["status"] == "fail" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
