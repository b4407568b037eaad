"""trials.csv: one flat row per trial (outcome and reason, figures, costs, every sampled
parameter), for a spreadsheet or pandas. Torch-free; nas.study.report writes it beside
report.html.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nas.arch.budgets import FP32_ATTRS, RESOURCES
from nas.study.analytics import study_settings
from nas.study.trial_note import arch_line, ending, trial_arch

# Attributes only some studies have (costs, engines, seeds): a column each when any trial has one.
OPTIONAL_COLUMNS = (
    *(r.attr for r in RESOURCES[1:]),
    *FP32_ATTRS.values(),
    "engine",
    "duplicate_of",
    "val_accs",
    "worker",
)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One flat dict per trial: outcome and reason, the figures, optional attributes (costs), every
    sampled parameter."""
    settings = study_settings(study)
    trials = study.get_trials(deepcopy=False)
    optional = [k for k in OPTIONAL_COLUMNS if any(k in t.user_attrs for t in trials)]
    names = list(dict.fromkeys(p for t in trials for p in t.params))  # in the order the sampler asks
    rows = []
    for t in trials:
        a = t.user_attrs
        outcome, reason = ending(t, settings)
        curve = a.get("curve") or []
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name.lower(),
            "outcome": outcome,
            "reason": reason,
            "params": a.get("params", ""),
            "receptive_field": a.get("receptive_field", ""),
            "val_acc": t.values[0] if t.state == TrialState.COMPLETE and t.values else (curve[-1] if curve else ""),
            "epochs": len(curve),
            "train_seconds": round(a["train_seconds"], 3) if "train_seconds" in a else "",
            "seconds": round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
            if t.datetime_start and t.datetime_complete
            else "",
            "seed_arch": a.get("seed_arch", ""),
            "retry_of": a.get("retry_of", ""),
            "device": a.get("device", ""),
            "architecture": arch_line(arch) if (arch := trial_arch(t)) else "",
        }
        row.update({k: ";".join(map(str, a[k])) if isinstance(a.get(k), list) else a.get(k, "") for k in optional})
        row.update({f"param_{p}": t.params.get(p, "") for p in names})
        rows.append(row)
    return rows


def write_csv(study: optuna.Study, path: Path) -> Path:
    rows = trial_rows(study)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows(rows)
    return path
