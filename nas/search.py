"""The Optuna search: budget pruning before training, convergence pruning while training.

Everything a person needs to review a trial is stored on it as user attributes, and the study
remembers its own settings (target, budget, epochs, objective), so `nas report`, `nas best`
and `nas export` need only the study's name and storage.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nas.analytics import ConvergenceRule, best_trial, describe_trial, study_settings
from nas.arch import arch_to_json, param_count, receptive_field
from nas.data import Data
from nas.data import load as load_data
from nas.errors import SpecError
from nas.settings import StudySettings
from nas.space import sample
from nas.train import Diverged, Epoch, resolve_device, train

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Run:
    """What belongs to one machine and one invocation, not to the study."""

    device: str = "auto"
    data_dir: str | None = None
    workers: int = 1


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


def open_study(name: str, storage: str, settings: StudySettings | None = None, given: dict[str, Any] | None = None,
               sampler_seed: int | None = None) -> optuna.Study:
    """Create (settings given) or load a study; a new one gets its seeds enqueued first, an
    existing one refuses `given` settings that disagree with those it stores."""
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    if settings is None:
        try:
            return optuna.load_study(study_name=name, storage=storage_for(storage), sampler=sampler)
        except KeyError:
            raise SpecError(storage, name, "no such study; run `nas search --study-name NAME` first or check --storage") from None
    directions = ["maximize", "minimize"] if settings.objective == "pareto" else ["maximize"]
    study = optuna.create_study(study_name=name, storage=storage_for(storage), sampler=sampler, directions=directions, load_if_exists=True)
    if "settings" in study.user_attrs:
        study_settings(study).reconcile(given or {}, name)
        return study
    study.set_metric_names(["val_accuracy", "params"] if settings.objective == "pareto" else ["val_accuracy"])
    for data, params in zip(settings.seed_archs, settings.seed_configs):
        study.enqueue_trial(params, user_attrs={"seed_arch": data["name"]})
    study.set_user_attr("settings", settings.to_dict())
    return study


def make_objective(settings: StudySettings, data: Data, device: torch.device, log: Callable[[str], None]) -> Callable[[optuna.Trial], Any]:
    space = settings.parsed_space
    rule = ConvergenceRule.of(settings)
    pareto = settings.objective == "pareto"

    def objective(trial: optuna.Trial) -> Any:
        arch, cfg = sample(space, trial, settings.max_epochs)
        cfg = replace(cfg, seed=settings.seed)
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
            trained = train(arch, data, cfg, on_epoch, seeds=settings.seeds_per_trial)
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
        trial.set_user_attr("engine", trained.engine)  # e.g. why a CUDA graph could not be captured
        acc = curve[-1]
        trial.set_user_attr("converged", acc >= settings.target_accuracy)
        return (acc, n) if pareto else acc

    return objective


def run_worker(name: str, storage: str, run: Run, n_trials: int | None, timeout: float | None, worker: int, threads: int | None) -> None:
    """One process's share of the search (also the whole search when --workers is 1)."""
    if threads:
        torch.set_num_threads(threads)
    prefix = f"[w{worker}] " if threads else ""
    device = resolve_device(run.device)
    study = open_study(name, storage)
    settings = study_settings(study)
    study.sampler = optuna.samplers.TPESampler(seed=settings.seed + worker)
    data = load_data(run.data_dir, device, val_size=settings.val_size, train_size=settings.train_size)
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


def search(name: str, storage: str, settings: StudySettings, n_trials: int | None, timeout: float | None, run: Run = Run(),
           given: dict[str, Any] | None = None) -> optuna.Study:
    """Run (or resume) a study; with run.workers > 1, that many processes share the storage."""
    study = open_study(name, storage, settings, given)
    workers = run.workers
    if workers <= 1:
        run_worker(name, storage, run, n_trials, timeout, 0, None)
        return study
    shares = [None] * workers if n_trials is None else [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=((name, storage, run, share, timeout, i, threads),)) for i, share in enumerate(shares) if share != 0]
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
