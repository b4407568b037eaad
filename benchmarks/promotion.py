"""Which promotion share (1/eta) a ladder should use: replayed on networks measured at both levels.

    python3 benchmarks/promotion.py

benchmarks/protocol.py trained 12 networks of 1,688-5,086 parameters at level A (4 epochs x 20,000
images) and at the full protocol (20 x 50,000), one thread each (benchmarks/results/protocol/). For
each eta this replays nas.study.levels.promotable on their level-A results, as a search would once
all 12 trained at level 0, and reports what the top level then finds: the hypervolume of the
promoted networks' full-protocol front as a share of the front of all 12 (accuracy above 96 %,
parameters under 5,100), whether the best network under 3,000 / 4,000 / 5,100 parameters was
promoted, and the CPU time of the ladder (12 screening trials and the promotions) against training
all 12 at the full protocol.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from optuna.trial import TrialState, create_trial

from nas.arch.budgets import resource
from nas.study import levels
from nas.study.levels import promotable

RUNS = Path(__file__).resolve().parent / "results" / "protocol" / "runs.jsonl"
FLOOR, CEILING = 0.96, 5_100  # the hypervolume's reference point: accuracy, parameters
BUDGETS = (3_000, 4_000, 5_100)


def hypervolume(points: list[tuple[float, int]]) -> float:
    return levels.hypervolume(points, FLOOR, CEILING)


def best_under(points: dict[str, tuple[float, int]], budget: int) -> str | None:
    inside = [(acc, name) for name, (acc, params) in points.items() if params <= budget]
    return max(inside)[1] if inside else None


def main() -> None:
    rows = [json.loads(line) for line in RUNS.read_text().splitlines()]
    screen = {r["name"]: r for r in rows if r["fidelity"] == "A" and r["seed"] == 0}
    full = {r["name"]: r for r in rows if r["fidelity"] == "full" and r["seed"] == 0}
    names = sorted(screen.keys() & full.keys())
    cpu_a = mean(screen[n]["cpu_seconds"] for n in names)
    cpu_full = mean(full[n]["cpu_seconds"] for n in names)
    trials = []
    for i, n in enumerate(names):
        t = create_trial(
            state=TrialState.COMPLETE,
            values=[screen[n]["val_acc"], screen[n]["params"]],
            user_attrs={"params": screen[n]["params"], "arch": n, "curve": screen[n]["curve"]},
        )
        t.number = i
        trials.append(t)
    at_full = {n: (full[n]["val_acc"], full[n]["params"]) for n in names}
    whole = hypervolume(list(at_full.values()))
    print(
        f"{len(names)} networks; CPU s a trial: level A {cpu_a:.0f}, full {cpu_full:.0f}; "
        f"all at the full protocol: {len(names) * cpu_full / 60:.0f} CPU min"
    )
    print(
        "| eta | promoted | hypervolume of the full front reached | best under " + " / ".join(f"{b:,}" for b in BUDGETS)
    )
    print("| --- | --- | --- | --- |")
    for eta in (2, 3, 4, 6):
        up = [names[t.number] for t in promotable(trials, eta, resource("params"), True, set())]
        reached = hypervolume([at_full[n] for n in up]) / whole
        caught = ["yes" if best_under(at_full, b) in up else "no" for b in BUDGETS]
        cost = (len(names) * cpu_a + len(up) * cpu_full) / 60
        print(
            f"| {eta} | {len(up)} of {len(names)} ({cost:.0f} CPU min) | {100 * reached:.0f} % | {' / '.join(caught)} |"
        )


if __name__ == "__main__":
    main()
