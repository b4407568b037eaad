"""The commands that run a search: `search` makes or resumes a study and runs trials; `worker`
joins an existing study from one more machine, all its settings read from the study."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nas.cli.app import app, on_interrupt, say
from nas.cli.options import (
    DEFAULT_STORAGE,
    Artifacts,
    DataDir,
    Device,
    DeviceOpt,
    MaxActivationKB,
    MaxMacs,
    MaxModelKB,
    Minimize,
    Objective,
    Pruning,
    Sampler,
    Storage,
    TrainSize,
    ValSize,
    Workers,
)
from nas.data.datasets import DEFAULT as DEFAULT_DATASET
from nas.data.datasets import NAMED
from nas.errors import UsageError
from nas.search.placement import DEFAULT_TRIALS_PER_GPU
from nas.study.settings import StudySettings

if TYPE_CHECKING:
    from nas.search.worker import Run

_STUDY = {f.name: f.default for f in fields(StudySettings)}
DEFAULT_TRIALS = 50


@app.command(short_help="Search for the smallest networks that reach a target accuracy.")
def search(
    max_params: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=f"{_STUDY['max_params']:,}",
            help="Parameter budget: bigger architectures are pruned before training.",
        ),
    ] = None,
    max_macs: MaxMacs = None,
    max_activation_kb: MaxActivationKB = None,
    max_model_kb: MaxModelKB = None,
    minimize: Annotated[
        Minimize | None,
        typer.Option(show_default=_STUDY["minimize"], help="The resource the Pareto front minimises next to accuracy."),
    ] = None,
    max_epochs: Annotated[
        int | None,
        typer.Option(min=1, show_default=str(_STUDY["max_epochs"]), help="Epochs each trial trains for, at most."),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(
            max=1, show_default=str(_STUDY["target_accuracy"]), help="Validation accuracy an architecture must reach."
        ),
    ] = None,
    objective: Annotated[
        Objective | None,
        typer.Option(
            show_default=_STUDY["objective"],
            help="pareto: maximise accuracy and minimise the --minimize resource; accuracy: accuracy under the budget.",
        ),
    ] = None,
    pruning: Annotated[
        Pruning | None,
        typer.Option(
            show_default=_STUDY["pruning"],
            help="Convergence pruning: on, observe (record where it would prune, train on), off.",
        ),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            show_default="mnist_fcn", help="Search space file or built-in name; the study stores its content."
        ),
    ] = None,
    seed_arch: Annotated[
        list[str] | None,
        typer.Option(
            "--seed-arch",
            metavar="ARCH",
            show_default="the built-ins that are points of the space within its budgets",
            help="Architecture enqueued first in a new study (repeatable).",
        ),
    ] = None,
    no_seed_arch: Annotated[
        bool, typer.Option("--no-seed-arch", help="Start a new study without seed architectures.")
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0, show_default=str(_STUDY["seed"]), help="Seed the samplers and every trial's training derive from."
        ),
    ] = None,
    sampler: Annotated[
        Sampler | None,
        typer.Option(
            show_default=_STUDY["sampler"],
            help="How trials are drawn: tpe, nsga2, gp (needs scipy), random, "
            "or evolution (mutations of the Pareto front).",
        ),
    ] = None,
    seeds_per_trial: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=16,
            show_default=str(_STUDY["seeds_per_trial"]),
            help="Train each architecture with this many seeds at once and judge the mean.",
        ),
    ] = None,
    stop_at: Annotated[
        list[float] | None,
        typer.Option(
            "--stop-at",
            min=0.01,
            max=0.99,
            metavar="FRACTION",
            show_default="off, see docs/search.md, the Pareto rule",
            help="Pareto rule: at these fractions of the epochs, stop a trial not in the top 1/--stop-eta "
            "of the trials that cost no more (repeatable).",
        ),
    ] = None,
    stop_eta: Annotated[
        float | None,
        typer.Option(
            min=1.01,
            show_default=f"{_STUDY['stop_eta']:g}",
            help="Pareto rule: the share kept at each --stop-at rung is 1/eta.",
        ),
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option(
            metavar="EPOCHSxIMAGES,...|none",
            show_default="4x20000 below a top level at least 4 times its cost, else none",
            help="Fidelity levels below the top (the --max-epochs on every training image): architectures are "
            "drawn and screened at the lowest, the best promoted up to the top, whose results are the answer.",
        ),
    ] = None,
    promote_eta: Annotated[
        float | None,
        typer.Option(
            min=1.01,
            show_default=f"{_STUDY['promote_eta']:g}",
            help="Each level promotes the top 1/eta of the trials trained there, by Pareto rank.",
        ),
    ] = None,
    train_size: TrainSize = None,
    val_size: ValSize = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME|PATH",
            show_default=f"{DEFAULT_DATASET}, or a resumed study's",
            help=(
                "The data, stored with a new study (its name, shape, classes, normalisation and SHA-256): "
                f"{', '.join(NAMED)}, or PATH: a folder of the four IDX files, or an .npz with x "
                "(uint8 [N, H, W] or [N, H, W, C]) and y, optionally x_test and y_test and class_names. "
                "Resuming, a PATH says where the study's data is on this machine and is checked against it."
            ),
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=f"{DEFAULT_TRIALS} unless --timeout or --hours is given",
            help="Run until the study has this many finished trials (with levels: architectures drawn at the lowest).",
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop starting new trials after this many seconds of this run.")
    ] = None,
    hours: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            help="Hours of searching for the study, summed over resumed runs and machines (stored with it; "
            "a later run may raise it).",
        ),
    ] = None,
    study_name: Annotated[
        str, typer.Option("--study-name", "--study", help="Study name; re-using one resumes it.")
    ] = "mnist",
    storage: Storage = DEFAULT_STORAGE,
    workers: Workers = None,
    trials_per_gpu: Annotated[
        int, typer.Option(min=1, help="Trials each GPU trains at once, in one process on separate CUDA streams.")
    ] = DEFAULT_TRIALS_PER_GPU,
    device: DeviceOpt = Device.auto,
    data_dir: DataDir = None,
    artifacts: Artifacts = None,
) -> None:
    """Search the space for the smallest networks reaching the target accuracy (a new study, or resume one).

    The flags that define a study are stored with it at creation; a resumed study reads them
    back, and a flag that disagrees is refused."""
    from nas.arch.spec import arch_to_dict, load_arch
    from nas.space.spaces import read_space

    given: dict[str, Any] = {
        k: v.value if isinstance(v, Enum) else v
        for k, v in dict(
            max_params=max_params,
            max_macs=max_macs,
            max_activation_kb=max_activation_kb,
            max_model_kb=max_model_kb,
            minimize=minimize,
            max_epochs=max_epochs,
            target_accuracy=target_accuracy,
            objective=objective,
            pruning=pruning,
            seed=seed,
            sampler=sampler,
            seeds_per_trial=seeds_per_trial,
            stop_rungs=tuple(stop_at) if stop_at else None,
            stop_eta=stop_eta,
            train_size=train_size,
            val_size=val_size,
            promote_eta=promote_eta,
        ).items()
        if v is not None
    }
    if levels is not None:
        from nas.study.levels import parse_levels

        given["levels"] = parse_levels(levels)
    if space is not None:
        given["space"] = read_space(space)
    if no_seed_arch and seed_arch:
        raise UsageError("give --seed-arch or --no-seed-arch, not both")
    if no_seed_arch or seed_arch:
        given["seed_archs"] = tuple(arch_to_dict(load_arch(p)) for p in seed_arch or ())
    if dataset is not None:
        from nas.data import datasets

        given["dataset"] = datasets.read(dataset, data_dir, log=say).spec
    settings = StudySettings(**given)  # validates every flag before anything is created
    if trials is None and timeout is None and hours is None:
        trials = DEFAULT_TRIALS
    _run_search(
        study_name,
        storage,
        settings,
        given,
        trials,
        timeout,
        _run_options(workers, trials_per_gpu, device, dataset, data_dir, artifacts),
        hours,
    )


@app.command(short_help="Join an existing study as one more worker.")
def worker(
    study_name: Annotated[
        str, typer.Option("--study-name", "--study", help="The study to join (made by nas search).")
    ] = "mnist",
    storage: Storage = DEFAULT_STORAGE,
    trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default="the goal the study's `nas search --trials` set",
            help="Stop when the study has this many finished trials.",
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop starting new trials after this many seconds.")
    ] = None,
    workers: Workers = None,
    trials_per_gpu: Annotated[
        int, typer.Option(min=1, help="Trials each GPU trains at once.")
    ] = DEFAULT_TRIALS_PER_GPU,
    device: DeviceOpt = Device.auto,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="PATH",
            show_default="the study's named dataset from --data-dir, or the path it was made with",
            help=(
                "Where the study's data is on this machine, when the study was made from a PATH that differs here; "
                "checked against the study's SHA-256."
            ),
        ),
    ] = None,
    data_dir: DataDir = None,
    artifacts: Artifacts = None,
) -> None:
    """Join an existing study as one more worker (run one per machine: all settings come from the study)."""
    _run_search(
        study_name,
        storage,
        None,
        None,
        trials,
        timeout,
        _run_options(workers, trials_per_gpu, device, dataset, data_dir, artifacts),
    )


def _run_options(
    workers: int | None,
    trials_per_gpu: int,
    device: Device,
    dataset: str | None,
    data_dir: Path | None,
    artifacts: Path | None,
) -> Run:
    """The per-machine options of a search run (nas.search.worker.Run)."""
    from nas.search.worker import Run

    return Run(
        device.value,
        str(data_dir) if data_dir else None,
        workers,
        trials_per_gpu,
        str(artifacts) if artifacts else None,
        dataset,
    )


def _run_search(
    study_name: str,
    storage: str,
    settings: StudySettings | None,
    given: dict[str, Any] | None,
    trials: int | None,
    timeout: float | None,
    run: Run,
    hours: float | None = None,
) -> None:
    import time

    from nas.search import worker as s
    from nas.study import analytics
    from nas.study import storage as st

    if (
        settings is None and st.stored_settings(study_name, storage) is None
    ):  # a worker of no study: its error is all it prints
        st.load_study(study_name, storage)  # raises the one line (no such storage or study, or not one nas search made)
    start = time.time()
    # short: one terminal line
    on_interrupt(lambda: f"interrupted after {analytics.elapsed(start)}; run the same command to resume")
    study = s.search(study_name, storage, settings, trials, timeout, run, given, hours)
    say(f"done in {analytics.elapsed(start)}")
    say(analytics.summary(study))
