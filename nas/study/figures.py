"""The report's plots (plotly figures): the Pareto front, the learning curves coloured by
outcome against the convergence rule, and Optuna's parameter importances and optimization
history. Torch-free; nas.study.report lays them out on report.html.
"""

from __future__ import annotations

import html
import warnings

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from nas.arch.budgets import RESOURCES
from nas.study.analytics import ConvergenceRule, minimized, pareto_front, study_settings
from nas.study.trial_note import arch_line, ending, trial_arch

# Outcome -> (colour, line dash) in the learning curves; a legend entry each.
STYLES = {
    "converged": ("#2ca02c", "solid"),
    "below target": ("#ff7f0e", "solid"),
    "pruned (convergence)": ("#d62728", "dot"),
    "failed": ("#7f7f7f", "dash"),
    "failed (stale)": ("#7f7f7f", "dash"),
    "running": ("#1f77b4", "solid"),
}


def _hover(t: FrozenTrial) -> str:
    """A point's label: the trial, its architecture in one line, and its costs."""
    arch = trial_arch(t)
    costs = ", ".join(f"{r.label} {r.format(t.user_attrs[r.attr])}" for r in RESOURCES if r.attr in t.user_attrs)
    return (
        f"trial {t.number}"
        + (f"<br>{html.escape(arch_line(arch))}" if arch else "")
        + (f"<br>{html.escape(costs)}" if costs else "")
    )


def pareto_figure(study: optuna.Study) -> go.Figure:
    """Every complete trial by the minimised resource (--minimize) and validation accuracy; the
    front joined, the seed a star."""
    settings, r = study_settings(study), minimized(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = pareto_front(study)
    on_front = {t.number for t in front}
    fig = go.Figure()
    for label, members, marker, mode in (
        ("trials", [t for t in done if t.number not in on_front], dict(color="#b0b0b0", size=8), "markers"),
        ("Pareto front", front, dict(color="royalblue", size=10), "lines+markers"),
        (
            "seed network",
            [t for t in done if "seed_arch" in t.user_attrs],
            dict(color="crimson", size=18, symbol="star", line=dict(width=1, color="black")),
            "markers",
        ),
    ):
        fig.add_trace(
            go.Scatter(
                x=[r.value(t.user_attrs) for t in members],
                y=[100 * t.values[0] for t in members],
                mode=mode,
                name=label,
                marker=marker,
                line=dict(shape="hv", color="royalblue") if mode != "markers" else None,
                text=[_hover(t) for t in members],
                hovertemplate="%{text}<br>%{y:.2f} %<extra></extra>",
            )
        )
    fig.add_hline(y=100 * settings.target_accuracy, line_dash="dot", annotation_text="target")
    if r.limit(settings) is not None:
        fig.add_vline(x=r.limit(settings), line_dash="dot", annotation_text="budget")
    fig.update_layout(
        title=f"Validation accuracy vs {r.label} (hover for the architecture)",
        xaxis_title=r.label + (f" ({r.value_unit})" if r.value_unit else ""),
        yaxis_title="validation accuracy (%)",
        hoverlabel=dict(align="left"),
    )
    return fig


def curves_figure(study: optuna.Study) -> go.Figure:
    """Every learning curve coloured by how its trial ended, with the target and the line the
    convergence rule holds trials to over the epochs it judges."""
    settings = study_settings(study)
    rule = ConvergenceRule.of(settings)
    fig = go.Figure()
    shown: set[str] = set()
    lows = [100 * settings.target_accuracy]
    for t in study.get_trials(deepcopy=False):
        curve = t.user_attrs.get("curve")
        if not curve:
            continue
        label = ending(t, settings)[0]
        colour, dash = STYLES.get(label, ("#9467bd", "solid"))
        lows += [100 * a for a in curve[1:] or curve]
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(curve) + 1)),
                y=[100 * a for a in curve],
                mode="lines+markers" if len(curve) == 1 else "lines",
                name=label,
                legendgroup=label,
                showlegend=label not in shown,
                line=dict(color=colour, dash=dash, width=1.5),
                opacity=0.8,
                text=[f"trial {t.number}: {label}"] * len(curve),
                hovertemplate="%{text}<br>epoch %{x}: %{y:.2f} %<extra></extra>",
            )
        )
        shown.add(label)
    if settings.pruning != "off":
        epochs = list(range(rule.first_epoch(), settings.max_epochs + 1))
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=[100 * rule.needed(e) for e in epochs],
                mode="lines+markers",
                name=f"convergence threshold ({settings.pruning})",
                line=dict(color="black", dash="dash", width=2),
                marker=dict(symbol="line-ew-open", size=10),
                hovertemplate="epoch %{x}: %{y:.2f} % needed<extra></extra>",
            )
        )
        lows.append(100 * rule.needed(rule.first_epoch()))
    fig.add_hline(y=100 * settings.target_accuracy, line_dash="dot", annotation_text="target")
    fig.update_layout(
        title="Learning curves, coloured by outcome",
        xaxis_title="epoch",
        yaxis_title="validation accuracy (%)",
        xaxis=dict(dtick=1 if settings.max_epochs <= 20 else None),
        yaxis_range=[max(0.0, sorted(lows)[len(lows) // 10] - 1), 100],
    )
    return fig


def _optional(study: optuna.Study, make, what: str) -> go.Figure | str:
    """Optuna's own plots need enough complete trials; say so instead of drawing an empty plot or failing."""
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return f"{what}: not available yet (needs two complete trials)"
    try:
        with warnings.catch_warnings():  # "few trials per regime" notes are expected early in a study
            warnings.simplefilter("ignore")
            return make()
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return f"{what}: not available yet ({e})"


def importance_figure(study: optuna.Study) -> go.Figure | str:
    # PED-ANOVA ranks what leads to *low* values, so importances are computed on the error.
    return _optional(
        study,
        lambda: optuna.visualization.plot_param_importances(
            study, target=lambda t: 1 - t.values[0], target_name="validation error"
        ),
        "Parameter importances",
    )


def history_figure(study: optuna.Study) -> go.Figure | str:
    return _optional(
        study,
        lambda: optuna.visualization.plot_optimization_history(
            study, target=lambda t: t.values[0], target_name="validation accuracy"
        ),
        "Optimization history",
    )
