"""The search: workers that ask the study for trials, train them and tell the results.

A study is its own source of truth (nas.study.settings, nas.study.storage): a worker on any machine reads
the settings from it. Each trial is pruned before training when it is over the budget or
invalid, reuses the result of an identical finished trial instead of training again, and is
pruned while training when it is not on course for the target. Everything a person needs to
review a trial is stored on it as user attributes.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.arch.budgets import constraints, resource, trial_attrs, violations
from nas.arch.spec import Arch, Costs, arch_to_json, costs, receptive_field
from nas.data import datasets
from nas.data.tensors import Data
from nas.data.tensors import load as load_data
from nas.errors import SpecError
from nas.search import interrupt, placement
from nas.search.checkpoints import Checkpoints
from nas.search.placement import Slot, plan_workers, visible_gpus, worker_cap
from nas.search.samplers import make_sampler
from nas.space.spaces import point_key, sample
from nas.study import notes
from nas.study import storage as st
from nas.study.analytics import (
    ConvergenceRule,
    ParetoRule,
    best_trial,
    describe_trial,
    duration,
    peers_at,
    study_settings,
)
from nas.study.settings import StudySettings
from nas.train.config import MIN_UPDATES, TrainConfig
from nas.train.engine import CHECKPOINT_SECONDS, Diverged, Epoch, RestartWorker, resolve_device, train

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Seconds between a trial's checkpoints; NAS_CHECKPOINT_SECONDS shortens it for tests.
CHECKPOINT_EVERY = float(os.environ.get("NAS_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS))

Log = Callable[[str], None]
EXEC: Callable[[str, list[str]], Any] = (
    os.execv
)  # how a worker process restarts (RestartWorker); a test records it instead


@dataclass(frozen=True)
class Run:
    """What belongs to one machine and one invocation, not to the study."""

    device: str = "auto"
    data_dir: str | None = None
    workers: int | None = None  # processes on this machine (nas.search.placement: default one per GPU, or 1)
    trials_per_gpu: int | None = (
        None  # trials each GPU runs at once (default nas.search.placement.DEFAULT_TRIALS_PER_GPU)
    )
    artifacts: str | None = None  # folder of the artifact store (default: next to a SQLite or journal file)
    dataset: str | None = None  # --dataset: where the study's data is on this machine (nas.data.datasets.for_study)


def sampler_seed(seed: int, worker: int) -> int:
    """Each worker's sampler seed: reproducible from --seed and the worker's number, and
    different for every worker of a study (nas.study.storage.next_worker), so no two draw alike."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{worker}".encode()).digest()[:4], "little")


class Objective:
    """One trial from sampling to its values; raises optuna.TrialPruned to prune."""

    def __init__(
        self,
        settings: StudySettings,
        data: Data,
        device: torch.device,
        log: Log,
        artifacts: Any = None,
        checkpoints: Checkpoints | None = None,
    ):
        self.settings, self.data, self.device, self.log, self.artifacts = settings, data, device, log, artifacts
        self.checkpoints = checkpoints
        self.space = settings.parsed_space
        self.rule = ConvergenceRule.of(settings)
        self.pareto_rule = ParetoRule.of(settings)
        self.pareto = settings.objective == "pareto"
        self.minimized = resource(settings.minimize)
        self.first_epoch: float | None = None  # seconds, for the estimate of the whole search
        self.progress: EpochBar | None = None  # set where one trial at a time prints to a terminal
        self.told_fit = False  # whether the log said that batches are fitted to the training set
        self.goal: int | None = None  # trials the study should reach, for that estimate
        self.restart: threading.Event | None = (
            None  # set when this worker process is about to restart: trials stop at their next epoch
        )
        self.left: int | None = None  # of which were not finished when this worker started

    def __call__(self, trial: optuna.Trial) -> Any:
        s = self.settings
        arch, drawn = sample(self.space, trial, s.max_epochs)
        cfg = s.trial_config(drawn)
        if cfg.batch_size != drawn.batch_size and not self.told_fit:
            self.told_fit = True
            self.log(
                f"batches are halved (here {drawn.batch_size} to {cfg.batch_size}) until a trial makes {MIN_UPDATES} updates on these "
                f"{len(self.data.train):,} images: large batches diverge in short runs; the stored train_config says what ran"
            )
        arch.name = f"trial_{trial.number}"
        try:
            c = costs(arch)
        except SpecError as e:
            self.constrain(trial, constraints(None, s))
            trial.set_user_attr("prune_reason", f"invalid: {e.problem}")
            self.log(f"[trial {trial.number}] PRUNED invalid architecture ({e.problem})")
            raise optuna.TrialPruned("invalid architecture") from None
        self.constrain(trial, constraints(c, s))
        key = point_key(arch, cfg, s.seeds_per_trial)
        for name, value in dict(
            **trial_attrs(c),
            receptive_field=receptive_field(arch),
            arch=arch_to_json(arch),
            train_config=cfg.to_dict(),
            device=str(self.device),
            config_key=key,
        ).items():
            trial.set_user_attr(name, value)
        if self.artifacts is not None:
            quietly(
                lambda: notes.upload_arch(trial.study, trial, self.artifacts), self.log, "storing the architecture file"
            )
        over = violations(c, s)
        if over:
            trial.set_user_attr("prune_reason", "budget: " + "; ".join(map(str, over)))
            trial.set_user_attr("over_budget", [v.resource.name for v in over])
            self.log(f"[trial {trial.number}] PRUNED over budget: {'; '.join(map(str, over))} (not trained)")
            raise optuna.TrialPruned(f"over budget: {'; '.join(map(str, over))}")
        same = self.finished_twin(trial, key)
        if same is not None:
            return self.reuse(trial, same)
        curve = self.fit(trial, arch, cfg, c, key)
        trial.set_user_attr("converged", curve[-1] >= s.target_accuracy)
        return (curve[-1], self.minimized.read(c)) if self.pareto else curve[-1]

    @staticmethod
    def constrain(trial: optuna.Trial, values: dict[str, float]) -> None:
        """The same constraint keys on every trial of a study (nas.arch.budgets.constraints)."""
        for name, value in values.items():
            trial.set_constraint(name, value)

    def finished_twin(self, trial: optuna.Trial, key: str) -> FrozenTrial | None:
        """A finished trial that trained exactly this (complete, or pruned for convergence)."""
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.user_attrs.get("config_key") == key and t.number != trial.number and "curve" in t.user_attrs:
                return t
        return None

    def reuse(self, trial: optuna.Trial, same: FrozenTrial) -> Any:
        """Take over an identical trial's result instead of training again, and say so."""
        for name in ("curve", "epoch_seconds", "converged", "would_prune_epoch", "would_stop_epoch", "prune_reason"):
            if name in same.user_attrs:
                trial.set_user_attr(name, same.user_attrs[name])
        trial.set_user_attr("duplicate_of", same.number)
        trial.set_user_attr("train_seconds", 0.0)
        self.log(
            f"[trial {trial.number}] same architecture and training as trial {same.number}: its result is reused, not retrained"
        )
        if same.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"as trial {same.number}")
        return tuple(same.values) if self.pareto else same.values[0]

    def fit(self, trial: optuna.Trial, arch: Arch, cfg: TrainConfig, c: Costs, key: str) -> list[float]:
        s, rule, n = self.settings, self.rule, c.params
        resume, meta = self.last_checkpoint(trial, key, cfg)
        curve: list[float] = []
        seconds: list[float] = []

        def record() -> None:
            trial.set_user_attr("curve", curve)
            trial.set_user_attr("epoch_seconds", seconds)
            trial.set_user_attr("train_seconds", sum(seconds))

        def add(e: Epoch) -> None:
            curve.append(e.val_acc)
            seconds.append(e.seconds)
            if not self.pareto:
                trial.report(e.val_acc, e.epoch)

        def judge(e: Epoch) -> None:
            """Prune the trial if it is not on course for the target (or, observing, say where it would have been)."""
            if (
                s.pruning != "off"
                and rule.should_prune(e.epoch, e.val_acc)
                and "would_prune_epoch" not in trial.user_attrs
            ):
                trial.set_user_attr("would_prune_epoch", e.epoch)
                if s.pruning == "on":
                    trial.set_user_attr("prune_reason", "convergence")
                    self.log(
                        f"[trial {trial.number}] PRUNED at epoch {e.epoch}: {100 * e.val_acc:.2f} % < {100 * rule.needed(e.epoch):.2f} % "
                        f"needed to be on course for {100 * s.target_accuracy:.2f} %"
                    )
                    raise optuna.TrialPruned(f"not converging at epoch {e.epoch}")
            if s.pruning != "off" and e.epoch in self.pareto_rule.rungs and "would_stop_epoch" not in trial.user_attrs:
                self.pareto_stop(trial, e, self.minimized.read(c))

        for e in resume.history if resume else ():  # the epochs the checkpoint holds, as they were judged then
            add(e)
            judge(e)

        def on_epoch(e: Epoch) -> None:
            if self.restart is not None and self.restart.is_set():
                raise RestartWorker("another trial of this worker process asked for a restart")
            try:  # live progress for the dashboard; `record` runs again, reliably, when the trial ends
                add(e)
                record()
            except Exception as err:  # noqa: BLE001
                if not st.transient(err):
                    raise
            self.log(
                f"[trial {trial.number}] {n:,} params  epoch {e.epoch:>2}/{cfg.epochs}  val acc {100 * e.val_acc:6.2f} %  loss {e.train_loss:.4f}  "
                f"{e.seconds:5.1f} s  ({duration(sum(seconds))} so far)"
            )
            if self.first_epoch is None:
                self.first_epoch = e.seconds
                self.log(self.estimate(e.seconds, cfg.epochs))
            judge(e)

        def keep(ckpt) -> None:  # a checkpoint that cannot be written costs only a longer resume
            quietly(
                lambda: self.checkpoints.save(key, ckpt, {**meta, "trial": trial.number}),
                self.log,
                "writing a checkpoint",
            )

        try:
            trained = train(
                arch,
                self.data,
                cfg,
                on_epoch,
                seeds=s.seeds_per_trial,
                on_progress=self.on_step,
                resume=resume,
                on_checkpoint=keep if self.checkpoints else None,
                checkpoint_seconds=CHECKPOINT_EVERY,
            )
        finally:
            if self.progress is not None:
                self.progress.close()  # an interrupted epoch's bar is not drawn again under the last line
            if curve:
                st.persist(record, self.log, "recording the learning curve")
        trial.set_user_attr("engine", trained.engine)  # e.g. why a CUDA graph could not be captured
        if len(trained.seeds) > 1:  # the curve is the mean over seeds; each seed's final accuracy too
            trial.set_user_attr("val_accs", trained.history[-1].val_accs)
        return curve

    def pareto_stop(self, trial: optuna.Trial, e: Epoch, cost: float) -> None:
        """The Pareto rule at a rung, against the trials of the study (any worker's) that reached it."""
        attrs = trial.user_attrs
        if "seed_arch" in attrs or "retry_of" in attrs:
            return
        trials = st.persist(lambda: trial.study.get_trials(deepcopy=False), self.log, "reading the peers of a trial")
        peers = peers_at(trials, e.epoch, self.minimized, exclude=trial.number)
        if not self.pareto_rule.should_stop(e.epoch, e.val_acc, cost, peers):
            return
        cheaper = [a for a, p in peers if p <= cost]
        why = (
            f"at epoch {e.epoch}, {sum(a > e.val_acc for a in cheaper)} of the {len(cheaper)} trials with no more {self.minimized.label} "
            f"were more accurate ({100 * e.val_acc:.2f} %; it must be in the top 1/{self.pareto_rule.eta:g})"
        )
        trial.set_user_attr("would_stop_epoch", e.epoch)
        if self.settings.pruning == "on":
            trial.set_user_attr("prune_reason", f"pareto: {why}")
            self.log(f"[trial {trial.number}] STOPPED {why}")
            raise optuna.TrialPruned(f"Pareto rule at epoch {e.epoch}")

    def on_step(self, done: int, total: int) -> None:
        interrupt.check()  # a Ctrl-C swallowed where it landed stops the trial here
        if self.progress is not None:
            self.progress(done, total)

    def last_checkpoint(self, trial: optuna.Trial, key: str, cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
        """The checkpoint this configuration left when an earlier run of it was interrupted or its
        worker died (None if there is none or it was made for other data), and what a checkpoint
        of this run is made for."""
        meta = {
            "device": self.device.type,
            "train": len(self.data.train),
            "val": len(self.data.val),
            "epochs": cfg.epochs,
            "seeds": self.settings.seeds_per_trial,
        }
        if self.checkpoints is None:
            return None, meta
        found = self.checkpoints.load(key, meta)
        if found.checkpoint is None:
            if found.problem:
                self.log(
                    f"[trial {trial.number}] a checkpoint of this configuration is not used ({found.problem}); training from the start"
                )
            return None, meta
        epoch = found.checkpoint.epoch
        trial.set_user_attr("resumed", {"epoch": epoch, "from_trial": found.trial})
        self.log(
            f"[trial {trial.number}] resuming after epoch {epoch}/{cfg.epochs} from the checkpoint trial {found.trial} left"
        )
        return found.checkpoint, meta

    def estimate(self, epoch_seconds: float, epochs: int) -> str:
        """What the first epoch on this device says about the whole search, with a hint when it is hours."""
        trial = epoch_seconds * epochs
        line = f"the first epoch took {epoch_seconds:.1f} s on {self.device}: a {epochs}-epoch trial takes about {duration(trial)}"
        left = self.left if self.left is not None else self.goal
        if left:
            line += f", the {left} trial{'s' if left != 1 else ''} left at most {duration(trial * left)} (pruned trials take less)"
            if trial * left > 3600:
                line += "; for a quicker search train on fewer images (--train-size 10000), for fewer epochs (--max-epochs 5), or on a GPU (--device cuda)"
        return line


class EpochBar:
    """A progress bar within epochs that take long (a CPU epoch of the default search takes
    10-100 s), drawn only on a terminal; log lines keep printing above it."""

    AFTER = 3.0  # seconds into an epoch before a bar is worth drawing

    def __init__(self) -> None:
        self.bar: Any = None
        self.began: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.bar is None:
            self.began = self.began or now
            if now - self.began < self.AFTER or done >= total:
                if done >= total:
                    self.began = None
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("epoch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("", total=total)
            self.bar.start()
        self.bar.update(self.task, completed=done, total=total)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Take the bar off the terminal (at an epoch's end, or when training stops midway)."""
        if self.bar is not None:
            self.bar.stop()
        self.bar, self.began = None, None


def quietly(action: Callable[[], Any], log: Log, what: str) -> None:
    """Review aids (notes, artifacts) must never stop a search: a failure is logged and passed over."""
    try:
        action()
    except Exception as e:  # noqa: BLE001
        log(f"note: {what} failed ({st.cause(e)}); the search goes on")


def fail_reason(e: BaseException) -> str:
    if isinstance(e, torch.OutOfMemoryError):
        return f"out of memory: {str(e).splitlines()[0]}"
    if isinstance(e, Diverged):
        return str(e)
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


class Worker:
    """One trial at a time from one study, until the study has enough finished trials, the
    deadline passes, or the process is stopped. Several Workers may share a process (several
    trials per GPU), each with its own sampler."""

    def __init__(
        self,
        name: str,
        loc: st.Location,
        study: optuna.Study,
        data: Data,
        device: torch.device,
        keeper: st.Keeper,
        log: Log,
        artifacts: Any = None,
        checkpoints: Checkpoints | None = None,
        restart: threading.Event | None = None,
    ):
        self.loc, self.keeper, self.log, self.checkpoints = loc, keeper, log, checkpoints
        self.restart = restart or threading.Event()  # shared by the Workers of a process
        self.study = st.RetriesFirst(study_name=name, storage=study._storage)
        self.settings = study_settings(self.study)
        number = st.next_worker(self.study, loc)
        self.study.sampler = make_sampler(
            self.settings.sampler, sampler_seed(self.settings.seed, number), self.settings
        )
        self.objective = Objective(self.settings, data, device, log, artifacts, checkpoints)
        self.objective.restart = self.restart
        self.current: optuna.Trial | None = None

    def run(self, goal: int | None, deadline: float | None) -> None:
        self.objective.goal = goal or st.persist(
            lambda: self.study.user_attrs.get("trials_goal"), self.log, "reading the study"
        )
        if self.objective.goal:
            done = st.persist(lambda: st.finished(self.study.get_trials(deepcopy=False)), self.log, "reading the study")
            self.objective.left = max(0, self.objective.goal - done)
        while (deadline is None or time.time() < deadline) and not self.restart.is_set():
            interrupt.check()
            trial = st.persist(lambda: self.next_trial(goal), self.log, "starting a trial")
            if trial is None:
                return
            if trial is False:
                time.sleep(
                    min(1.0, st.HEARTBEAT_SECONDS)
                )  # the last trials are running elsewhere; one may yet need a retry
                continue
            self.current = trial
            try:
                self.run_trial(trial)
            finally:
                self.keeper.untrack(trial._trial_id)
                self.current = None

    def next_trial(self, goal: int | None) -> optuna.Trial | bool | None:
        """A new trial, False to wait, None when the study has its trials. Under the study lock,
        so that however many workers ask, the study ends with exactly `goal` finished trials."""
        with st.study_lock(self.loc, self.study.study_name):
            goal = goal if goal is not None else self.study.user_attrs.get("trials_goal")
            if goal is not None:
                trials = self.study.get_trials(deepcopy=False)
                done = st.finished(trials)
                if done >= goal:
                    return None
                if done + sum(t.state == TrialState.RUNNING for t in trials) >= goal:
                    return False
            with interrupt.held():  # a trial once asked for is run, or recorded as interrupted
                trial = self.study.ask()
                self.keeper.track(trial._trial_id)
                with contextlib.suppress(Exception):  # for review only
                    trial.set_user_attr("worker", st.worker_name())
            return trial

    def run_trial(self, trial: optuna.Trial) -> None:
        values, state, again = None, TrialState.COMPLETE, False
        try:
            values = self.objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            self.interrupted(trial)
            raise
        except RestartWorker as e:
            self.restart.set()
            self.log(f"[trial {trial.number}] stopped and enqueued again: {e}")
            self.requeue(trial, f"its worker restarted: {e}", lost_worker=False)
            return
        except (
            UpdateFinishedTrialError
        ):  # this worker was cut off for longer than the grace: the trial is failed, its retry enqueued
            self.log(
                f"[trial {trial.number}] was failed as stale by another worker while it ran; its retry runs it again"
            )
            return
        except Exception as e:  # noqa: BLE001 - a failing trial is recorded and the search goes on
            if self.restart.is_set():  # the process's GPU state is suspect: not the trial's fault
                self.log(
                    f"[trial {trial.number}] stopped and enqueued again while its worker restarts ({fail_reason(e)})"
                )
                self.requeue(trial, f"its worker restarted: {fail_reason(e)}", lost_worker=False)
                return
            state, again = TrialState.FAIL, st.transient(e)  # the storage went away mid-trial: run it again
            reason = f"storage unreachable: {st.cause(e)}" if again else fail_reason(e)
            self.log(f"[trial {trial.number}] FAILED: {reason}{'; it will be retried' if again else ''}")
            st.persist(lambda: trial.set_user_attr("fail_reason", reason), self.log, "recording a failure")
        with interrupt.held():  # a finished trial's result is stored whole, even if Ctrl-C comes now
            t = self.tell(trial, values, state)
            if again:
                st.persist(
                    lambda: st.retry(self.study, self.study._storage.get_trial(trial._trial_id)),
                    self.log,
                    "enqueuing a retry",
                )
            elif self.checkpoints is not None and t is not None and "config_key" in t.user_attrs:
                quietly(
                    lambda: self.checkpoints.remove(t.user_attrs["config_key"]), self.log, "removing the checkpoint"
                )
        if t is not None:
            self.review(t)

    def tell(self, trial: optuna.Trial, values: Any, state: TrialState) -> FrozenTrial | None:
        """Store the result, waiting out a storage outage; if another worker failed the trial as
        stale meanwhile, the result is kept as a new trial rather than lost. Returns the trial as
        stored (None when it went to another trial)."""
        try:
            st.persist(lambda: self.study.tell(trial, values, state=state), self.log, "storing a result")
        except (ValueError, UpdateFinishedTrialError):
            frozen = self.study._storage.get_trial(trial._trial_id)
            if state == TrialState.FAIL or frozen.state != TrialState.FAIL:
                return None
            recovered = optuna.trial.create_trial(
                state=state,
                values=values if values is None or isinstance(values, (list, tuple)) else [values],
                params=frozen.params,
                distributions=frozen.distributions,
                user_attrs={
                    **{k: v for k, v in frozen.user_attrs.items() if k != "fail_reason"},
                    "recovered_from": frozen.number,
                },
            )
            st.persist(lambda: self.study.add_trial(recovered), self.log, "storing a recovered result")
            self.log(f"[trial {trial.number}] was failed as stale while it ran; its result is kept as a new trial")
            return None
        t = st.persist(lambda: self.study._storage.get_trial(trial._trial_id), self.log, "reading the result")
        if state == TrialState.COMPLETE:
            best = st.persist(lambda: best_trial(self.study), self.log, "reading the best trial")
            self.log(
                f"[trial {t.number}] COMPLETE {100 * t.values[0]:.2f} % val acc, {t.user_attrs['params']:,} params, "
                f"{t.user_attrs.get('train_seconds', 0):.0f} s; best so far: {describe_trial(best, self.objective.minimized) if best else 'none meets the target yet'}"
            )
        return t

    def review(self, t: FrozenTrial) -> None:
        """The dashboard's notes: the trial's own, and the study's (one writer at a time, under
        the study lock, since optuna-dashboard saves a note read-modify-write in chunks)."""

        def study_note() -> None:
            with st.study_lock(self.loc, self.study.study_name):
                notes.save_study_note(self.study)

        quietly(lambda: notes.save_trial_note(self.study, t), self.log, "writing the trial note")
        quietly(study_note, self.log, "writing the study note")

    def interrupted(self, trial: optuna.Trial) -> None:
        """Ctrl-C: record the trial as failed and enqueue it again (an interrupt is no lost worker:
        it does not count toward the retry cap), so a resumed search runs it first, from its last
        checkpoint."""
        self.requeue(trial, "interrupted (Ctrl-C)", lost_worker=False)

    def requeue(self, trial: optuna.Trial, reason: str, lost_worker: bool = True) -> None:
        """Record a trial this process stops as failed and enqueue a clean copy to run first;
        `lost_worker=False` when the trial did nothing wrong (an interrupt, a restarting worker), so
        it does not use up the retries of its configuration (nas.study.storage.MAX_RETRIES)."""
        with interrupt.held():
            try:
                trial.set_user_attr("fail_reason", reason)
                self.study.tell(trial, state=TrialState.FAIL)
                st.retry(self.study, self.study._storage.get_trial(trial._trial_id), lost_worker=lost_worker)
            except Exception:  # noqa: BLE001 - stopping must not fail; the reaper retries a trial left RUNNING
                pass


def work(
    name: str, url: str, run: Run, goal: int | None, deadline: float | None, slot: Slot | None = None, prefix: str = ""
) -> None:
    """One worker process: load the data once, then run the slot's trials at a time. When a trial
    raises RestartWorker (its CUDA state is suspect), every trial of the process stops at its next
    epoch and is re-enqueued, and the process is re-executed as `nas worker` (restart_command)."""
    if slot is not None:
        torch.set_num_threads(slot.threads)
    threads = slot.trials if slot is not None else 1
    loc = st.parse(url)
    log: Log = lambda msg: print(prefix + msg, flush=True)  # noqa: E731
    study = st.persist(
        lambda: st.open_study(name, url), log, "joining the study"
    )  # the parent checked it exists: wait out an outage
    settings = study_settings(study)
    device = resolve_device(run.device)
    ds = datasets.for_study(settings.dataset, run.dataset, run.data_dir, log)
    data = load_data(run.data_dir, device, val_size=settings.val_size, train_size=settings.train_size, dataset=ds)
    folder, artifacts = notes.artifact_store_for(url, run.artifacts)
    checkpoints = Checkpoints.of(url, name, folder)

    def reaped(t: FrozenTrial, retried: bool) -> None:
        quietly(lambda: notes.save_trial_note(study, t), log, "writing the trial note")
        if not retried and "config_key" in t.user_attrs:  # the configuration is given up: so is its checkpoint
            quietly(lambda: checkpoints.remove(t.user_attrs["config_key"]), log, "removing the checkpoint")

    restart = threading.Event()
    with st.Keeper(study, log, reaped) as keeper, interrupt.catching():
        workers = [
            st.persist(
                lambda: Worker(name, loc, study, data, device, keeper, log, artifacts, checkpoints, restart),
                log,
                "starting a worker",
            )
            for _ in range(threads)
        ]
        if threads == 1:
            if sys.stdout.isatty():
                workers[0].objective.progress = EpochBar()
            workers[0].run(goal, deadline)
        else:
            pool = [threading.Thread(target=w.run, args=(goal, deadline), daemon=True) for w in workers]
            for t in pool:
                t.start()
            try:
                for t in pool:
                    t.join()
            except KeyboardInterrupt:
                for w in workers:
                    if w.current is not None:
                        w.interrupted(w.current)
                raise
    if restart.is_set():
        cmd = restart_command(name, url, run, goal, deadline, slot)
        if cmd is None:
            log("the worker would restart, but its time is up")
            return
        log(
            f"this worker process restarts (its CUDA state is suspect after failed graph captures): {' '.join(cmd[1:])}"
        )
        sys.stdout.flush()
        sys.stderr.flush()
        EXEC(cmd[0], cmd)


def restart_command(
    name: str, url: str, run: Run, goal: int | None, deadline: float | None, slot: Slot | None
) -> list[str] | None:
    """The command that takes a restarting worker's place: `nas worker` on the same study, with the
    same per-run options, trials at a time, goal and deadline (None when the deadline has passed).
    It inherits this process's environment, so a worker pinned to a GPU stays on it."""
    cmd = [
        sys.executable,
        "-m",
        "nas",
        "worker",
        "--study-name",
        name,
        "--storage",
        url,
        "--device",
        run.device,
        "--workers",
        "1",
    ]
    if slot is not None and slot.gpu is not None:
        cmd += ["--trials-per-gpu", str(slot.trials)]
    if run.data_dir:
        cmd += ["--data-dir", run.data_dir]
    if run.dataset:
        cmd += ["--dataset", run.dataset]
    if run.artifacts:
        cmd += ["--artifacts", run.artifacts]
    if goal:
        cmd += ["--trials", str(goal)]
    if deadline is not None:
        left = deadline - time.time()
        if left < 1:
            return None
        cmd += ["--timeout", f"{left:.0f}"]
    return cmd


def _work_entry(args: tuple) -> None:
    try:
        work(*args)
    except KeyboardInterrupt:
        pass


def plan(run: Run, log: Log = print) -> list[Slot]:
    """This machine's worker processes (nas.search.placement): one per GPU running several trials at
    once, or on the CPU --workers processes (default 1) sharing the cores; more than the machine
    can run at once are not started, and the log says so."""
    device = resolve_device(run.device)
    gpus = visible_gpus(torch.cuda.device_count()) if device.type == "cuda" else []
    workers = run.workers
    if workers is not None:
        cap, why = worker_cap(len(gpus), run.trials_per_gpu)
        if workers > cap:
            log(f"warning: --workers {workers} is more than this machine runs at once ({why}); starting {cap}")
            workers = cap
    return plan_workers(gpus, workers, run.trials_per_gpu)


def search(
    name: str,
    url: str,
    settings: StudySettings | None,
    trials: int | None,
    timeout: float | None,
    run: Run = Run(),
    given: dict[str, Any] | None = None,
) -> optuna.Study:
    """Create or join a study and run workers on it until it has `trials` finished trials
    (or the stored goal), or `timeout` seconds have passed.

    Everything that can be wrong with the input is checked before the study is touched, so a
    failed start leaves nothing behind."""
    loc = st.parse(url)
    stored = st.stored_settings(name, url)  # None: a new study (or no such study, which open_study says)
    if stored is not None:
        stored.reconcile(given or {}, name)
    elif settings is not None:
        settings.check_reachable()
    slots = plan(run, lambda line: print(line, flush=True))
    if stored or settings:  # missing, corrupt or other data fails here, before any study exists
        datasets.for_study(
            (stored or settings).dataset, run.dataset, run.data_dir, lambda line: print(line, flush=True)
        )
    new_folder = loc.path is not None and not loc.path.parent.exists()
    study = st.open_study(name, url, settings, given)
    print(
        f"study {name!r} in {st.masked(url)}", flush=True
    )  # after opening: a study that cannot be opened is its error line alone
    if new_folder:
        print(f"created the folder {loc.path.parent}/ for the study storage", flush=True)
    if stored is None and settings is not None and "seed_archs" not in (given or {}) and settings.unfit_builtins():
        print(settings.unfit_builtins(), flush=True)
    if trials is not None and settings is not None:
        study.set_user_attr("trials_goal", trials)
    s, done = study_settings(study), st.finished(study.get_trials(deepcopy=False))
    goal = trials or study.user_attrs.get("trials_goal")
    print(
        f"budget {s.max_params:,} params, {s.max_epochs} epochs, target {100 * s.target_accuracy:.2f} % val acc, objective {s.objective}; "
        f"{done} finished so far{f', running until {goal}' if goal else ''}; {placement.describe(slots)}",
        flush=True,
    )
    deadline = time.time() + timeout if timeout else None
    if len(slots) == 1:  # in this process (its first GPU is the slot's)
        work(name, url, run, trials, deadline, slots[0])
        return study
    ctx = mp.get_context("spawn")
    procs = []
    for x in slots:
        with _environ(x.env):  # a spawned process starts with the environment of this moment: its GPU and threads
            p = ctx.Process(target=_work_entry, args=((name, url, run, trials, deadline, x, f"[w{x.worker}] "),))
            p.start()
        procs.append(p)
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


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
