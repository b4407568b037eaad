"""A study's fidelity levels as one worker runs them (nas.study.levels says what they are): each
level's study, sampler and objective on its share of the data; the promotions; what waits; the
time the waiting promotions need; and the estimate of the whole search as it learns.

A study without lower levels is a ladder of one: its top level, run as every search always was.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from nas.data.tensors import Data, Split
from nas.search.checkpoints import Checkpoints
from nas.search.objective import Log, Objective
from nas.search.samplers import make_sampler
from nas.study import levels
from nas.study import storage as st
from nas.study.analytics import duration
from nas.study.settings import StudySettings


def sampler_seed(seed: int, worker: int) -> int:
    """Each worker's sampler seed: reproducible from --seed and the worker's number, and
    different for every worker of a study (nas.study.storage.next_worker), so no two draw alike."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{worker}".encode()).digest()[:4], "little")


def _first(split: Split, n: int) -> Split:
    """The first n images of a split: a lower level trains on a prefix of the top's images (nested subsets)."""
    return Split(split.x[:n], split.y[:n], split.fill)


@dataclass
class Level:
    """One level as a worker runs it: its study and its objective."""

    index: int
    study: optuna.Study
    objective: Objective


class Ladder:
    """Every level of one study for one worker, lowest first; the last is the top (the study itself)."""

    def __init__(
        self,
        top: optuna.Study,
        settings: StudySettings,
        number: int,
        data: Data,
        device: torch.device,
        log: Log,
        artifacts: Any = None,
        checkpoints: Callable[[str], Checkpoints] | None = None,
        restart: threading.Event | None = None,
    ):
        self.top, self.settings, self.log = top, settings, log
        self.held: set[tuple[int, int]] = set()  # (level, trial) held back by a promotion floor, told once
        ladder = settings.ladder
        self.levels: list[Level] = []
        for i, (epochs, images) in enumerate(ladder):
            is_top = i == len(ladder) - 1
            name = top.study_name if is_top else levels.level_name(top.study_name, epochs, images)
            study = top if is_top else st.RetriesFirst(study_name=name, storage=top._storage)
            s = settings.at_level(i)
            # Level 0 draws; a higher level's trials are promoted ones, every parameter fixed.
            seed = sampler_seed(s.seed, number)
            study.sampler = make_sampler(s.sampler, seed, s) if i == 0 else optuna.samplers.RandomSampler(seed)
            view = data if images >= len(data.train) else Data(_first(data.train, images), data.val)
            tagged: Log = log if len(ladder) == 1 else (lambda msg, i=i: log(f"L{i} {msg}"))  # type: ignore[misc]
            objective = Objective(s, view, device, tagged, artifacts, checkpoints(name) if checkpoints else None)
            objective.restart = restart
            if len(ladder) > 1:
                objective.level = i
                if not is_top:
                    objective.screen_eta = settings.promote_eta
                if i:
                    objective.below = self.levels[-1].study
            self.levels.append(Level(i, study, objective))

    def promote(self) -> None:
        """Enqueue one level up every trial the rule promotes now (nas.study.levels.promotable). Call
        it under the study lock: each trial is then promoted once, whoever asks."""
        for lower, upper in zip(self.levels, self.levels[1:]):
            trials, above = lower.study.get_trials(deepcopy=False), upper.study.get_trials(deepcopy=False)
            o = lower.objective
            floor, promoted = levels.promotion_floor(trials, above), levels.parents(above)
            chosen = levels.promotable(trials, self.settings.promote_eta, o.minimized, o.pareto, promoted, floor)
            if floor is not None:
                share = levels.promotable(trials, self.settings.promote_eta, o.minimized, o.pareto, promoted)
                for t in share:
                    if t not in chosen and (lower.index, t.number) not in self.held:
                        self.held.add((lower.index, t.number))
                        self.log(
                            f"L{lower.index} [trial {t.number}] not promoted: {100 * t.values[0]:.2f} % val acc is no "
                            f"better than {100 * floor:.2f} %, a promoted trial's that level {upper.index} pruned"
                        )
            for t in chosen:
                upper.study.enqueue_trial(
                    t.params, user_attrs=levels.promotion_attrs(t, upper.index), skip_if_exists=False
                )
                self.log(
                    f"L{lower.index} [trial {t.number}] promoted to level {upper.index} "
                    f"({100 * t.values[0]:.2f} % val acc at level {lower.index}, {t.user_attrs['params']:,} params)"
                )

    def waiting_above(self) -> Level | None:
        """The highest level above 0 with a promotion waiting: those train before new draws."""
        for level in reversed(self.levels[1:]):
            if level.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                return level
        return None

    def running_below_top(self) -> bool:
        """Whether a trial runs below the top, which may yet be promoted."""
        return any(
            t.state == TrialState.RUNNING for lv in self.levels[:-1] for t in lv.study.get_trials(deepcopy=False)
        )

    def _each(self) -> list[float] | None:
        """Seconds a trial takes at each level: its mean so far, or level 0's scaled by the level's cost."""
        took = [levels.mean_seconds(level.study.get_trials(deepcopy=False)) for level in self.levels]
        ladder = self.settings.ladder
        first = took[0]
        if first is None:
            return None
        base = ladder[0][0] * ladder[0][1]
        return [t if t is not None else first * e * n / base for t, (e, n) in zip(took, ladder)]

    def promotions_need(self) -> float:
        """Seconds the promotions waiting above level 0 will take, shared among the trials running now."""
        each = self._each() or [0.0] * len(self.levels)
        need, running = 0.0, 0
        for level, seconds in zip(self.levels, each):
            trials = level.study.get_trials(deepcopy=False)
            running += sum(t.state == TrialState.RUNNING for t in trials)
            if level.index:
                need += seconds * sum(t.state == TrialState.WAITING for t in trials)
        return need / (running + 1)

    def estimate(self, goal: int | None) -> str | None:
        """The search's remaining training: the draws left at level 0 and, at each level up, 1/eta of
        what comes from below plus what waits or runs there. None before any trial trained."""
        each = self._each()
        if each is None:
            return None
        to_come: list[float] = []
        for level in self.levels:
            trials = level.study.get_trials(deepcopy=False)
            pending = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
            drawn = max(0, goal - st.finished(trials)) if level.index == 0 and goal else 0
            to_come.append(drawn + pending + (to_come[-1] / self.settings.promote_eta if to_come else 0))
        per = ", ".join(f"level {i} {duration(x)}" for i, x in enumerate(each))
        total = sum(c * x for c, x in zip(to_come, each))
        running = sum(t.state == TrialState.RUNNING for lv in self.levels for t in lv.study.get_trials(deepcopy=False))
        ends = time.strftime("%H:%M", time.localtime(time.time() + total / max(1, running)))
        line = f"estimate: a trial takes {per} (mean so far, or scaled by cost)"
        if goal:
            line += (
                f"; about {to_come[0]:.0f} trials to come at level 0 and {sum(to_come[1:]):.0f} above: "
                f"{duration(total)} of training for one worker, so with the {max(1, running)} trial(s) "
                f"running now it ends about {ends}"
            )
        hours = self.top.user_attrs.get("hours_goal")
        if hours is not None:
            line += f"; the time budget has {duration(max(0.0, hours * 3600 - levels.searched(self.top)))} left"
        return line


def plan_lines(study: optuna.Study, s: StudySettings) -> list[str]:
    """What the search will do, printed before it starts: its levels, and its time budget so far."""
    out = []
    if len(s.ladder) > 1:
        out.append(
            f"levels: {levels.describe(s.ladder)}; each level promotes the top 1/{s.promote_eta:g} of its trials "
            f"by {'Pareto rank' if s.objective == 'pareto' else 'accuracy'} (built-ins always); "
            "--trials counts architectures drawn at level 0"
        )
        studies = [*levels.lower_studies(study, s.ladder), study]
        took = [levels.mean_seconds(lv.get_trials(deepcopy=False)) if lv is not None else None for lv in studies]
        out.append(
            "a trial has taken "
            + ", ".join(f"level {i} {duration(x) if x is not None else '(none yet)'}" for i, x in enumerate(took))
            + " on average so far; the whole search is estimated after trials 1, 3 and every 10th"
        )
    hours = study.user_attrs.get("hours_goal")
    if hours is not None:
        spent = levels.searched(study)
        stop = "when what is left is what the waiting promotions need" if len(s.ladder) > 1 else "when it is spent"
        out.append(
            f"time budget: {hours:g} h of searching, {duration(spent)} spent in earlier runs; new draws stop {stop}"
        )
    return out
