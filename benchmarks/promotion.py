"""Which promotion share (1/eta) a ladder should use: replayed on networks measured at both levels.

    python3 benchmarks/promotion.py
    python3 benchmarks/promotion.py --study sbs-ladder-5000 --floor 0.98   # replayed on a ladder search

benchmarks/protocol.py trained 12 networks of 1,688-5,086 parameters at level A (4 epochs x 20,000
images) and at the full protocol (20 x 50,000), one thread each (benchmarks/results/protocol/). For
each eta this replays nas.study.levels.promotable on their level-A results, as a search would once
all 12 trained at level 0, and reports what the top level then finds: the hypervolume of the
promoted networks' full-protocol front as a share of the front of all 12 (accuracy above 96 %,
parameters under 5,100), whether the best network under 3,000 / 4,000 / 5,100 parameters was
promoted, and the CPU time of the ladder (12 screening trials and the promotions) against training
all 12 at the full protocol.

With --study, the same replay runs on a committed ladder search (benchmarks/results/studies/): its
level-0 trials as screened, each rule's promotions judged by what they scored at the top level in
that search. A rule that promotes a network the search did not promote has no top-level figure for
it: the table counts those ("unknown") and leaves them out, so its hypervolume is a lower bound.
Two more rows apply the Pareto-rank rule to the level's upper half only (at or above its median
accuracy): a candidate against sending small, poorly screened networks up for being small.
"""

from __future__ import annotations

import argparse
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


def replay(study_name: str, floor: float) -> None:
    """Each rule replayed on a ladder search's level-0 trials, judged by the top level's results."""
    from front import storage

    from nas.study.analytics import study_settings
    from nas.study.storage import load_study

    top = load_study(study_name, storage(study_name))
    settings = study_settings(top)
    low = (levels.lower_studies(top, settings.ladder) or [None])[-1]  # the level that promotes to the top
    if low is None:
        raise SystemExit(f"error: {study_name} has no level below the top to replay")
    screened = low.get_trials(deepcopy=False)
    above = {}  # level-0 trial number -> (final validation accuracy at the top, params, CPU s)
    for t in top.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if "parent" in t.user_attrs and t.user_attrs.get("curve"):
            above[t.user_attrs["parent"]] = (
                t.user_attrs["curve"][-1],
                t.user_attrs["params"],
                sum(t.user_attrs["epoch_seconds"]),
            )
    ceiling = settings.max_params
    print(
        f"{study_name}: {len(levels.trained(screened))} screened, {len(above)} with a top-level result; "
        f"hypervolume above {floor:.0%}, parameters under {ceiling:,}; the search's own: "
        f"{levels.hypervolume([(a, p) for a, p, _ in above.values()], floor, ceiling) / ceiling:.5f}"
    )
    print("| rule | promoted | unknown | top-level CPU h (known) | hypervolume (known) | best (known) |")
    print("|---|--:|--:|--:|--:|---|")
    done = [t.values[0] for t in screened if t.state == TrialState.COMPLETE]
    median = sorted(done)[len(done) // 2] if done else 0.0
    upper = [t for t in screened if t.state != TrialState.COMPLETE or t.values[0] >= median]
    rules = [(eta, pareto, False) for eta in (2, 3, 4) for pareto in (True, False)] + [(2, True, True), (3, True, True)]
    for eta, pareto, above_median in rules:
        # above_median: the rule among the level's upper half only (a network below the level's median
        # accuracy is never promoted, however small)
        pool = upper if above_median else screened
        up = [t.number for t in promotable(pool, eta, resource(settings.minimize), pareto, set())]
        known = [above[n] for n in up if n in above]
        best = max(known, default=None)
        print(
            f"| eta {eta}, {'Pareto rank' if pareto else 'accuracy'}{' above the median' if above_median else ''} "
            f"| {len(up)} | {len(up) - len(known)} "
            f"| {sum(c for _, _, c in known) / 3600:.2f} "
            f"| {levels.hypervolume([(a, p) for a, p, _ in known], floor, ceiling) / ceiling:.5f} "
            f"| {f'{best[1]:,} params, {100 * best[0]:.2f} %' if best else 'none'} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", help="replay on this committed ladder search instead of the protocol's 12 networks")
    p.add_argument("--floor", type=float, default=0.98, help="the hypervolume's reference accuracy (with --study)")
    args = p.parse_args()
    if args.study:
        replay(args.study, args.floor)
        return
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
