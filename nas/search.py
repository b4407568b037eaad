"""The Optuna search: budget pruning before training, convergence pruning while training.

Everything a person needs to review a trial is stored on it as user attributes, and the study
remembers its own settings (target, budget, epochs, objective), so `nas report`, `nas best`
and `nas export` need only the study's name and storage.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nas.arch import SpecError, arch_to_json, load_arch, param_count, receptive_field
from nas.data import Data
from nas.data import load as load_data
from nas.space import load_space, params_for, sample
from nas.train import Diverged, Epoch, TrainConfig, resolve_device, train

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "mnist_fcn.toml"
DEFAULT_SEED = Path(__file__).resolve().parents[1] / "search_spaces" / "seeds" / "seed_9274.toml"
PRUNING_MODES = ("on", "observe", "off")
OBJECTIVES = ("pareto", "accuracy")


@dataclass
class ConvergenceRule:
    """Prune a trial whose validation accuracy lags a straight line from target - slack (at
    epoch 0) up to the target (at the last epoch), judged only from a fraction `start` of the
    epochs on: OneCycle's high-learning-rate phase makes early accuracy noisy. The defaults are
    the most saving rule that discarded no eventual winner when nine candidates were replayed
    on 24 fully trained curves (README, "Measured"); judging from half-way lost the seed."""

    target: float
    max_epochs: int
    slack: float = 0.06
    start: float = 0.75

    def first_epoch(self) -> int:
        return max(1, math.ceil(self.start * self.max_epochs))

    def needed(self, epoch: int) -> float:
        return self.target - self.slack * (1 - epoch / self.max_epochs)

    def should_prune(self, epoch: int, val_acc: float) -> bool:
        return self.first_epoch() <= epoch < self.max_epochs and val_acc < self.needed(epoch)


@dataclass
class Settings:
    """One search's settings; also stored on the study so later commands can read them."""

    space: str = str(DEFAULT_SPACE)
    max_params: int = 20_000
    max_epochs: int = 20
    target_accuracy: float = 0.994
    objective: str = "pareto"
    pruning: str = "on"
    seeds: list[str] = field(default_factory=lambda: [str(DEFAULT_SEED)])
    seed: int = 0
    device: str = "auto"
    data_dir: str | None = None
    train_size: int | None = None
    val_size: int = 10_000


def storage_for(url: str) -> optuna.storages.BaseStorage | str:
    """RDB storages get a long lock timeout (several workers on one SQLite file) and heartbeats,
    so trials of a killed worker are marked failed and retried once instead of hanging RUNNING."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in url:
        return url
    return optuna.storages.RDBStorage(
        url,
        engine_kwargs={"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None,
        heartbeat_interval=30,
        grace_period=120,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
    )


def open_study(name: str, storage: str, settings: Settings | None = None, sampler_seed: int | None = None) -> optuna.Study:
    """Create (settings given) or load a study; a new one gets its seeds enqueued first."""
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    if settings is None:
        try:
            return optuna.load_study(study_name=name, storage=storage_for(storage), sampler=sampler)
        except KeyError:
            raise SpecError(storage, name, "no such study; run `nas search --study-name NAME` first or check --storage") from None
    directions = ["maximize", "minimize"] if settings.objective == "pareto" else ["maximize"]
    study = optuna.create_study(study_name=name, storage=storage_for(storage), sampler=sampler, directions=directions, load_if_exists=True)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings.__dict__)
        if settings.objective == "pareto":
            study.set_metric_names(["val_accuracy", "params"])
        else:
            study.set_metric_names(["val_accuracy"])
        space = load_space(settings.space)
        for path in settings.seeds:
            arch = load_arch(path)
            cfg = TrainConfig.from_dict(arch.train, path) if arch.train else TrainConfig()
            cfg.epochs = settings.max_epochs
            study.enqueue_trial(params_for(space, arch, cfg, path), user_attrs={"seed_file": str(path)})
    elif stored["objective"] != settings.objective:
        raise SpecError(storage, name, f"study was created with --objective {stored['objective']}; use that or a new --study-name")
    return study


def study_settings(study: optuna.Study) -> Settings:
    return Settings(**study.user_attrs["settings"])


def make_objective(settings: Settings, data: Data, device: torch.device, log: Callable[[str], None]) -> Callable[[optuna.Trial], Any]:
    space = load_space(settings.space)
    rule = ConvergenceRule(settings.target_accuracy, settings.max_epochs)
    pareto = settings.objective == "pareto"

    def objective(trial: optuna.Trial) -> Any:
        arch, cfg = sample(space, trial, settings.max_epochs)
        cfg.seed = settings.seed
        arch.name = f"trial_{trial.number}"
        try:
            n = param_count(arch)
        except SpecError as e:
            trial.set_constraint("params", 0.0)
            trial.set_constraint("valid", 1.0)
            trial.set_user_attr("prune_reason", f"invalid: {e.problem}")
            log(f"[trial {trial.number}] PRUNED invalid architecture ({e.problem})")
            raise optuna.TrialPruned("invalid architecture") from None
        trial.set_constraint("params", float(n - settings.max_params))
        trial.set_constraint("valid", 0.0)
        for key, value in dict(params=n, receptive_field=receptive_field(arch), arch=arch_to_json(arch), train_config=cfg.to_dict(), device=str(device)).items():
            trial.set_user_attr(key, value)
        if n > settings.max_params:
            trial.set_user_attr("prune_reason", "budget")
            log(f"[trial {trial.number}] PRUNED over budget: {n:,} > {settings.max_params:,} params (not trained)")
            raise optuna.TrialPruned(f"{n} parameters exceed the budget of {settings.max_params}")
        curve: list[float] = []
        seconds: list[float] = []

        def on_epoch(e: Epoch) -> None:
            curve.append(e.val_acc)
            seconds.append(e.seconds)
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("epoch_seconds", seconds)
            trial.set_user_attr("train_seconds", sum(seconds))
            if not pareto:
                trial.report(e.val_acc, e.epoch)
            log(f"[trial {trial.number}] {n:,} params  epoch {e.epoch:>2}/{cfg.epochs}  val acc {100 * e.val_acc:6.2f} %  loss {e.train_loss:.4f}  {e.seconds:5.1f} s")
            if settings.pruning != "off" and rule.should_prune(e.epoch, e.val_acc) and "would_prune_epoch" not in trial.user_attrs:
                trial.set_user_attr("would_prune_epoch", e.epoch)
                if settings.pruning == "on":
                    trial.set_user_attr("prune_reason", "convergence")
                    log(f"[trial {trial.number}] PRUNED at epoch {e.epoch}: {100 * e.val_acc:.2f} % < {100 * rule.needed(e.epoch):.2f} % needed to be on course for {100 * settings.target_accuracy:.2f} %")
                    raise optuna.TrialPruned(f"not converging at epoch {e.epoch}")

        try:
            train(arch, data, cfg, on_epoch)
        except Diverged as e:
            trial.set_user_attr("fail_reason", str(e))
            log(f"[trial {trial.number}] FAILED: {e}")
            raise
        except torch.OutOfMemoryError as e:
            trial.set_user_attr("fail_reason", f"out of memory: {str(e).splitlines()[0]}")
            log(f"[trial {trial.number}] FAILED: out of memory")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        acc = curve[-1]
        trial.set_user_attr("converged", acc >= settings.target_accuracy)
        return (acc, n) if pareto else acc

    return objective


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The search's rule: the smallest complete trial whose validation accuracy meets the target
    (in accuracy mode: the most accurate complete trial)."""
    settings = study_settings(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if settings.objective == "accuracy":
        return max(done, key=lambda t: (t.values[0], -t.user_attrs["params"]), default=None)
    ok = [t for t in done if t.values[0] >= settings.target_accuracy]
    return min(ok, key=lambda t: (t.user_attrs["params"], -t.values[0]), default=None)


def describe_trial(t: FrozenTrial) -> str:
    return f"trial {t.number}: {100 * t.values[0]:.2f} % with {t.user_attrs['params']:,} params"


def run_worker(name: str, storage: str, settings: Settings, n_trials: int | None, timeout: float | None, worker: int, threads: int | None) -> None:
    """One process's share of the search (also the whole search when --workers is 1)."""
    if threads:
        torch.set_num_threads(threads)
    prefix = f"[w{worker}] " if threads else ""
    device = resolve_device(settings.device)
    data = load_data(settings.data_dir, device, val_size=settings.val_size, train_size=settings.train_size)
    study = open_study(name, storage, sampler_seed=settings.seed + worker)
    log = lambda msg: print(prefix + msg, flush=True)  # noqa: E731
    objective = make_objective(settings, data, device, log)
    current: list[optuna.Trial] = []

    def tracked(trial: optuna.Trial) -> Any:
        current[:] = [trial]
        return objective(trial)

    def after(study: optuna.Study, t: FrozenTrial) -> None:
        if t.state == TrialState.COMPLETE:
            best = best_trial(study)
            log(f"[trial {t.number}] COMPLETE {100 * t.values[0]:.2f} % val acc, {t.user_attrs['params']:,} params, "
                f"{t.user_attrs.get('train_seconds', 0):.0f} s; best so far: {describe_trial(best) if best else 'none meets the target yet'}")

    try:
        study.optimize(tracked, n_trials=n_trials, timeout=timeout, catch=(Diverged, torch.OutOfMemoryError, MemoryError), callbacks=[after])
    except KeyboardInterrupt:
        if current and current[0].number is not None:
            # Run the interrupted trial again first when the search resumes.
            study.enqueue_trial(current[0].params, user_attrs={"retry_of": current[0].number})
        raise


def _worker_entry(args: tuple) -> None:
    try:
        run_worker(*args)
    except KeyboardInterrupt:
        pass


def search(name: str, storage: str, settings: Settings, n_trials: int | None, timeout: float | None, workers: int = 1) -> optuna.Study:
    """Run (or resume) a study; with workers > 1, that many processes share the storage."""
    study = open_study(name, storage, settings)
    if workers <= 1:
        run_worker(name, storage, settings, n_trials, timeout, 0, None)
        return study
    shares = [None] * workers if n_trials is None else [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=((name, storage, settings, share, timeout, i, threads),)) for i, share in enumerate(shares) if share != 0]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join()
        raise
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) exited with codes {failed}; see their output above")
    return study


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: complete (converged or not), pruned by budget / invalid / convergence, failed."""
    out = {k: 0 for k in ("complete", "converged", "pruned_budget", "pruned_invalid", "pruned_convergence", "failed", "running")}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            out["complete"] += 1
            out["converged"] += bool(t.user_attrs.get("converged"))
        elif t.state == TrialState.PRUNED:
            reason = t.user_attrs.get("prune_reason", "convergence").split(":")[0]
            out[f"pruned_{reason}"] += 1
        elif t.state == TrialState.FAIL:
            out["failed"] += 1
        else:
            out["running"] += 1
    return out


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials no other complete trial beats on both accuracy and size."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = [t for t in done if not any(
        o.values[0] >= t.values[0] and o.user_attrs["params"] <= t.user_attrs["params"]
        and (o.values[0], o.user_attrs["params"]) != (t.values[0], t.user_attrs["params"]) for o in done)]
    return sorted(front, key=lambda t: t.user_attrs["params"])


def replay_rule(study: optuna.Study, rule: ConvergenceRule) -> dict[str, Any]:
    """Apply a convergence rule after the fact to every trial that trained all its epochs
    (a study searched with --pruning observe or off): training seconds it would save, and the
    trials it would wrongly discard (pruned, yet they ended at or above the target)."""
    full = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if len(t.user_attrs.get("curve", [])) == rule.max_epochs]
    saved, wrong, pruned = 0.0, [], 0
    for t in full:
        stop = next((e for e, acc in enumerate(t.user_attrs["curve"], 1) if rule.should_prune(e, acc)), None)
        if stop is not None:
            pruned += 1
            saved += sum(t.user_attrs["epoch_seconds"][stop:])
            if t.user_attrs["curve"][-1] >= rule.target:
                wrong.append(t.number)
    spent = sum(sum(t.user_attrs["epoch_seconds"]) for t in full)
    return {"trials": len(full), "pruned": pruned, "seconds": spent, "saved": saved, "wrongly_pruned": wrong}


def pruning_savings(study: optuna.Study) -> dict[str, Any]:
    """What the convergence rule saves (or, in observe mode, would save) and whether it would
    have discarded a trial that ended up meeting the target."""
    settings = study_settings(study)
    trained = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("epoch_seconds")]
    spent = sum(sum(t.user_attrs["epoch_seconds"]) for t in trained)
    flagged = [t for t in trained if "would_prune_epoch" in t.user_attrs]
    saved = 0.0
    for t in flagged:
        secs = t.user_attrs["epoch_seconds"]
        done = t.user_attrs["would_prune_epoch"]
        per_epoch = sum(secs[:done]) / done
        saved += per_epoch * (settings.max_epochs - done) if t.state == TrialState.PRUNED else sum(secs[done:])
    wrongly = [t.number for t in flagged if t.state == TrialState.COMPLETE and t.user_attrs.get("converged")]
    total = spent + saved if settings.pruning == "on" else spent  # with pruning on, the saved epochs never ran
    return {"mode": settings.pruning, "trained_trials": len(trained), "flagged": len(flagged), "train_seconds": spent,
            "seconds_saved": saved, "saved_fraction": saved / total if total else 0.0, "flagged_but_converged": wrongly}


def elapsed(start: float) -> str:
    s = int(time.time() - start)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
