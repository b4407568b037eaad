"""Fidelity levels: screen architectures cheaply, retrain the promising ones at the mission's
definition. Torch-free.

A level is (epochs, training images); the images of a lower level are the first ones of the same
training split (nested subsets), and every level is judged on the one validation split. The top
level is the study the user names (`mnist`), so its answer is the answer: `nas best`, `nas export`,
`nas report` and the dashboard read it as they read any study. Each lower level is an Optuna study
of its own in the same storage, named `mnist@4x20000`, so no sampler, Pareto front, best trial,
trial count, twin or checkpoint ever mixes two fidelities. Level 0's sampler draws architectures;
a higher level's trials are promoted ones, enqueued with their parent's parameters and a `parent`
attribute (the parent's trial number one level down).

Promotion is asynchronous successive halving in the Pareto sense (ASHA's rule, ranked by
non-dominated sorting): whenever a worker asks for a trial, once n >= 2 x eta trials trained at a
level, every trial there in the top ceil(n / eta) of them, by Pareto rank of (validation accuracy, the minimised
resource), ties by accuracy, and not promoted yet, is enqueued one level up. It runs under the
study lock, so each is promoted once however many workers ask. Built-in networks are always
promoted: they are the bar to beat. A level above that prunes for convergence (the mission's
rule at the top) also teaches a floor: a trial no better at its level than a promoted one the level
above pruned is not promoted (`promotion_floor`), since it would train there only to be pruned.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.arch.budgets import Resource
from nas.errors import SpecError

SEP = "@"  # between a study's name and a lower level's epochs x images
CLOCK = "nas:clock"  # study system attribute: seconds searched, summed over runs and machines
Ladder = tuple[tuple[int, int], ...]  # (epochs, images) per level, lowest first


def level_name(top: str, epochs: int, images: int) -> str:
    """The Optuna study of a lower level: `mnist@4x20000`."""
    return f"{top}{SEP}{epochs}x{images}"


def parse_levels(text: str) -> Ladder:
    """`--levels 4x20000` (comma-separated, lowest first) or `none` (one level: the top)."""
    if text.strip().lower() in ("none", "off", ""):
        return ()
    out = []
    for part in text.split(","):
        epochs, x, images = part.strip().lower().partition("x")
        if not x or not epochs.isdigit() or not images.replace("_", "").isdigit():
            raise SpecError(
                "--levels", text, "give the lower levels as EPOCHSxIMAGES, lowest first (e.g. 4x20000), or none"
            )
        out.append((int(epochs), int(images.replace("_", ""))))
    return tuple(out)


def describe(ladder: Ladder) -> str:
    """`4 epochs x 20,000 images -> 20 epochs x 50,000 images`."""
    return " -> ".join(f"{e} epochs x {n:,} images" for e, n in ladder)


def non_dominated(points: Sequence[tuple[float, float]], among: set[int] | None = None) -> set[int]:
    """Indices of the points (accuracy: more is better, cost: less is better) that no other point
    of `among` (default all) is at least as good as on both and different from: a Pareto front."""
    left = set(range(len(points))) if among is None else among
    return {
        i
        for i in left
        if not any(
            points[j][0] >= points[i][0] and points[j][1] <= points[i][1] and points[j] != points[i] for j in left
        )
    }


def pareto_ranks(points: Sequence[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting: 0 for the front, 1 for the front of what is left, and so on."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = non_dominated(points, left)
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def hypervolume(points: Sequence[tuple[float, float]], floor: float, ceiling: float) -> float:
    """Area the (accuracy, cost) points dominate, measured from (floor accuracy, ceiling cost): one
    figure that grows when a front gains accuracy or sheds cost, to compare searches by."""
    kept = sorted((c, a) for a, c in points if a > floor and c < ceiling)
    area, best = 0.0, floor
    for i, (cost, acc) in enumerate(kept):  # from the cheapest up, each step as high as the best so far
        best = max(best, acc)
        area += ((kept[i + 1][0] if i + 1 < len(kept) else ceiling) - cost) * (best - floor)
    return area


def trained(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials a level's share is taken from: those that trained (complete, or pruned while
    training); a trial pruned before training (over budget, invalid) never competed."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs.get("curve")]


# Why a trial was pruned, as its "prune_reason" says it: the kind, then what it was ("budget: parameters
# 13,000 > 12,000"). Over a budget and invalid: before training; held under the floor: before training at
# a level above the first; convergence: not on course for its level's bar; pareto: the Pareto rule.
BUDGET, INVALID, FLOOR, CONVERGENCE, PARETO = "budget", "invalid", "floor", "convergence", "pareto"


def pruned_for(kind: str, detail: str = "") -> str:
    """A prune reason as a trial stores it."""
    return f"{kind}: {detail}" if detail else kind


def prune_reason(t: FrozenTrial) -> tuple[str, str]:
    """Why a pruned trial was pruned, (kind, detail): CONVERGENCE for studies from before the
    reasons were recorded."""
    kind, _, detail = str(t.user_attrs.get("prune_reason", CONVERGENCE)).partition(":")
    return kind, detail.strip()


def promotion_floor(trials: Sequence[FrozenTrial], above: Sequence[FrozenTrial]) -> float | None:
    """The accuracy a trial of this level must beat to be promoted, learned from the level above
    (`above`): the best accuracy here of a trial whose promotion was pruned there for convergence,
    among those below every promoted trial that completed there (so a completed one that did no
    better here lowers it again). None while the level above has pruned none: with pruning
    observed or off it never does, and every promotion can become a result up there."""
    acc = {t.number: t.values[0] for t in trials if t.state == TrialState.COMPLETE}
    came = [(t, acc[t.user_attrs["parent"]]) for t in above if acc.get(t.user_attrs.get("parent", -1)) is not None]
    done = min((a for t, a in came if t.state == TrialState.COMPLETE), default=math.inf)
    pruned = [a for t, a in came if t.state == TrialState.PRUNED and prune_reason(t)[0] == CONVERGENCE]
    return max((a for a in pruned if a < done), default=None)


def promotable(
    trials: Sequence[FrozenTrial],
    eta: float,
    r: Resource,
    pareto: bool,
    promoted: set[int],
    floor: float | None = None,
) -> list[FrozenTrial]:
    """The trials of one level to promote now: complete, in the top ceil(n / eta) of the n trained at
    this level (by Pareto rank, then accuracy; by accuracy alone with objective accuracy) once n is
    at least 2 x eta and above `floor` (`promotion_floor`), or built in, and not in `promoted` (the
    trial numbers already promoted), in the order to run them."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and "arch" in t.user_attrs]
    n = len(trained(trials))
    share = math.ceil(n / eta) if n >= 2 * eta else 0  # no share of too few: the first draw is no winner
    points = [(t.values[0], r.value(t.user_attrs)) for t in done]
    ranks = pareto_ranks(points) if pareto else [0] * len(done)
    order = sorted(range(len(done)), key=lambda i: (ranks[i], -points[i][0], points[i][1], done[i].number))
    top = {done[i].number for i in order[:share] if floor is None or points[i][0] > floor}
    chosen = [done[i] for i in order if done[i].number in top or "seed_arch" in done[i].user_attrs]
    return [t for t in chosen if t.number not in promoted]


def screen_target(trials: Sequence[FrozenTrial], eta: float, r: Resource, pareto: bool) -> float | None:
    """A lower level's convergence target, from its own results (never the mission's target, which
    no screening trial reaches): the lowest final accuracy among the trials its rule would promote
    now, once 2 x eta trials have trained there (None before: nothing is pruned)."""
    if len(trained(trials)) < 2 * eta:
        return None
    top = [t for t in promotable(trials, eta, r, pareto, set()) if "seed_arch" not in t.user_attrs]
    return min((t.values[0] for t in top), default=None)


def tick(storage: optuna.storages.BaseStorage, study_id: int, gap: float, now: float | None = None) -> float:
    """Add the time since the last tick of any process to the study's searching clock, unless it
    is longer than `gap` (nobody was searching meanwhile), and return the total. Call it under the
    study lock, every few seconds while a worker runs: the clock then counts wall-clock time during
    which at least one worker searched, summed over resumed runs and machines."""
    now = time.time() if now is None else now
    clock = storage.get_study_system_attrs(study_id).get(CLOCK) or {"seconds": 0.0, "last": None}
    last = clock["last"]
    seconds = clock["seconds"] + (now - last if last is not None and 0 <= now - last <= gap else 0.0)
    storage.set_study_system_attr(study_id, CLOCK, {"seconds": seconds, "last": now})
    return seconds


def searched(study: optuna.Study) -> float:
    """Seconds the study has been searched (tick), over every run and machine."""
    clock = study._storage.get_study_system_attrs(study._study_id).get(CLOCK)
    return float(clock["seconds"]) if clock else 0.0


def lower_studies(study: optuna.Study, ladder: Ladder) -> list[optuna.Study | None]:
    """The lower levels' studies of a top-level study, lowest first (None for one not made yet)."""
    out: list[optuna.Study | None] = []
    for epochs, images in ladder[:-1]:
        try:
            out.append(
                optuna.load_study(study_name=level_name(study.study_name, epochs, images), storage=study._storage)
            )
        except KeyError:
            out.append(None)
    return out


def level_lines(study: optuna.Study, ladder: Ladder) -> list[str]:
    """One line per lower level for the summary: its study, what trained there, what went up."""
    lines = []
    for i, (lower, (epochs, images)) in enumerate(zip(lower_studies(study, ladder), ladder)):
        if lower is None:
            continue
        trials = lower.get_trials(deepcopy=False)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        name = level_name(study.study_name, epochs, images)
        floor = promotion_floor(trials, trials_above(study, ladder, i))
        lines.append(
            f"level {i} ({epochs} epochs x {images:,} images, study {name!r}): {len(trained(trials))} trained, "
            f"{done} complete, {len(promoted_from(study, ladder, i))} promoted"
            + (f", promoted only above {100 * floor:.2f} % (level {i + 1} pruned one no better)" if floor else "")
        )
    return lines


def trials_above(study: optuna.Study, ladder: Ladder, level: int) -> list[FrozenTrial]:
    """The trials one level above `level` (none while its study is not made)."""
    up = study if level + 1 == len(ladder) - 1 else lower_studies(study, ladder)[level + 1]
    return up.get_trials(deepcopy=False) if up is not None else []


def promoted_from(study: optuna.Study, ladder: Ladder, level: int) -> set[int]:
    """Trial numbers of `level` already promoted one level up (the `parent` of a trial there)."""
    return parents(trials_above(study, ladder, level))


def parents(trials: Sequence[FrozenTrial]) -> set[int]:
    return {t.user_attrs["parent"] for t in trials if "parent" in t.user_attrs}


def promotion_attrs(parent: FrozenTrial, level: int) -> dict[str, Any]:
    """What a promoted trial carries: where it came from, and a built-in's name."""
    kept = {"seed_arch": parent.user_attrs["seed_arch"]} if "seed_arch" in parent.user_attrs else {}
    return {**kept, "parent": parent.number, "level": level}


def mean_seconds(trials: Sequence[FrozenTrial]) -> float | None:
    """Mean training seconds of the trials that trained (None before any did)."""
    seconds = [t.user_attrs["train_seconds"] for t in trials if t.user_attrs.get("train_seconds")]
    return sum(seconds) / len(seconds) if seconds else None
