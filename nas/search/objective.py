"""One trial from sampling to its values: the Objective each worker hands to Optuna.

Each trial is pruned before training when it is over the budget or invalid, reuses the result of an
identical finished trial instead of training again, and is pruned while training when it is not on
course for the target. Everything a person needs to review a trial is stored on it as user attributes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from nas.arch.budgets import constraints, resource, trial_attrs, violations
from nas.arch.spec import Arch, Costs, arch_to_json, costs, receptive_field
from nas.data.tensors import Data
from nas.errors import SpecError
from nas.search import interrupt
from nas.search.checkpoints import Checkpoints
from nas.search.progress import EpochBar
from nas.space.spaces import point_key, sample
from nas.study import levels, notes
from nas.study import storage as st
from nas.study.analytics import ConvergenceRule, ParetoRule, duration, peers_at
from nas.study.settings import StudySettings
from nas.train.config import MIN_UPDATES, TrainConfig
from nas.train.engine import CHECKPOINT_SECONDS, Checkpoint, Epoch, RestartWorker, train

# Seconds between a trial's checkpoints; NAS_CHECKPOINT_SECONDS shortens it for tests.
CHECKPOINT_EVERY = float(os.environ.get("NAS_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS))

Log = Callable[[str], None]


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
        # Set when this worker process is about to restart: trials stop at their next epoch.
        self.restart: threading.Event | None = None
        self.left: int | None = None  # of which were not finished when this worker started
        # Below the top level of a ladder: its promotion share 1/eta, which sets its convergence bar.
        self.screen_eta: float | None = None
        self.level: int | None = None  # its level, when the study has several (nas.study.levels)
        self.below: optuna.Study | None = None  # the level below, whose trials are promoted here

    def __call__(self, trial: optuna.Trial) -> Any:
        s = self.settings
        arch, drawn = sample(self.space, trial, s.max_epochs)
        cfg = s.trial_config(drawn)
        if cfg.batch_size != drawn.batch_size and not self.told_fit:
            self.told_fit = True
            self.log(
                f"batches are halved (here {drawn.batch_size} to {cfg.batch_size}) until a trial makes "
                f"{MIN_UPDATES} updates on these {len(self.data.train):,} images: large batches diverge in "
                "short runs; the stored train_config says what ran"
            )
        arch.name = f"trial_{trial.number}"
        try:
            c = costs(arch)
        except SpecError as e:
            self.constrain(trial, constraints(None, s))
            trial.set_user_attr("prune_reason", levels.pruned_for(levels.INVALID, e.problem))
            self.log(f"[trial {trial.number}] PRUNED invalid architecture ({e.problem})")
            raise optuna.TrialPruned("invalid architecture") from None
        self.constrain(trial, constraints(c, s))
        key = point_key(arch, cfg, s.seeds_per_trial, s.train_images)
        for name, value in dict(
            **trial_attrs(c),
            receptive_field=receptive_field(arch),
            arch=arch_to_json(arch),
            train_config=cfg.to_dict(),
            device=str(self.device),
            config_key=key,
            **({"level": self.level} if self.level is not None else {}),
        ).items():
            trial.set_user_attr(name, value)
        if self.artifacts is not None:
            quietly(
                lambda: notes.upload_arch(trial.study, trial, self.artifacts), self.log, "storing the architecture file"
            )
        over = violations(c, s)
        if over:
            said = "; ".join(map(str, over))
            trial.set_user_attr("prune_reason", levels.pruned_for(levels.BUDGET, said))
            trial.set_user_attr("over_budget", [v.resource.name for v in over])
            self.log(f"[trial {trial.number}] PRUNED over budget: {said} (not trained)")
            raise optuna.TrialPruned(f"over budget: {said}")
        held = self.under_floor(trial)
        if held:
            trial.set_user_attr("prune_reason", levels.pruned_for(levels.FLOOR, held))
            self.log(f"[trial {trial.number}] PRUNED before training: {held}")
            raise optuna.TrialPruned(held)
        same = self.finished_twin(trial, key)
        if same is not None:
            return self.reuse(trial, same)
        curve = self.fit(trial, arch, cfg, c, key)
        trial.set_user_attr("converged", curve[-1] >= s.target_accuracy)
        return (curve[-1], self.minimized.read(c)) if self.pareto else curve[-1]

    def under_floor(self, trial: optuna.Trial) -> str | None:
        """Why a promotion that waited here is no longer worth training, or None: its parent did no
        better below than a promoted trial this level has pruned since it was enqueued
        (nas.study.levels.promotion_floor, which holds back new promotions the same way)."""
        parent = trial.user_attrs.get("parent")
        if self.below is None or parent is None or "seed_arch" in trial.user_attrs:
            return None
        below = self.below.get_trials(deepcopy=False)
        floor = levels.promotion_floor(below, trial.study.get_trials(deepcopy=False))
        acc = next((t.values[0] for t in below if t.number == parent and t.state == TrialState.COMPLETE), None)
        if floor is None or acc is None or acc > floor:
            return None
        return (
            f"{100 * acc:.2f} % val acc at level {self.level - 1 if self.level else 0} is no better than "
            f"{100 * floor:.2f} %, a promoted trial's that this level pruned"
        )

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
            f"[trial {trial.number}] same architecture and training as trial {same.number}: "
            "its result is reused, not retrained"
        )
        if same.state == TrialState.PRUNED:
            raise optuna.TrialPruned(f"as trial {same.number}")
        return tuple(same.values) if self.pareto else same.values[0]

    def fit(self, trial: optuna.Trial, arch: Arch, cfg: TrainConfig, c: Costs, key: str) -> list[float]:
        s, rule, n = self.settings, self.rule_for(trial), c.params
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
                and rule is not None
                and rule.should_prune(e.epoch, e.val_acc)
                and "would_prune_epoch" not in trial.user_attrs
            ):
                trial.set_user_attr("would_prune_epoch", e.epoch)
                if s.pruning == "on":
                    trial.set_user_attr("prune_reason", levels.CONVERGENCE)
                    self.log(
                        f"[trial {trial.number}] PRUNED at epoch {e.epoch}: {100 * e.val_acc:.2f} % < "
                        f"{100 * rule.needed(e.epoch):.2f} % needed to be on course for {100 * rule.target:.2f} %"
                        + (" (this level's promotion bar)" if self.screen_eta is not None else "")
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
                f"[trial {trial.number}] {n:,} params  epoch {e.epoch:>2}/{cfg.epochs}  "
                f"val acc {100 * e.val_acc:6.2f} %  loss {e.train_loss:.4f}  "
                f"{e.seconds:5.1f} s  ({duration(sum(seconds))} so far)"
            )
            if self.first_epoch is None:
                self.first_epoch = e.seconds
                self.log(self.estimate(e.seconds, cfg.epochs))
            judge(e)

        def keep(ckpt: Checkpoint) -> None:  # a checkpoint that cannot be written costs only a longer resume
            store = self.checkpoints
            assert store is not None  # keep is offered to train only with a checkpoint store
            quietly(
                lambda: store.save(key, ckpt, {**meta, "trial": trial.number}),
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

    def rule_for(self, trial: optuna.Trial) -> ConvergenceRule | None:
        """The convergence rule a trial is judged by: the mission's (on course for the target) at the
        top level; below it, the same shape aimed at the level's own bar (nas.study.levels.screen_target),
        none until enough trials trained there to set one, and none for a built-in network."""
        if self.screen_eta is None:
            return self.rule
        if "seed_arch" in trial.user_attrs:  # a built-in is always promoted, so it always completes its level
            return None
        trials = st.persist(lambda: trial.study.get_trials(deepcopy=False), self.log, "reading the level's trials")
        target = levels.screen_target(trials, self.screen_eta, self.minimized, self.pareto)
        return None if target is None else replace(self.rule, target=target)

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
            f"at epoch {e.epoch}, {sum(a > e.val_acc for a in cheaper)} of the {len(cheaper)} trials "
            f"with no more {self.minimized.label} were more accurate ({100 * e.val_acc:.2f} %; "
            f"it must be in the top 1/{self.pareto_rule.eta:g})"
        )
        trial.set_user_attr("would_stop_epoch", e.epoch)
        if self.settings.pruning == "on":
            trial.set_user_attr("prune_reason", levels.pruned_for(levels.PARETO, why))
            self.log(f"[trial {trial.number}] STOPPED {why}")
            raise optuna.TrialPruned(f"Pareto rule at epoch {e.epoch}")

    def on_step(self, done: int, total: int) -> None:
        interrupt.check()  # a Ctrl-C swallowed where it landed stops the trial here
        if self.progress is not None:
            self.progress(done, total)

    def last_checkpoint(
        self, trial: optuna.Trial, key: str, cfg: TrainConfig
    ) -> tuple[Checkpoint | None, dict[str, Any]]:
        """The checkpoint this configuration left when an earlier run of it was interrupted or its
        worker died (None if there is none or it was made for other data), and what a checkpoint
        of this run is made for."""
        meta: dict[str, Any] = {
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
                    f"[trial {trial.number}] a checkpoint of this configuration is not used "
                    f"({found.problem}); training from the start"
                )
            return None, meta
        epoch = found.checkpoint.epoch
        trial.set_user_attr("resumed", {"epoch": epoch, "from_trial": found.trial})
        self.log(
            f"[trial {trial.number}] resuming after epoch {epoch}/{cfg.epochs} "
            f"from the checkpoint trial {found.trial} left"
        )
        return found.checkpoint, meta

    def estimate(self, epoch_seconds: float, epochs: int) -> str:
        """What the first epoch on this device says about the whole search, with a hint when it is hours."""
        trial = epoch_seconds * epochs
        line = (
            f"the first epoch took {epoch_seconds:.1f} s on {self.device}: "
            f"a {epochs}-epoch trial takes about {duration(trial)}"
        )
        left = self.left if self.left is not None else self.goal
        if left and self.level is None:  # a ladder's search is estimated whole (nas.search.ladder.Ladder.estimate)
            line += (
                f", the {left} trial{'s' if left != 1 else ''} left at most {duration(trial * left)} "
                "(pruned trials take less)"
            )
            if trial * left > 3600:
                line += (
                    "; for a quicker search train on fewer images (--train-size 10000), "
                    "for fewer epochs (--max-epochs 5), or on a GPU (--device cuda)"
                )
        return line


def quietly(action: Callable[[], Any], log: Log, what: str) -> None:
    """Review aids (notes, artifacts) must never stop a search: a failure is logged and passed over."""
    try:
        action()
    except Exception as e:  # noqa: BLE001
        log(f"note: {what} failed ({st.cause(e)}); the search goes on")
