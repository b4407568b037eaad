"""A trial's note, in Markdown for optuna-dashboard: why it ended, its figures, its learning
curve against the convergence rule, its layers and its training configuration. Torch-free.

The pieces a person reads about one trial live here, so the study note (nas.study.study_note),
the report (nas.study.report) and the CSV (nas.study.trials_csv) say it in the same words:
`ending` (the outcome and why), `arch_line` (an architecture in one line), `trial_arch`, `pct`.
nas.study.notes writes the note to the study.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from nas.arch.budgets import FP32_ATTRS, RESOURCES
from nas.arch.spec import CONVS, Arch, Conv, Dropout, Pool, arch_from_dict
from nas.arch.summary import summary_table
from nas.errors import SpecError
from nas.study.analytics import ConvergenceRule, count, duration
from nas.study.levels import BUDGET, CONVERGENCE, INVALID, PARETO, prune_reason, pruned_for
from nas.study.settings import StudySettings

# Attributes the search sets (nas.search.worker) or that other parts of nas add; anything else a trial
# carries is listed under "Other attributes" so new attributes show up without a code change.
KNOWN_ATTRS = frozenset(
    {
        "params",
        "receptive_field",
        "arch",
        "train_config",
        "device",
        "curve",
        "epoch_seconds",
        "train_seconds",
        "converged",
        "prune_reason",
        "would_prune_epoch",
        "would_stop_epoch",
        "fail_reason",
        "seed_arch",
        "val_accs",
        "duplicate_of",
        "engine",
        "retry_of",
        "retries",
        "parent",
        "level",
        "over_budget",
        "config_key",
        "worker",
        "recovered_from",
        "resumed",
        *(r.attr for r in RESOURCES),
        *FP32_ATTRS.values(),
    }
)
BARS = "▁▂▃▄▅▆▇█"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def size(n: float) -> str:
    """Bytes as a person reads them (binary units)."""
    units = ("B", "KiB", "MiB", "GiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:,.0f} B" if i == 0 else f"{n:,.1f} {units[i]}"


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the smallest and the largest."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return BARS[-1] * len(values)
    return "".join(BARS[round((v - lo) / (hi - lo) * (len(BARS) - 1))] for v in values)


def arch_line(arch: Arch) -> str:
    """An architecture in one line, e.g. `c4 c4 c8 max c12 c12 c16 max c20v → conv3x3v, GAP`:
    cN is an N-channel 3x3 padded conv unless marked (v: unpadded, /1x1: pointwise, s2: stride 2);
    dN a depthwise-separable one (depthwise 3x3, then pointwise to N channels)."""
    drops = {layer.p for layer in arch.layers if isinstance(layer, Dropout)}
    parts = []
    for layer in arch.layers:
        if isinstance(layer, CONVS):
            s = (
                ("c" if isinstance(layer, Conv) else "d")
                + f"{layer.out}"
                + ("" if layer.kernel == 3 else f"/{layer.kernel}x{layer.kernel}")
            )
            s += (
                "v"
                if layer.padding == 0 and layer.kernel > 1
                else ("" if layer.padding == layer.kernel // 2 else f"p{layer.padding}")
            )
            s += "" if layer.stride == 1 else f"s{layer.stride}"
            parts.append(s + ("" if layer.bn else "-nobn") + ("" if layer.relu else "-norelu"))
        elif isinstance(layer, Pool):
            parts.append(layer.kind + ("" if layer.size == 2 else str(layer.size)))
        elif isinstance(layer, Dropout) and len(drops) > 1:
            parts.append(f"drop{layer.p:g}")
    h = arch.head
    head = (
        f"conv{h.kernel}x{h.kernel}{'v' if h.padding == 0 and h.kernel > 1 else ''}, GAP"
        if h.type == "conv_gap"
        else "GAP, conv1x1"
    )
    head += "" if h.bias else " (no bias)"
    notes = [f"dropout {drops.pop():g} after each conv"] if len(drops) == 1 else []
    if any(isinstance(x, CONVS) and x.order == "bn_relu" for x in arch.layers):
        notes.append("BN before ReLU")
    return " ".join(parts) + f" → {head}" + (f" ({', '.join(notes)})" if notes else "")


def trial_arch(t: FrozenTrial) -> Arch | None:
    """The trial's architecture with its training table, or None when it has none (invalid, or
    failed before sampling) or it cannot be read."""
    if "arch" not in t.user_attrs:
        return None
    try:
        data = json.loads(t.user_attrs["arch"])
        if isinstance(t.user_attrs.get("train_config"), dict):
            data["train"] = dict(t.user_attrs["train_config"])
        return arch_from_dict(data, f"trial {t.number}")
    except (ValueError, TypeError, SpecError):
        return None


def ending(t: FrozenTrial, settings: StudySettings) -> tuple[str, str]:
    """(outcome, why it ended) for a person: the outcome is one short label, the reason one sentence."""
    a = t.user_attrs
    curve = a.get("curve") or []
    n = settings.max_epochs
    if t.state == TrialState.COMPLETE:
        acc = t.values[0] if t.values else (curve[-1] if curve else float("nan"))
        epochs = count(len(curve), "epoch") if curve else "training"
        if a.get("converged", acc >= settings.target_accuracy):
            label, why = (
                "converged",
                f"complete and converged: {pct(acc)} validation accuracy ≥ the {pct(settings.target_accuracy)} "
                f"target after {epochs}",
            )
        else:
            label, why = (
                "below target",
                f"complete below the target: {pct(acc)} < {pct(settings.target_accuracy)} after all {epochs}",
            )
        if "would_prune_epoch" in a:
            why += (
                f" (the convergence rule would have pruned it at epoch {a['would_prune_epoch']}; "
                f"pruning was {settings.pruning})"
            )
        if "would_stop_epoch" in a:
            why += (
                f" (the Pareto rule would have stopped it at epoch {a['would_stop_epoch']}; "
                f"pruning was {settings.pruning})"
            )
        return label, why
    if t.state == TrialState.PRUNED:
        kind, detail = prune_reason(t)
        if kind == BUDGET:  # "parameters 13,000 > 12,000; MACs ..." (nas.arch.budgets.Violation)
            return "pruned (budget)", f"pruned by budget before training: {detail or 'over a limit of the study'}"
        if kind == INVALID:
            return "invalid", f"invalid architecture, not trained: {detail or 'no reason recorded'}"
        if kind == CONVERGENCE:
            rule = ConvergenceRule.of(settings)
            epoch = int(a.get("would_prune_epoch", len(curve)))
            if not 1 <= epoch <= len(curve):
                return "pruned (convergence)", "pruned for convergence (no learning curve recorded)"
            return "pruned (convergence)", (
                f"pruned for convergence at epoch {epoch} of {n}: {pct(curve[epoch - 1])} validation accuracy "
                f"< the {pct(rule.needed(epoch))} needed to be on course for {pct(settings.target_accuracy)} "
                f"(the rule judges from epoch {rule.first_epoch()} on, slack {rule.slack:g})"
            )
        if kind == PARETO:
            return "pruned (Pareto)", f"stopped early by the Pareto rule: {detail}"
        return "pruned", f"pruned: {pruned_for(kind, detail)}"
    if t.state == TrialState.FAIL:
        failure = a.get("fail_reason")
        if not failure:
            return "failed", "failed; no reason recorded (the worker may have been killed)"
        if str(failure).startswith("stale"):
            return (
                "failed (stale)",
                "failed as stale by another worker (its own worker stopped answering): "
                + str(failure).removeprefix("stale").lstrip(": "),
            )
        return "failed", f"failed: {failure}"
    if t.state == TrialState.RUNNING:
        return "running", f"running: {len(curve)} of {count(n, 'epoch')} so far"
    return "waiting", "waiting to run (enqueued)"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], align: str = "---") -> list[str]:
    """A Markdown table as lines (`align`: each column's, e.g. "--:" for numbers)."""
    header = list(header)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align for _ in header) + "|",
        *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows),
    ]


def _facts(t: FrozenTrial, settings: StudySettings) -> list[tuple[str, str]]:
    """The trial's figures as (what, value), in reading order; only those the trial has."""
    a = t.user_attrs
    out: list[tuple[str, str]] = []
    if "params" in a:
        out.append(("parameters", f"{a['params']:,} of {settings.max_params:,}"))
    if "receptive_field" in a:
        out.append(("receptive field", f"{a['receptive_field']} px"))
    if t.state == TrialState.COMPLETE and t.values:
        out.append(("validation accuracy", f"{pct(t.values[0])} (target {pct(settings.target_accuracy)})"))
    elif a.get("curve"):
        out.append(("last validation accuracy", f"{pct(a['curve'][-1])} (target {pct(settings.target_accuracy)})"))
    accs = a.get("val_accs")
    if isinstance(accs, list) and accs:
        finals = [x[-1] if isinstance(x, list) and x else x for x in accs]
        if all(isinstance(x, (int, float)) for x in finals):
            out.append(("validation accuracy per seed", ", ".join(pct(x) for x in finals)))
    if "train_seconds" in a:
        epochs = len(a.get("curve") or [])
        out.append(
            (
                "training time",
                f"{a['train_seconds']:.1f} s ({epochs} epoch{'s' if epochs != 1 else ''})"
                + (f" on {a['device']}" if "device" in a else ""),
            )
        )
    elif "device" in a:
        out.append(("device", str(a["device"])))
    if t.datetime_start and t.datetime_complete:
        out.append(("wall time", duration((t.datetime_complete - t.datetime_start).total_seconds())))
    if "engine" in a:
        out.append(("engine", str(a["engine"])))
    for r in RESOURCES[1:]:  # parameters are on the first line
        if isinstance(a.get(r.attr), (int, float)):
            limit = r.limit(settings)
            fp32 = f" ({a[FP32_ATTRS[r.name]]:,} B at fp32)" if r.name in FP32_ATTRS and FP32_ATTRS[r.name] in a else ""
            out.append(
                (r.label, r.format(a[r.attr]) + fp32 + (f", limit {r.format(limit)}" if limit is not None else ""))
            )
    if "seed_arch" in a:
        out.append(("seed network", f"`{a['seed_arch']}` (enqueued first: the hand-made starting point)"))
    if "retry_of" in a:
        out.append(("re-run of", f"trial {a['retry_of']} (interrupted or failed)"))
    if "level" in a:
        up = f", promoted from trial {a['parent']} of level {a['level'] - 1}" if "parent" in a else ", drawn"
        out.append(("level", f"{a['level']} ({settings.max_epochs} epochs x {settings.train_images:,} images){up}"))
    resumed = a.get("resumed")
    if isinstance(resumed, dict) and "epoch" in resumed:
        out.append(
            (
                "resumed",
                f"after epoch {resumed['epoch']} from the checkpoint trial {resumed.get('from_trial', '?')} left "
                "(its epochs are in the curve)",
            )
        )
    if "duplicate_of" in a:
        out.append(("same network and training as", f"trial {a['duplicate_of']}"))
    return out


def trial_note(t: FrozenTrial, settings: StudySettings) -> str:
    """The trial's story in Markdown: why it ended, its figures, its learning curve, its layers
    and its training configuration."""
    a = t.user_attrs
    label, why = ending(t, settings)
    lines = [f"### Trial {t.number}: {label}", "", f"**Why it ended:** {why}.", ""]
    facts = _facts(t, settings)
    if facts:
        lines += table(("", ""), facts) + [""]
    arch = trial_arch(t)
    if arch is not None:
        lines += [f"**Architecture:** `{arch_line(arch)}`", ""]
    elif "arch" in a:
        lines += ["**Architecture:** stored, but not readable by this version of nas.", ""]
    curve = a.get("curve") or []
    if curve:
        seconds = a.get("epoch_seconds") or []
        rule = ConvergenceRule.of(settings)
        judged = settings.pruning != "off"
        lines += [f"#### Validation accuracy per epoch `{sparkline(curve)}`", ""]
        rows = []
        for e, acc in enumerate(curve, 1):
            needed = pct(rule.needed(e)) if judged and rule.first_epoch() <= e < rule.max_epochs else ""
            mark = " ✗" if needed and rule.should_prune(e, acc) else ""
            rows.append((e, pct(acc) + mark, needed, f"{seconds[e - 1]:.1f}" if e <= len(seconds) else ""))
        lines += table(("epoch", "val acc", "needed (rule)", "seconds"), rows, "--:") + [""]
    if arch is not None:
        lines += ["#### Layers", "", "```", summary_table(arch), "```", ""]
    cfg = a.get("train_config")
    if isinstance(cfg, dict) and cfg:
        lines += (
            ["#### Training configuration", ""]
            + table(cfg.keys(), [[f"{v:.4g}" if isinstance(v, float) else v for v in cfg.values()]])
            + [""]
        )
    other = sorted(k for k in a if k not in KNOWN_ATTRS)
    if other:
        lines += (
            ["#### Other attributes", ""]
            + table(("attribute", "value"), [(f"`{k}`", _short(a[k])) for k in other])
            + [""]
        )
    return "\n".join(lines)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
