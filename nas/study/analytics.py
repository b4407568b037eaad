"""What a study says, without torch: trial counts by outcome, the Pareto front, the best trial,
the convergence rule and its replay on finished curves, and a text summary.

`nas report`, `nas best`, the dashboard notes and the search's progress lines all read a study
through this module, so they always agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.arch.budgets import Resource, resource
from nas.study import levels
from nas.study.settings import StudySettings, rung_epochs


def study_settings(study: optuna.Study) -> StudySettings:
    return StudySettings.from_dict(study.user_attrs["settings"], f"study {study.study_name!r}")


@dataclass(frozen=True)
class ConvergenceRule:
    """Prune a trial whose validation accuracy lags a straight line from target - slack (at
    epoch 0) up to the target (at the last epoch), judged only from a fraction `start` of the
    epochs on: OneCycle's high-learning-rate phase makes early accuracy noisy. The defaults
    (StudySettings.prune_start/prune_slack) are the most saving rule that discarded no eventual
    winner when nine candidates were replayed on 24 fully trained curves (README, "Measured");
    judging from half-way lost the seed."""

    target: float
    max_epochs: int
    slack: float = 0.06
    start: float = 0.75

    @classmethod
    def of(cls, settings: StudySettings) -> ConvergenceRule:
        return cls(settings.target_accuracy, settings.max_epochs, settings.prune_slack, settings.prune_start)

    def first_epoch(self) -> int:
        return max(1, math.ceil(self.start * self.max_epochs))

    def needed(self, epoch: int) -> float:
        return self.target - self.slack * (1 - epoch / self.max_epochs)

    def should_prune(self, epoch: int, val_acc: float) -> bool:
        return self.first_epoch() <= epoch < self.max_epochs and val_acc < self.needed(epoch)


@dataclass(frozen=True)
class ParetoRule:
    """Successive halving in the Pareto sense, for a search whose trials differ in cost: at each
    rung (an epoch), a trial is compared with the trials that reached the same rung at no larger
    cost (the minimised resource), and stopped when fewer than a 1/eta share of them are below
    its accuracy there, i.e. when it is not in the top 1/eta of its cheaper-or-equal peers. Nothing
    is stopped at a rung until 2 * eta such peers have reached it, and a trial cheaper than every
    other has no peers, so the small end of the front is never cut. Peers are read from the study,
    so workers on other machines share them; the live search and the replay (replay_pareto) call
    the same `should_stop`."""

    rungs: tuple[int, ...]  # epochs, 1-based
    eta: float = 3.0

    @classmethod
    def of(cls, settings: StudySettings) -> ParetoRule:
        return cls(settings.stop_epochs(), settings.stop_eta)

    def should_stop(self, epoch: int, acc: float, cost: float, peers: Sequence[tuple[float, float]]) -> bool:
        """peers: (accuracy at this epoch, cost) of the other trials that reached it."""
        if epoch not in self.rungs:
            return False
        comparable = [a for a, c in peers if c <= cost]
        if len(comparable) < 2 * self.eta:
            return False
        better = sum(a > acc for a in comparable)
        return better > len(comparable) * (1 - 1 / self.eta)


def peers_at(
    trials: list[FrozenTrial], epoch: int, r: Resource, exclude: int | None = None
) -> list[tuple[float, float]]:
    """(accuracy at `epoch`, cost) of the trials whose stored curve reaches it."""
    return [
        (t.user_attrs["curve"][epoch - 1], r.value(t.user_attrs))
        for t in trials
        if t.number != exclude and len(t.user_attrs.get("curve") or []) >= epoch and "arch" in t.user_attrs
    ]


def exempt(t: FrozenTrial) -> bool:
    """Built-in architectures and retries are never stopped early."""
    return "seed_arch" in t.user_attrs or "retry_of" in t.user_attrs


def replay_pareto(study: optuna.Study, rule: ParetoRule) -> dict[str, Any]:
    """The Pareto rule replayed on a study searched with --pruning observe or off: trials are taken
    in the order they were numbered (the order they started), each compared with the curves of the
    trials before it as far as the rule let those train. Reports the training seconds it would have
    saved, the trials it stops, and those of them that met the target or are on the final Pareto
    front of complete trials (what it must not lose)."""
    settings, r = study_settings(study), minimized(study)
    full = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(t.user_attrs.get("curve", [])) == settings.max_epochs
    ]
    front = {t.number for t in pareto_front(study)}
    seen: list[tuple[FrozenTrial, int]] = []  # (trial, epochs it was let train)
    saved, stopped, lost, missed = 0.0, [], [], []
    for t in sorted(full, key=lambda t: t.number):
        curve, cost, until = t.user_attrs["curve"], r.value(t.user_attrs), settings.max_epochs
        if not exempt(t):
            for epoch in rule.rungs:
                peers = [
                    (p.user_attrs["curve"][epoch - 1], r.value(p.user_attrs)) for p, reached in seen if reached >= epoch
                ]
                if rule.should_stop(epoch, curve[epoch - 1], cost, peers):
                    until = epoch
                    break
        seen.append((t, until))
        if until < settings.max_epochs:
            stopped.append(t.number)
            saved += sum(t.user_attrs["epoch_seconds"][until:])
            if t.number in front:
                lost.append(t.number)
            if curve[-1] >= settings.target_accuracy:
                missed.append(t.number)
    spent = sum(sum(t.user_attrs["epoch_seconds"]) for t in full)
    return {
        "trials": len(full),
        "stopped": len(stopped),
        "seconds": spent,
        "saved": saved,
        "front_lost": lost,
        "target_lost": missed,
    }


def pareto_replays(
    study: optuna.Study, rung_sets: list[tuple[float, ...]], etas: tuple[float, ...] = (2.0, 3.0, 4.0)
) -> list[dict[str, Any]]:
    """Candidate Pareto rules (rungs as fractions of the epochs) replayed on a study's full curves."""
    settings = study_settings(study)
    rows, seen = [], set()
    for fractions in rung_sets:
        epochs = rung_epochs(fractions, settings.max_epochs)
        if epochs in seen or not epochs:  # two sets of fractions can fall on the same epochs
            continue
        seen.add(epochs)
        for eta in etas:
            result = replay_pareto(study, ParetoRule(epochs, eta))
            if result["trials"]:
                rows.append({"rungs": fractions, "epochs": epochs, "eta": eta, **result})
    return rows


OUTCOMES = (
    "complete",
    "converged",
    "pruned_budget",
    "pruned_invalid",
    "pruned_convergence",
    "pruned_pareto",
    "pruned_floor",
    "failed",
    "running",
)


def outcome(t: FrozenTrial) -> str:
    """One of OUTCOMES (a complete trial is 'complete'; 'converged' is counted on top)."""
    if t.state == TrialState.COMPLETE:
        return "complete"
    if t.state == TrialState.PRUNED:
        return "pruned_" + levels.prune_reason(t)[0]
    if t.state == TrialState.FAIL:
        return "failed"
    return "running"


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: complete (converged or not), pruned by budget / invalid / convergence,
    failed; "rerun" counts the failed ones that were stopped and enqueued again (an interrupt, a
    lost or restarting worker), which are not failures of their configuration."""
    out = dict.fromkeys(OUTCOMES, 0) | {"rerun": 0}
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    for t in trials:
        rerun = t.state == TrialState.FAIL and t.number in retried
        out["rerun" if rerun else outcome(t)] += 1
        out["converged"] += bool(t.state == TrialState.COMPLETE and t.user_attrs.get("converged"))
    return out


def untrained_builtins(study: optuna.Study) -> list[str]:
    """Built-in networks still waiting in the queue (the --trials goal was met before them)."""
    return [
        t.user_attrs["seed_arch"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if "seed_arch" in t.user_attrs
    ]


def minimized(study: optuna.Study) -> Resource:
    """The resource the study's Pareto front and best trial minimise (--minimize)."""
    return resource(study_settings(study).minimize)


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials no other complete trial beats on both accuracy and the minimised resource."""
    r = minimized(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    points = [(t.values[0], r.value(t.user_attrs)) for t in done]
    front = [(done[i], points[i][1]) for i in sorted(levels.non_dominated(points))]  # trial order within a size
    return [t for t, _ in sorted(front, key=lambda pair: pair[1])]


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The search's rule: the smallest complete trial (in the minimised resource) whose validation
    accuracy meets the target (in accuracy mode: the most accurate complete trial)."""
    settings, r = study_settings(study), minimized(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if settings.objective == "accuracy":
        return max(done, key=lambda t: (t.values[0], -r.value(t.user_attrs)), default=None)
    ok = [t for t in done if t.values[0] >= settings.target_accuracy]
    return min(ok, key=lambda t: (r.value(t.user_attrs), -t.values[0]), default=None)


def describe_trial(t: FrozenTrial, r: Resource | None = None) -> str:
    """The trial's accuracy and parameters, and the minimised resource `r` when it is another."""
    size = f"{t.user_attrs['params']:,} params"
    if r is not None and r.name != "params":
        size += f", {r.label} {r.format(r.value(t.user_attrs))}"
    return f"trial {t.number}: {100 * t.values[0]:.2f} % with {size}"


def replay_rule(study: optuna.Study, rule: ConvergenceRule) -> dict[str, Any]:
    """Apply a convergence rule after the fact to every trial that trained all its epochs
    (a study searched with --pruning observe or off): training seconds it would save, and the
    trials it would wrongly discard (pruned, yet they ended at or above the target)."""
    full = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(t.user_attrs.get("curve", [])) == rule.max_epochs
    ]
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


def rule_replays(
    study: optuna.Study,
    starts: tuple[float, ...] = (0.25, 0.5, 0.75),
    slacks: tuple[float, ...] = (0.03, 0.06, 0.1),
) -> list[dict[str, Any]]:
    """Candidate convergence rules replayed on the trials that trained all their epochs."""
    settings = study_settings(study)
    rows = []
    for start in starts:
        for slack in slacks:
            r = replay_rule(study, ConvergenceRule(settings.target_accuracy, settings.max_epochs, slack, start))
            if r["trials"]:
                rows.append({"start": start, "slack": slack, **r})
    return rows


def pruning_savings(study: optuna.Study) -> dict[str, Any]:
    """What the convergence and Pareto rules save (or, in observe mode, would save) and whether they
    would have discarded a trial that ended up meeting the target."""
    settings = study_settings(study)
    trained = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("epoch_seconds")]
    spent = sum(sum(t.user_attrs["epoch_seconds"]) for t in trained)
    flagged = [t for t in trained if "would_prune_epoch" in t.user_attrs or "would_stop_epoch" in t.user_attrs]
    saved = 0.0
    for t in flagged:
        secs = t.user_attrs["epoch_seconds"]
        done = min(t.user_attrs.get(k, settings.max_epochs) for k in ("would_prune_epoch", "would_stop_epoch"))
        per_epoch = sum(secs[:done]) / done
        saved += per_epoch * (settings.max_epochs - done) if t.state == TrialState.PRUNED else sum(secs[done:])
    wrongly = [t.number for t in flagged if t.state == TrialState.COMPLETE and t.user_attrs.get("converged")]
    total = spent + saved if settings.pruning == "on" else spent  # with pruning on, the saved epochs never ran
    return {
        "mode": settings.pruning,
        "trained_trials": len(trained),
        "flagged": len(flagged),
        "train_seconds": spent,
        "seconds_saved": saved,
        "saved_fraction": saved / total if total else 0.0,
        "flagged_but_converged": wrongly,
    }


def count(n: int, word: str) -> str:
    """`1 epoch`, `3 epochs`, `1,000 trials`."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def elapsed(start: float) -> str:
    return duration(time.time() - start)


def duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def over_budget(study: optuna.Study) -> dict[str, int]:
    """Budget-pruned trials by the resource they exceeded (a trial over two limits counts for both)."""
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        for name in t.user_attrs.get("over_budget", ["params"] if outcome(t) == "pruned_budget" else []):
            out[name] = out.get(name, 0) + 1
    return out


def counts_line(study: optuna.Study) -> str:
    """The trials by outcome, in the one line that the summary, the study's note and the report share."""
    c, over = counts(study), over_budget(study)
    why = f" ({', '.join(f'{k} {v}' for k, v in over.items())})" if over else ""
    return (
        f"{c['complete']} complete ({c['converged']} reached the target), "
        f"pruned {c['pruned_budget']} by budget{why}, {c['pruned_invalid']} invalid, "
        f"{c['pruned_convergence']} by convergence, {c['pruned_pareto']} by the Pareto rule, {c['failed']} failed"
        + (f", {c['pruned_floor']} promotions under the floor" if c["pruned_floor"] else "")
        + (f" ({c['rerun']} more stopped and run again)" if c["rerun"] else "")
        + (f", {c['running']} running or waiting" if c["running"] else "")
    )


def summary(study: optuna.Study, best_line: bool = True) -> str:
    """Counts, Pareto front and best trial as the lines `nas search`, `nas best` and `nas report` print
    (`nas best` leaves the best line out when there is none: its error says so, once)."""
    lines = [f"trials: {counts_line(study)}"]
    ladder = study_settings(study).ladder
    if len(ladder) > 1:
        lines[0] = f"level {len(ladder) - 1} (the top: {ladder[-1][0]} epochs x {ladder[-1][1]:,} images) " + lines[0]
        lines[0:0] = levels.level_lines(study, ladder)
    if seconds := levels.searched(study):
        lines.append(f"searched for {duration(seconds)} in all (every run and machine)")
    waiting = untrained_builtins(study)
    if waiting:
        lines.append(
            f"built-ins not trained yet (the --trials goal came first): {', '.join(waiting)}; "
            "a higher --trials trains them"
        )
    front, r = pareto_front(study), minimized(study)
    if front:
        extra = r.name != "params"
        lines.append(f"Pareto front (validation accuracy vs {r.label}):")
        lines.append(
            f"  {'trial':>5}  {'params':>8}  "
            + (f"{r.label:>22}  " if extra else "")
            + f"{'val acc':>8}  {'RF':>4}  note"
        )
        for t in front:
            note = "seed" if "seed_arch" in t.user_attrs else ""
            size = f"{r.format(r.value(t.user_attrs)):>22}  " if extra else ""
            lines.append(
                f"  {t.number:>5}  {t.user_attrs['params']:>8,}  {size}{100 * t.values[0]:>7.2f}%  "
                f"{t.user_attrs['receptive_field']:>4}  {note}"
            )
    best = best_trial(study)
    if best:
        lines.append(f"best: {describe_trial(best, r)}")
    elif best_line:
        lines.append(f"best: no trial reached {100 * study_settings(study).target_accuracy:.2f} % yet")
    return "\n".join(lines)
