"""The ladder against a single-fidelity search, one run each (issue 25, item 9).

    python3 benchmarks/side_by_side.py run --arm ladder [--hours 2 --workers 2]   # nas search's ladder
    python3 benchmarks/side_by_side.py run --arm single          # --levels none: every trial at 20 x 50,000
    python3 benchmarks/side_by_side.py table
    python3 benchmarks/side_by_side.py table --studies front-3000,front-3000-accuracy   # any of one budget

Both arms are `nas search` on mnist_tiny at --max-params 5000 with TPE (the default sampler), the
same seed and `--pruning observe` (no convergence pruning: every curve whole, as a user of Optuna
alone would get with no pruner), started from the built-in networks of the space and budget but
the found_* ones (nas's own finds would hand the ladder its answer). The single arm is what a user
writes with Optuna alone: every trial at the full protocol. Each arm is a journal file under
benchmarks/results/studies/ (sbs-<arm>-5000.log), committed as it grows; `run` again resumes it,
its --hours summed over runs. Both arms' answers are top-level trials, so each is already judged at
the full protocol (20 epochs on 50,000 images, validation). `table` compares the best network, the
hypervolume of the front and what each spent.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from front import journal, nas, storage

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

BUDGET = 5_000
FLOOR = 0.98  # the hypervolume's reference accuracy: below it a network is no answer at this size


def name(arm: str) -> str:
    return f"sbs-{arm}-{BUDGET}"


def starting_networks() -> list[str]:
    """The built-ins a study at this space and budget would start from, nas's finds left out."""
    from nas.space.spaces import read_space
    from nas.study.settings import StudySettings

    found = StudySettings(space=read_space("mnist_tiny"), max_params=BUDGET).seed_archs
    return [a["name"] for a in found if not a["name"].startswith("found_")]


def run(args: argparse.Namespace) -> None:
    seeds = [f"--seed-arch={n}" for n in starting_networks()] or ["--no-seed-arch"]
    nas(
        "search",
        "--space",
        "mnist_tiny",
        "--max-params",
        str(BUDGET),
        "--pruning",
        "observe",
        *seeds,
        *(["--levels", "none"] if args.arm == "single" else []),
        "--hours",
        str(args.hours),
        "--workers",
        str(args.workers),
        "--study-name",
        name(args.arm),
        "--storage",
        storage(name(args.arm)),
        "--device",
        "cpu",
        *(["--data-dir", args.data_dir] if args.data_dir else []),
    )


def front_figures(done: list[FrozenTrial], budget: int) -> tuple[str, float]:
    """The best network of complete top-level trials, and the hypervolume of their front."""
    from nas.study import levels

    best = max(done, key=lambda t: t.values[0], default=None)
    answer = f"{best.user_attrs['params']:,} params, {100 * best.values[0]:.2f} %" if best else "none"
    return answer, levels.hypervolume([(t.values[0], t.user_attrs["params"]) for t in done], FLOOR, budget) / budget


def table(args: argparse.Namespace) -> None:
    """Each arm's answer, then both again at the training CPU time the shorter arm spent: the
    top-level trials complete by then, every level's training counted in the order trials ended.
    With --studies, the same for any committed studies of one budget (the hypervolume's reference)."""
    from optuna.trial import TrialState

    from nas.study import levels
    from nas.study.analytics import study_settings
    from nas.study.storage import load_study

    print(
        "| arm | searched | trained at each level | training CPU h | best network (val, full protocol) | hypervolume |"
    )
    print("|---|--:|---|--:|---|--:|")
    names = [n for n in args.studies or [name(a) for a in ("ladder", "single")] if journal(n).exists()]
    tops = {n: load_study(n, storage(n)) for n in names}
    budgets = {study_settings(top).max_params for top in tops.values()}
    if len(budgets) > 1:
        raise SystemExit(f"error: {', '.join(names)} searched different budgets; compare studies of one budget")
    budget = budgets.pop() if budgets else BUDGET
    timelines = {}
    for arm, top in tops.items():
        studies = [*[s for s in levels.lower_studies(top, study_settings(top).ladder) if s], top]
        trials = [s.get_trials(deepcopy=False) for s in studies]
        per_level = " / ".join(str(len(levels.trained(ts))) for ts in trials)
        ended = sorted(
            ((t, ts is trials[-1]) for ts in trials for t in ts if t.datetime_complete),
            key=lambda pair: pair[0].datetime_complete,
        )
        cpu, timeline = 0.0, []  # (training CPU seconds when it ended, a complete top-level trial or None)
        for t, at_top in ended:
            cpu += sum(t.user_attrs.get("epoch_seconds", []))
            timeline.append((cpu, t if at_top and t.state == TrialState.COMPLETE else None))
        timelines[arm] = timeline
        answer, hv = front_figures([t for _, t in timeline if t], budget)
        print(f"| {arm} | {levels.searched(top) / 3600:.2f} h | {per_level} | {cpu / 3600:.2f} | {answer} | {hv:.5f} |")
    print(f"\nhypervolume: area dominated above {FLOOR:.0%} validation accuracy, parameters as a share of {budget:,}")
    if len(timelines) == 2:
        spent = min(tl[-1][0] for tl in timelines.values() if tl)
        print(f"\nat the same training CPU time, {spent / 3600:.2f} h (the shorter arm's):\n")
        print("| arm | best network | hypervolume |\n|---|---|--:|")
        for arm, tl in timelines.items():
            answer, hv = front_figures([t for c, t in tl if t and c <= spent], budget)
            print(f"| {arm} | {answer} | {hv:.5f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["run", "table"])
    p.add_argument("--arm", choices=["ladder", "single"], default="ladder")
    p.add_argument("--hours", type=float, default=2.0, help="hours of searching for the arm, over every run")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--studies",
        type=lambda v: v.split(","),
        default=None,
        help="table: these studies under benchmarks/results/studies/ instead of the two arms (one budget)",
    )
    args = p.parse_args()
    {"run": run, "table": table}[args.stage](args)


if __name__ == "__main__":
    main()
