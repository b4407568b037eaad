"""Choose the Pareto rule's rungs and eta on some studies, report the choice on a held-out one.

    python3 benchmarks/early_stop.py --choose URL::STUDY [--choose ...] --report URL::STUDY
        [--out benchmarks/results/early_stop]

Every study must have trained its trials to the end (--pruning observe or off). Each candidate rule
(rungs as fractions of the epochs, after OneCycle's warm-up; eta) is replayed on every choice study
with nas.study.analytics.replay_pareto, the function the live search calls; the chosen rule is the one
that saves the largest share of the training seconds summed over the choice studies while stopping
no trial on a study's final Pareto front and none that met its target. It is then replayed on the
report study, beside the convergence rule of the study's settings (nas.study.analytics.replay_rule).
Writes table.md and results.json under --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNG_SETS = [(0.3,), (0.5,), (0.75,), (0.3, 0.5), (0.5, 0.75)]  # all end after the warm-up (30 % of the steps)
ETAS = (2.0, 3.0, 4.0)


def open_study(spec: str):
    import optuna

    url, _, name = spec.partition("::")
    return optuna.load_study(study_name=name or None, storage=url)


def pooled(studies: list, fractions: tuple[float, ...], eta: float) -> dict:
    from nas.study.analytics import ParetoRule, replay_pareto, study_settings
    from nas.study.settings import rung_epochs

    total = {"trials": 0, "stopped": 0, "seconds": 0.0, "saved": 0.0, "front_lost": [], "target_lost": []}
    for study in studies:
        epochs = rung_epochs(fractions, study_settings(study).max_epochs)
        r = replay_pareto(study, ParetoRule(epochs, eta))
        for k in ("trials", "stopped", "seconds", "saved"):
            total[k] += r[k]
        total["front_lost"] += [f"{study.study_name}#{n}" for n in r["front_lost"]]
        total["target_lost"] += [f"{study.study_name}#{n}" for n in r["target_lost"]]
    total["saved_fraction"] = total["saved"] / total["seconds"] if total["seconds"] else 0.0
    return {"rungs": list(fractions), "eta": eta, **total}


def row(label: str, r: dict) -> str:
    return (
        f"| {label} | {r['trials']} | {r['stopped']} | "
        f"{100 * r['saved_fraction']:.0f} % ({r['saved']:.0f} of {r['seconds']:.0f} s) | "
        f"{len(r['front_lost'])} | {len(r['target_lost'])} |"
    )


def main() -> None:
    from nas.study.analytics import ConvergenceRule, replay_rule, study_settings

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--choose", action="append", required=True, help="URL::STUDY of a study to choose on (repeatable)")
    p.add_argument("--report", required=True, help="URL::STUDY of the held-out study")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/early_stop"))
    args = p.parse_args()
    choose = [open_study(s) for s in args.choose]
    held = open_study(args.report)
    candidates = [pooled(choose, f, eta) for f in RUNG_SETS for eta in ETAS]
    safe = [c for c in candidates if not c["front_lost"] and not c["target_lost"]]
    chosen = max(safe, key=lambda c: c["saved_fraction"]) if safe else None
    header = [
        "| rule | curves | stopped | training saved | front members stopped | at-target stopped |",
        "|---|---|---|---|---|---|",
    ]
    lines = [f"Chosen on {len(choose)} studies ({', '.join(s.study_name for s in choose)}):", "", *header]
    lines += [
        row(f"rungs {c['rungs']}, eta {c['eta']:g}" + (" **(chosen)**" if c is chosen else ""), c) for c in candidates
    ]
    report = {"chosen": chosen, "candidates": candidates}
    if chosen is not None:
        on_held = pooled([held], tuple(chosen["rungs"]), chosen["eta"])
        settings = study_settings(held)
        conv = replay_rule(
            held,
            ConvergenceRule(settings.target_accuracy, settings.max_epochs, settings.prune_slack, settings.prune_start),
        )
        conv_row = {
            "trials": conv["trials"],
            "stopped": conv["pruned"],
            "seconds": conv["seconds"],
            "saved": conv["saved"],
            "front_lost": [],
            "target_lost": conv["wrongly_pruned"],
            "saved_fraction": conv["saved"] / conv["seconds"] if conv["seconds"] else 0.0,
        }
        lines += [
            "",
            f"Reported on the held-out study {held.study_name}:",
            "",
            *header,
            row(f"Pareto rule, rungs {chosen['rungs']}, eta {chosen['eta']:g}", on_held),
            row(
                f"convergence rule (from {settings.prune_start:g} of the epochs, slack {settings.prune_slack:g})",
                conv_row,
            ),
        ]
        report |= {"held_out": on_held, "convergence_on_held_out": conv_row}
    else:
        lines += ["", "No candidate kept every front member and every trial at the target."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
