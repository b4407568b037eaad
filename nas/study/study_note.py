"""The study's note, in Markdown for optuna-dashboard: what is searched, how far the search
got, the best trial, the Pareto front, the settings and the search space. Torch-free.

`settings_rows` and `time_spent` (and analytics' `counts_line`) also feed the report's header (nas.study.report),
so the note and the page agree. nas.study.notes writes the note to the study.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.arch.budgets import RESOURCES
from nas.space.spaces import architecture_count
from nas.study.analytics import (
    ConvergenceRule,
    best_trial,
    count,
    counts_line,
    duration,
    pareto_front,
    study_settings,
)
from nas.study.levels import describe
from nas.study.settings import StudySettings
from nas.study.trial_note import arch_line, pct, table, trial_arch


def _space_rows(settings: StudySettings) -> list[tuple[str, str]]:
    s = settings.parsed_space

    def j(xs: Iterable[Any]) -> str:
        return ", ".join(map(str, xs))

    rows = [
        ("stages", j(s.stages)),
        ("kernel", j(s.kernel)),
        ("pool", j(s.pool)),
        ("BN/ReLU order", j(s.order)),
        ("dropout", j(s.dropout)),
        ("head", j(s.head) + (f" (conv_gap kernel {j(s.head_kernel)})" if "conv_gap" in s.head else "")),
    ]
    for i, st in enumerate(s.stage, 1):
        rows.append(
            (
                f"stage {i}",
                f"{st.blocks[0]}-{st.blocks[1]} blocks of {j(st.channels)} channels, padding {j(st.padding)}"
                + (", optional 1x1 transition" if True in st.transition else ""),
            )
        )
    rows.append(
        (
            "training",
            f"optimizer {j(s.optimizer)}; lr "
            + "; ".join(f"{o} {lo:g}-{hi:g}" for o, (lo, hi) in s.lr.items())
            + f"; batch {j(s.batch_size)}; augment {j(s.augment)}; label smoothing {j(s.label_smoothing)}",
        )
    )
    rows.append(("size", f"{architecture_count(s):.2e} architectures (times the training choices)"))
    return rows


def front_rows(study: optuna.Study, best: FrozenTrial | None, code: Callable[[str], str]) -> list[tuple[Any, ...]]:
    """The Pareto front as table rows (trial, params, val acc, RF, architecture, tags), the
    architecture line written as `code` puts it (Markdown here, HTML in the report)."""
    rows = []
    for t in pareto_front(study):
        arch = trial_arch(t)
        is_seed, is_best = "seed_arch" in t.user_attrs, best is not None and t.number == best.number
        tags = ", ".join(x for x in ("seed" if is_seed else "", "best" if is_best else "") if x)
        rows.append(
            (
                t.number,
                f"{t.user_attrs['params']:,}",
                pct(t.values[0]),
                t.user_attrs.get("receptive_field", ""),
                code(arch_line(arch)) if arch else "",
                tags,
            )
        )
    return rows


def settings_rows(settings: StudySettings) -> list[tuple[str, str]]:
    """The study's settings as (what, value) for the study note and the report."""
    rule = ConvergenceRule.of(settings)
    pruning = {
        "on": f"on: from epoch {rule.first_epoch()}, a trial below a line from target − {settings.prune_slack:g} "
        f"(epoch 0) to the target (epoch {settings.max_epochs}) is pruned",
        "observe": f"observe: where the rule (from epoch {rule.first_epoch()}, slack {settings.prune_slack:g}) "
        "would prune is recorded, trials train on",
        "off": "off",
    }[settings.pruning]
    limits = [f"{r.label} {r.format(limit)}" for r in RESOURCES if (limit := r.limit(settings)) is not None]
    minimized = next(r for r in RESOURCES if r.name == settings.minimize)
    assert settings.seed_archs is not None  # filled in on construction
    return [
        ("budget", f"{', '.join(limits)} (larger networks are pruned before training)"),
        ("epochs", str(settings.max_epochs)),
        ("target", f"{pct(settings.target_accuracy)} validation accuracy"),
        (
            "objective",
            {
                "pareto": f"pareto: maximise validation accuracy, minimise {minimized.label}",
                "accuracy": "accuracy under the budget",
            }[settings.objective],
        ),
        ("convergence pruning", pruning),
        (
            "data",
            f"{'all' if settings.train_size is None else f'{settings.train_size:,}'} training images, "
            f"{settings.val_size:,} held out for validation",
        ),
        *(
            [
                (
                    "levels",
                    f"{describe(settings.ladder)}; each promotes the top 1/{settings.promote_eta:g} by Pareto rank",
                )
            ]
            if len(settings.ladder) > 1
            else []
        ),
        ("seeds per trial", str(settings.seeds_per_trial)),
        ("sampler seed", str(settings.seed)),
        ("seed networks", ", ".join(f"`{d.get('name', '?')}`" for d in settings.seed_archs) or "none"),
    ]


def time_spent(study: optuna.Study) -> tuple[float, float]:
    """(seconds of training summed over trials, wall-clock seconds from the first start to the last end)."""
    trials = study.get_trials(deepcopy=False)
    train = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    return train, wall


def study_note(study: optuna.Study) -> str:
    """The study in Markdown: settings, search space, progress, the current best and the Pareto front."""
    settings = study_settings(study)
    train, wall = time_spent(study)
    lines = [
        f"## Study `{study.study_name}`",
        "",
        f"The smallest fully convolutional network reaching {pct(settings.target_accuracy)} validation accuracy "
        f"with at most {settings.max_params:,} parameters and {count(settings.max_epochs, 'epoch')}.",
        "",
        f"**Trials:** {counts_line(study)}; {duration(train)} of training, {duration(wall)} wall-clock.",
        "",
    ]
    best = best_trial(study)
    if best is not None:
        arch = trial_arch(best)
        lines += [
            f"**Best:** trial {best.number}, {best.user_attrs['params']:,} parameters, {pct(best.values[0])}"
            + (f": `{arch_line(arch)}`" if arch else ""),
            "",
        ]
    else:
        lines += [f"**Best:** no complete trial reaches {pct(settings.target_accuracy)} yet.", ""]
    for e in study.user_attrs.get("exports", []):
        lines += [
            f"**Exported:** trial {e.get('trial')}, {pct(e['test_acc'])} test accuracy (model.pt, seed 0) "
            f"to `{e.get('out')}`.",
            "",
        ]
    rows = front_rows(study, best, lambda line: f"`{line}`")
    if rows:
        lines += ["### Pareto front", ""] + table(("trial", "params", "val acc", "RF", "architecture", ""), rows) + [""]
    lines += ["### Settings", ""] + table(("setting", "value"), settings_rows(settings)) + [""]
    lines += (
        [f"### Search space `{settings.parsed_space.name}`", ""]
        + table(("choice", "values"), _space_rows(settings))
        + [""]
    )
    return "\n".join(lines)
