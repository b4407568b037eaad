"""A study as files a person can review offline: trials.csv and one self-contained HTML page."""

from __future__ import annotations

import html
import warnings
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from nas.analytics import best_trial, counts, pareto_front, pruning_savings, rule_replays, study_settings


def _accuracy(t: optuna.trial.FrozenTrial) -> float:
    return t.values[0]


def pareto_figure(study: optuna.Study) -> go.Figure:
    settings = study_settings(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in pareto_front(study)}
    fig = go.Figure()
    for label, members, marker in (
        ("trials", [t for t in done if t.number not in front], dict(color="lightgray", size=8)),
        ("Pareto front", [t for t in done if t.number in front], dict(color="royalblue", size=10)),
        ("seed", [t for t in done if "seed_arch" in t.user_attrs], dict(color="crimson", size=16, symbol="star")),
    ):
        fig.add_trace(go.Scatter(
            x=[t.user_attrs["params"] for t in members], y=[100 * _accuracy(t) for t in members], mode="markers", name=label, marker=marker,
            text=[f"trial {t.number}" for t in members], hovertemplate="%{text}<br>%{x:,} params<br>%{y:.2f} %<extra></extra>"))
    fig.add_hline(y=100 * settings.target_accuracy, line_dash="dot", annotation_text="target")
    fig.add_vline(x=settings.max_params, line_dash="dot", annotation_text="budget")
    fig.update_layout(title="Validation accuracy vs parameters", xaxis_title="parameters", yaxis_title="validation accuracy (%)")
    return fig


def curves_figure(study: optuna.Study) -> go.Figure:
    settings = study_settings(study)
    fig = go.Figure()
    for t in study.get_trials(deepcopy=False):
        curve = t.user_attrs.get("curve")
        if curve:
            fig.add_trace(go.Scatter(x=list(range(1, len(curve) + 1)), y=[100 * a for a in curve], mode="lines",
                                     name=f"{t.number} ({t.state.name.lower()})", line=dict(dash="dot" if t.state == TrialState.PRUNED else "solid")))
    fig.add_hline(y=100 * settings.target_accuracy, line_dash="dot", annotation_text="target")
    fig.update_layout(title="Learning curves (dotted: pruned)", xaxis_title="epoch", yaxis_title="validation accuracy (%)", yaxis_range=[90, 100])
    return fig


def _optional(make, what: str) -> go.Figure | str:
    """Optuna's own plots need enough finished trials; say so instead of failing the report."""
    try:
        with warnings.catch_warnings():  # "few trials per regime" notes are expected early in a study
            warnings.simplefilter("ignore")
            return make()
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        return f"{what}: not available yet ({e})"


def rule_table(study: optuna.Study) -> list[str]:
    """Candidate convergence rules replayed on the trials that trained all their epochs, as lines."""
    return [f"start {r['start']:.2f}, slack {r['slack']:.2f}: prunes {r['pruned']}/{r['trials']} trials, saves {r['saved']:.0f} of {r['seconds']:.0f} s "
            f"({100 * r['saved'] / r['seconds']:.0f} %), wrongly pruned: {r['wrongly_pruned'] or 'none'}" for r in rule_replays(study)]


def write_report(study: optuna.Study, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "trials.csv"
    study.trials_dataframe(multi_index=False).to_csv(csv, index=False)
    target = dict(target=_accuracy, target_name="validation accuracy")
    parts = [
        pareto_figure(study),
        _optional(lambda: optuna.visualization.plot_optimization_history(study, **target), "Optimization history"),
        # PED-ANOVA ranks what leads to *low* values, so importances are computed on the error.
        _optional(lambda: optuna.visualization.plot_param_importances(study, target=lambda t: 1 - t.values[0], target_name="validation error"), "Parameter importances"),
        curves_figure(study),
    ]
    settings, c, best = study_settings(study), counts(study), best_trial(study)
    savings = pruning_savings(study)
    facts = [
        f"budget {settings.max_params:,} parameters, {settings.max_epochs} epochs, target {100 * settings.target_accuracy:.2f} % validation accuracy, objective {settings.objective}",
        "trials: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items()),
        f"best: trial {best.number}, {best.user_attrs['params']:,} parameters, {100 * best.values[0]:.2f} %" if best else "best: none reaches the target yet",
        f"convergence pruning ({savings['mode']}): {savings['flagged']} of {savings['trained_trials']} trained trials flagged, "
        f"{savings['seconds_saved']:.0f} s of {savings['train_seconds']:.0f} s training saved; flagged but converged: {savings['flagged_but_converged'] or 'none'}",
    ]
    body = [f"<h1>nas study {html.escape(study.study_name)}</h1>", "<ul>" + "".join(f"<li>{html.escape(f)}</li>" for f in facts) + "</ul>"]
    replays = rule_table(study)
    if replays:
        body.append("<h2>Convergence rules replayed on fully trained curves</h2><ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in replays) + "</ul>")
    first = True
    for part in parts:
        if isinstance(part, str):
            body.append(f"<p><em>{html.escape(part)}</em></p>")
        else:
            body.append(part.to_html(full_html=False, include_plotlyjs=first))
            first = False
    page = out / "report.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>nas study {html.escape(study.study_name)}</title></head><body>{''.join(body)}</body></html>")
    return [csv, page]
