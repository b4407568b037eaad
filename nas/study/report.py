"""A study as files a person can review offline: trials.csv (one flat row per trial,
nas.study.trials_csv) and report.html, one self-contained page (plotly.js inlined once) that
needs no network. The page's plots are drawn in nas.study.figures.

Torch-free: everything comes from the study's attributes, through nas.study.analytics and the
notes' wording (nas.study.trial_note, nas.study.study_note).
"""

from __future__ import annotations

import html
from collections.abc import Collection
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from nas.arch.summary import summary_table
from nas.study import levels
from nas.study.analytics import (
    ConvergenceRule,
    best_trial,
    count,
    counts_line,
    duration,
    pareto_replays,
    pruning_savings,
    rule_replays,
    study_settings,
)
from nas.study.figures import curves_figure, history_figure, importance_figure, pareto_figure
from nas.study.study_note import front_rows, settings_rows, time_spent
from nas.study.trial_note import arch_line, ending, pct, trial_arch
from nas.study.trials_csv import write_csv


def _esc(x: Any) -> str:
    return html.escape(str(x))


PARETO_CANDIDATES = [(0.34,), (0.5,), (0.34, 0.67), (0.5, 0.75)]  # rungs, as fractions of the epochs


def rule_table(study: optuna.Study) -> list[str]:
    """Candidate convergence and Pareto rules replayed on the trials that trained all their epochs, as lines."""
    lines = [
        f"convergence rule, start {r['start']:.2f}, slack {r['slack']:.2f}: prunes {r['pruned']}/{r['trials']} trials, "
        f"saves {r['saved']:.0f} of {r['seconds']:.0f} s ({100 * r['saved'] / r['seconds']:.0f} %), "
        f"wrongly pruned: {r['wrongly_pruned'] or 'none'}"
        for r in rule_replays(study)
    ]
    lines += [
        f"Pareto rule, epochs {', '.join(map(str, r['epochs']))}, eta {r['eta']:g}: "
        f"stops {r['stopped']}/{r['trials']} trials, saves {r['saved']:.0f} of {r['seconds']:.0f} s "
        f"({100 * r['saved'] / max(r['seconds'], 1e-9):.0f} %), front members lost: {r['front_lost'] or 'none'}, "
        f"trials at the target lost: {r['target_lost'] or 'none'}"
        for r in pareto_replays(study, PARETO_CANDIDATES)
    ]
    return lines


# --- HTML -------------------------------------------------------------------------------------

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.facts th { background: none; font-weight: 600; white-space: nowrap; }
tr.current td { background: #eef4ff; font-weight: 600; }
pre { background: #f7f7f7; padding: .6em; font-size: 12px; overflow-x: auto; } code { font-size: 13px; }
.muted { color: #666; } .figure { margin: 1em 0; }
"""


def _html_table(
    header: list[str], rows: list[list[Any]], numeric: Collection[int] = frozenset(), classes: list[str] | None = None
) -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        return f"<{tag}{' class=num' if i in numeric else ''}>{v}</{tag}>"

    head = "<tr>" + "".join(cell("th", i, _esc(h)) for i, h in enumerate(header)) + "</tr>"
    body = "".join(
        f"<tr{f' class={classes[n]}' if classes and classes[n] else ''}>"
        + "".join(cell("td", i, v) for i, v in enumerate(row))
        + "</tr>"
        for n, row in enumerate(rows)
    )
    return f"<table>{head}{body}</table>"


def _facts_html(study: optuna.Study) -> str:
    """The header table: what was searched, where, how it went, what won."""
    settings = study_settings(study)
    trials = study.get_trials(deepcopy=False)
    train, wall = time_spent(study)
    devices = sorted({str(t.user_attrs["device"]) for t in trials if "device" in t.user_attrs})
    rows: list[tuple[str, str]] = [("study", f"<code>{_esc(study.study_name)}</code>")]
    rows += [(k, _esc(v).replace("`", "")) for k, v in settings_rows(settings)]
    rows += [
        ("device", _esc(", ".join(devices) or "none recorded")),
        ("trials", _esc(f"{len(trials)}: {counts_line(study)}")),
        *(
            (_esc(head), _esc(rest))
            for head, rest in (line.split(": ", 1) for line in levels.level_lines(study, settings.ladder))
        ),
        (
            "time spent",
            _esc(
                f"{duration(train)} training, {duration(wall)} wall-clock "
                "from the first trial's start to the last one's end"
            ),
        ),
    ]
    seed = [t for t in trials if "seed_arch" in t.user_attrs]
    if seed:
        rows.append(
            (
                "seed network",
                _esc(f"trial {seed[0].number} ({seed[0].user_attrs['seed_arch']}): {ending(seed[0], settings)[1]}"),
            )
        )
    best = best_trial(study)
    if best is not None:
        arch = trial_arch(best)
        rows.append(
            (
                "best",
                _esc(
                    f"trial {best.number}: {best.user_attrs['params']:,} parameters, "
                    f"{pct(best.values[0])} validation accuracy"
                )
                + (f"<br><code>{_esc(arch_line(arch))}</code>" if arch else ""),
            )
        )
    else:
        rows.append(("best", _esc(f"no complete trial reaches {pct(settings.target_accuracy)} yet")))
    for e in study.user_attrs.get("exports", []):
        spread = (
            f"; mean {pct(e['test_acc_mean'])} over {e['seeds']} seeds "
            f"({pct(e['test_acc_min'])}-{pct(e['test_acc_max'])})"
            if e.get("seeds", 1) > 1
            else ""
        )
        rows.append(
            (
                "exported model",
                _esc(
                    f"trial {e.get('trial')}: {pct(e['test_acc'])} test accuracy (model.pt, seed 0){spread}, "
                    f"{count(e['epochs'], 'epoch') if 'epochs' in e else '? epochs'} "
                    f"on {e.get('train_images', 0):,} images; {e.get('out', '')} ({e.get('when', '')})"
                ),
            )
        )
    table = "<table class=facts>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    if best is not None and (arch := trial_arch(best)) is not None:
        table += (
            f"<details open><summary>Layers of the best architecture (trial {best.number})</summary>"
            f"<pre>{_esc(summary_table(arch))}</pre></details>"
        )
    return table


def _front_html(study: optuna.Study) -> str:
    rows = front_rows(study, best_trial(study), lambda line: f"<code>{_esc(line)}</code>")
    if not rows:
        return "<p class=muted>No complete trial yet.</p>"
    classes = ["current" if "best" in row[-1] else "" for row in rows]
    return _html_table(
        ["trial", "params", "val acc", "RF", "architecture", ""], [list(r) for r in rows], {0, 1, 2, 3}, classes
    )


def _pruning_html(study: optuna.Study) -> str:
    settings = study_settings(study)
    s = pruning_savings(study)
    parts = [
        f"<p>Convergence pruning was <b>{_esc(s['mode'])}</b>: "
        f"{s['flagged']} of {s['trained_trials']} trained trials flagged by the rule, "
        f"{s['seconds_saved']:.0f} s of training saved ({100 * s['saved_fraction']:.0f} %)"
        + (
            f"; flagged although they reached the target: trials {_esc(s['flagged_but_converged'])}"
            if s["flagged_but_converged"]
            else "; none of them would have reached the target"
        )
        + ".</p>"
    ]
    replays = rule_replays(study)
    if replays:
        rows, classes = [], []
        for r in replays:
            first = ConvergenceRule(settings.target_accuracy, settings.max_epochs, r["slack"], r["start"]).first_epoch()
            rows.append(
                [
                    f"{r['start']:.0%} (epoch {first})",
                    f"{r['slack']:.2f}",
                    f"{r['pruned']} / {r['trials']}",
                    f"{r['saved']:.0f} / {r['seconds']:.0f}",
                    f"{100 * r['saved'] / r['seconds']:.0f} %" if r["seconds"] else "",
                    _esc(", ".join(map(str, r["wrongly_pruned"])) or "none"),
                ]
            )
            classes.append(
                "current" if (r["start"], r["slack"]) == (settings.prune_start, settings.prune_slack) else ""
            )
        parts.append(
            "<p>Candidate rules replayed on the trials that trained all their epochs (highlighted: this study's rule). "
            "<i>Wrongly pruned</i>: trials the rule would have stopped that ended at or above the target.</p>"
        )
        parts.append(
            _html_table(
                ["judged from", "slack", "pruned", "seconds saved / spent", "saved", "wrongly pruned"],
                rows,
                {1, 2, 3, 4},
                classes,
            )
        )
    else:
        parts.append("<p class=muted>No trial trained all its epochs yet, so no rule can be replayed.</p>")
    pareto = pareto_replays(study, PARETO_CANDIDATES)
    if pareto:
        rows = [
            [
                ", ".join(map(str, r["epochs"])),
                f"{r['eta']:g}",
                f"{r['stopped']} / {r['trials']}",
                f"{r['saved']:.0f} / {r['seconds']:.0f}",
                f"{100 * r['saved'] / r['seconds']:.0f} %" if r["seconds"] else "",
                _esc(", ".join(map(str, r["front_lost"])) or "none"),
                _esc(", ".join(map(str, r["target_lost"])) or "none"),
            ]
            for r in pareto
        ]
        classes = [
            "current" if (r["epochs"], r["eta"]) == (settings.stop_epochs(), settings.stop_eta) else "" for r in pareto
        ]
        own = (
            "highlighted: this study's rule"
            if settings.stop_epochs()
            else "this study's Pareto rule is off (--stop-at turns it on)"
        )
        parts.append(
            f"<p>Pareto rules replayed on the same trials in the order they started ({own}): a trial stops at a "
            "rung when it is not in the top 1/eta of the trials that reached it at no larger cost.</p>"
        )
        parts.append(
            _html_table(
                [
                    "rungs (epochs)",
                    "eta",
                    "stopped",
                    "seconds saved / spent",
                    "saved",
                    "front members lost",
                    "at-target trials lost",
                ],
                rows,
                {1, 2, 3, 4},
                classes,
            )
        )
    return "".join(parts)


def _unfinished_html(study: optuna.Study) -> str:
    """Trials that failed or were invalid, with their reasons (budget-pruned ones are counted above)."""
    settings = study_settings(study)
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.PRUNED)):
        label, why = ending(t, settings)
        if label.startswith("failed") or label == "invalid":
            rows.append([t.number, _esc(label), _esc(why)])
    return _html_table(["trial", "outcome", "why"], rows, {0}) if rows else "<p class=muted>None.</p>"


def render(study: optuna.Study) -> str:
    """report.html's content: one page, plotly.js inlined once, no network needed."""
    name = _esc(study.study_name)
    sections = [
        f"<h1>nas study: {name}</h1>",
        _facts_html(study),
        "<h2>Pareto front</h2>",
        pareto_figure(study),
        _front_html(study),
        "<h2>Learning curves</h2>",
        curves_figure(study),
        "<h2>Parameter importances</h2>",
        importance_figure(study),
        "<h2>Optimization history</h2>",
        history_figure(study),
        "<h2>Convergence pruning</h2>",
        _pruning_html(study),
        "<h2>Failed and invalid trials</h2>",
        _unfinished_html(study),
    ]
    body, first = [], True
    for part in sections:
        if isinstance(part, go.Figure):
            part.update_layout(template="plotly_white", height=480, margin=dict(t=60, b=50))
            plot = part.to_html(full_html=False, include_plotlyjs=first, config=dict(displaylogo=False))
            body.append(f"<div class=figure>{plot}</div>")
            first = False
        elif part.startswith("<"):
            body.append(part)
        else:
            body.append(f"<p class=muted><em>{_esc(part)}</em></p>")
    return (
        "<!doctype html><html lang=en><head><meta charset='utf-8'>"
        f"<title>nas study {name}</title><style>{CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def write_report(study: optuna.Study, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    page = out / "report.html"
    page.write_text(render(study), encoding="utf-8")
    return [write_csv(study, out / "trials.csv"), page]
