"""The `nas` command line: thin wrappers that parse options, print progress and map errors.

Commands that only read (`--help`, `summary`, `space show`, `report`, `best`) never import
torch: heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from nas.arch.budgets import NAMES as RESOURCE_NAMES
from nas.data.datasets import DEFAULT as DEFAULT_DATASET
from nas.data.datasets import MAX_VAL, NAMED
from nas.errors import UsageError, UserError
from nas.search import interrupt
from nas.search.placement import DEFAULT_TRIALS_PER_GPU
from nas.study.settings import OBJECTIVES, PRUNING_MODES, SAMPLERS, StudySettings
from nas.train.config import MIN_UPDATES, OPTIMIZERS, REFERENCE_BATCH, TrainConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Search for small fully convolutional networks under a hard parameter budget.",
)
space_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect search spaces.")
app.add_typer(space_app, name="space")

Objective = Enum("Objective", {v: v for v in OBJECTIVES}, type=str)  # type: ignore[misc]
Pruning = Enum("Pruning", {v: v for v in PRUNING_MODES}, type=str)  # type: ignore[misc]
Optimizer = Enum("Optimizer", {v: v for v in OPTIMIZERS}, type=str)  # type: ignore[misc]
Minimize = Enum("Minimize", {v: v for v in RESOURCE_NAMES}, type=str)  # type: ignore[misc]
Sampler = Enum("Sampler", {v: v for v in SAMPLERS}, type=str)  # type: ignore[misc]


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


_STUDY = {f.name: f.default for f in fields(StudySettings)}
_TRAIN = TrainConfig()
DEFAULT_STORAGE = "sqlite:///studies/nas.sqlite3"
DEFAULT_TRIALS = 50

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="NAS_DATA_DIR",
        file_okay=False,
        show_default="~/.cache/nas/NAME",
        help="Where the named datasets are on this machine: for mnist the folder of its four IDX files, for fashion-mnist "
        "and kmnist the folder that holds their NAME/ folder; missing files are downloaded there.",
    ),
]
DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset",
        metavar="NAME|PATH",
        help=f"The data: {', '.join(NAMED)}, or PATH: a folder of the four IDX files, or an .npz with x (uint8 [N, H, W] or "
        "[N, H, W, C]) and y (integer labels), optionally x_test and y_test (else a test split is held out of x) "
        "and class_names.",
    ),
]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to train.")]
Storage = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="NAS_STORAGE",
        help="Optuna storage: sqlite:///FILE (its folder is made if missing), postgresql+psycopg://USER@HOST/DB "
        "(many machines; the password from ~/.pgpass or PGPASSWORD) or journal:///FILE.",
    ),
]
StudyName = Annotated[str, typer.Option("--study-name", "--study", help="The study to read.")]
ValSize = Annotated[
    int | None,
    typer.Option(
        min=1, show_default=f"a sixth of them, at most {MAX_VAL:,}", help="Training images held out for validation."
    ),
]
MaxMacs = Annotated[
    int | None,
    typer.Option(
        min=1,
        show_default="no limit",
        help="Multiply-accumulates per image (convolutions): more is pruned before training.",
    ),
]
MaxActivationKB = Annotated[
    float | None,
    typer.Option(
        show_default="no limit",
        help="Peak int8 activation memory of one inference, in KB of 1,000 bytes: more is pruned before training.",
    ),
]
MaxModelKB = Annotated[
    float | None,
    typer.Option(
        show_default="no limit",
        help="Deployed int8 model size in KB of 1,000 bytes, BatchNorm folded: more is pruned before training.",
    ),
]
Artifacts = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        envvar="NAS_ARTIFACTS",
        file_okay=False,
        show_default="artifacts/ next to a SQLite storage file",
        help="Folder of the study's artifacts (architecture files, model cards) that the dashboard offers for download; "
        "with workers on several machines, give a folder all of them and the dashboard share.",
    ),
]
TrainSize = Annotated[
    int | None,
    typer.Option(min=1, show_default="all", help="Train on the first N of the remaining training images."),
]
Workers = Annotated[
    int | None,
    typer.Option(
        min=1,
        show_default="one per GPU, or 1 on the CPU",
        help="Worker processes on this machine, at most one per core.",
    ),
]


def _table(default: object) -> str:
    """The default of a train option: the architecture's train table sets it (TrainConfig where it says nothing)."""
    return f"the architecture's train table, else {default}"


# Printed when Ctrl-C stops a command; the search sets its own (how long it ran, how to resume).
_interrupted: list[Callable[[], str]] = [lambda: "interrupted"]
PRINT_ONLY = (
    "summary",
    "space",
    "best",
    "report",
    "predict",
)  # stopped quietly by a closed pipe (nas best | head), as cat is


def say(message: str) -> None:
    print(message, flush=True)


def epoch_line(e, epochs: int) -> str:
    return (
        f"epoch {e.epoch:>3}/{epochs}  mean lr {e.lr:.4f}  train loss {e.train_loss:.4f}  "
        f"val loss {e.val_loss:.4f}  val acc {100 * e.val_acc:6.2f} %  {e.seconds:6.2f} s"
    )


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        import nas

        def of(package: str) -> str:
            try:
                return version(package)
            except PackageNotFoundError:
                return "not installed"

        say(f"nas {nas.__version__} (torch {of('torch')}, optuna {of('optuna')}, Python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_version,
            help="Print the versions of nas, torch, optuna and Python, and exit.",
        ),
    ] = False,
) -> None:
    if ctx.invoked_subcommand in PRINT_ONLY and hasattr(signal, "SIGPIPE"):
        signal.signal(
            signal.SIGPIPE, signal.SIG_DFL
        )  # these only print: a reader that closed the pipe ends them silently


@app.command(short_help="Print an architecture's layer table.")
def summary(
    arch: Annotated[str, typer.Argument(help="Architecture .toml file, or a built-in one by name (seed_9274).")],
) -> None:
    """Print the layer table (output shape, parameters, receptive field) of an architecture."""
    from nas.arch.spec import load_arch
    from nas.arch.summary import summary_table

    say(summary_table(load_arch(arch)))


@app.command(short_help="Train one architecture and print its accuracy.")
def train(
    arch: Annotated[
        str,
        typer.Argument(
            help="Architecture .toml file or built-in name; its train table, if any, sets the training defaults."
        ),
    ],
    epochs: Annotated[int | None, typer.Option(min=1, show_default=_table(_TRAIN.epochs), help="Epochs.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0, show_default=_table(_TRAIN.seed), help="Random seed for initialisation, shuffling and augmentation."
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=_table(_TRAIN.batch_size),
            help=(
                f"Batch size; the learning rate scales with it. Unless given, it is halved (down to {REFERENCE_BATCH}) until the epochs make {MIN_UPDATES} updates."
            ),
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(show_default=_table(_TRAIN.lr), help="Peak learning rate at batch size 128, positive."),
    ] = None,
    optimizer: Annotated[
        Optimizer | None, typer.Option(show_default=_table(_TRAIN.optimizer), help="Optimizer.")
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            show_default=_table("on" if _TRAIN.augment else "off"),
            help="Random small rotation/translation.",
        ),
    ] = None,
    val_size: ValSize = None,
    train_size: TrainSize = None,
    device: DeviceOpt = Device.auto,
    dataset: DatasetOpt = DEFAULT_DATASET,
    data_dir: DataDir = None,
    out: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Save state_dict.pt, architecture.toml and history.json in this folder."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite what an earlier run saved in --out.")] = False,
) -> None:
    """Train one architecture on the data (MNIST unless --dataset); print per-epoch progress, then validation and test accuracy."""
    from dataclasses import asdict

    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from nas.arch.spec import arch_to_toml, load_arch
    from nas.data import datasets
    from nas.data import tensors as loader
    from nas.study.analytics import count
    from nas.train.engine import check_fits, evaluate
    from nas.train.engine import train as fit

    spec = load_arch(arch)
    overrides = {
        k: v
        for k, v in dict(
            epochs=epochs,
            seed=seed,
            batch_size=batch_size,
            lr=lr,
            augment=augment,
            optimizer=optimizer.value if optimizer else None,
        ).items()
        if v is not None
    }
    asked = TrainConfig.from_dict({**spec.train, **overrides}, str(arch))
    saved = ("state_dict.pt", "architecture.toml", "history.json")
    if out:
        _refuse_overwrite(out, saved, force)
        _writable(out)
    dev = _device(device)
    ds = datasets.read(dataset, data_dir, log=say)
    check_fits(spec, ds.spec)
    splits = loader.load(data_dir, dev, val_size=val_size, train_size=train_size, dataset=ds)
    cfg = asked if batch_size else asked.fitted(len(splits.train))
    if cfg.batch_size != asked.batch_size:
        say(
            f"batch {asked.batch_size} halved to {cfg.batch_size}: {count(cfg.epochs, 'epoch')} of {len(splits.train):,} images must make {MIN_UPDATES} updates, "
            "or a large batch diverges (pass --batch-size to choose)"
        )
    say(
        f"{spec.name}: {len(spec.layers)} layers, training {len(splits.train):,} images of {ds.spec.name}, validating on {len(splits.val):,}, device {dev}"
    )
    say(f"config: {json.dumps(cfg.to_dict())}")
    with Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("", total=cfg.epochs)

        def on_epoch(e) -> None:
            bar.console.print(epoch_line(e, cfg.epochs), highlight=False)
            bar.advance(task)

        trained = fit(spec, splits, cfg, on_epoch=on_epoch, on_progress=interrupt.check)
    model, history = trained.model(), trained.history
    test = loader.load_test(data_dir, dev, dataset=ds)
    test_loss, test_acc = evaluate(model, test)
    seconds = sum(e.seconds for e in history)
    say(
        f"final: val acc {100 * history[-1].val_acc:.2f} %  test acc {100 * test_acc:.2f} %  "
        f"({seconds:.1f} s, {seconds / len(history):.2f} s/epoch on {dev})"
    )
    if out:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "state_dict.pt")
        spec.train = cfg.to_dict()
        (out / "architecture.toml").write_text(arch_to_toml(spec))
        (out / "history.json").write_text(
            json.dumps(
                {
                    "history": [asdict(e) for e in history],
                    "test_acc": test_acc,
                    "test_loss": test_loss,
                    "device": str(dev),
                    "dataset": ds.spec.to_dict(),
                },
                indent=1,
            )
        )
        say(f"saved to {out}/")


@space_app.command("show", short_help="Print a search space, its size and cost estimates.")
def space_show(
    file: Annotated[str, typer.Argument(help="Search space .toml, or a built-in one by name.")] = "mnist_fcn",
    max_params: Annotated[
        int | None, typer.Option(min=1, help="Also estimate the share of the space within this many parameters.")
    ] = None,
    max_macs: Annotated[
        int | None, typer.Option(min=1, help="Also estimate the share within this many MACs per image.")
    ] = None,
    max_activation_kb: Annotated[
        float | None,
        typer.Option(help="Also estimate the share within this peak int8 activation memory (KB of 1,000 bytes)."),
    ] = None,
    max_model_kb: Annotated[
        float | None, typer.Option(help="Also estimate the share within this int8 model size (KB of 1,000 bytes).")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME|PATH",
            show_default="the space file's, else MNIST's",
            help="Estimate for this data's image shape and classes, as a search on it does.",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Print a search space, its size and estimates of its parameters, MACs, activation memory and model size."""
    from nas.space.spaces import describe, load_space, read_space, space_for

    if dataset is None:
        space = load_space(file)
    else:
        from nas.data import datasets

        space = space_for(read_space(file), datasets.read(dataset, data_dir, log=say).spec, str(file))
    say(
        describe(
            space,
            max_params=max_params,
            max_macs=max_macs,
            max_activation_kb=max_activation_kb,
            max_model_kb=max_model_kb,
        )
    )


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
            help="How trials are drawn: tpe, nsga2, gp (needs scipy), random, or evolution (mutations of the Pareto front).",
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
            show_default="off, see the README's measurement",
            help="Pareto rule: at these fractions of the epochs, stop a trial not in the top 1/--stop-eta of the trials that cost no more (repeatable).",
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
    train_size: TrainSize = None,
    val_size: ValSize = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME|PATH",
            show_default=f"{DEFAULT_DATASET}, or a resumed study's",
            help=(
                f"The data, stored with a new study (its name, shape, classes, normalisation and SHA-256): {', '.join(NAMED)}, or PATH: a folder of the four "
                "IDX files, or an .npz with x (uint8 [N, H, W] or [N, H, W, C]) and y, optionally x_test and y_test and class_names. Resuming, a PATH says "
                "where the study's data is on this machine and is checked against it."
            ),
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=f"{DEFAULT_TRIALS} unless --timeout is given",
            help="Run until the study has this many finished trials.",
        ),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop starting new trials after this many seconds.")
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
        ).items()
        if v is not None
    }
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
    if trials is None and timeout is None:
        trials = DEFAULT_TRIALS
    _run_search(
        study_name,
        storage,
        settings,
        given,
        trials,
        timeout,
        _run_options(workers, trials_per_gpu, device, dataset, data_dir, artifacts),
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
                "Where the study's data is on this machine, when the study was made from a PATH that differs here; checked against the study's SHA-256."
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
):
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
    run,
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
    _interrupted[0] = lambda: (
        f"interrupted after {analytics.elapsed(start)}; run the same command to resume"
    )  # short: one terminal line
    study = s.search(study_name, storage, settings, trials, timeout, run, given)
    say(f"done in {analytics.elapsed(start)}")
    say(analytics.summary(study))


@app.command(short_help="Print the best architecture of a study.")
def best(study_name: StudyName = "mnist", storage: Storage = DEFAULT_STORAGE) -> None:
    """Print the best architecture of a study (smallest one meeting the target) as a layer table."""
    from nas.arch.spec import arch_from_dict
    from nas.arch.summary import summary_table
    from nas.study import analytics
    from nas.study.storage import load_study

    study = load_study(study_name, storage)
    say(analytics.summary(study))
    t = analytics.best_trial(study)
    if t is None:
        raise UsageError(
            f"study {study_name!r} has no trial that reaches its target of "
            f"{100 * analytics.study_settings(study).target_accuracy:.2f} % yet; search longer (nas search --study-name {study_name})"
        )
    say(summary_table(arch_from_dict(json.loads(t.user_attrs["arch"]), f"trial {t.number}")))
    say(f"training: {json.dumps(t.user_attrs['train_config'])}")


@app.command(short_help="Serve optuna-dashboard on the study storage.")
def dashboard(
    study_name: Annotated[
        str | None,
        typer.Option(
            "--study-name",
            "--study",
            show_default="the storage's only study",
            help="The study whose page to print and open.",
        ),
    ] = None,
    storage: Storage = DEFAULT_STORAGE,
    host: Annotated[
        str, typer.Option(help="Interface to listen on: the loopback, or 0.0.0.0 for every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8080,
    artifacts: Artifacts = None,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Also open the study's page in a web browser on this machine.")
    ] = False,
) -> None:
    """Serve optuna-dashboard on the study storage, with its artifacts, and print the study's page."""
    import socket
    import threading
    import webbrowser

    import optuna
    import optuna_dashboard

    from nas.study import notes
    from nas.study import storage as st

    loc = st.parse(storage)
    backend = optuna.storages.get_storage(st.open_storage(loc, create=False))
    names = [s.study_name for s in backend.get_all_studies()]
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name is not None and study_name not in names:
        raise UsageError(
            f"{loc.shown} has no study {study_name!r} (it has: {', '.join(names) or 'none'}); check --study or --storage"
        )
    _port_is_free(host, port)
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    url = (
        notes.study_url(shown, port, backend.get_study_id_from_name(study_name))
        if study_name
        else f"http://{shown}:{port}/dashboard"
    )
    folder, store = notes.artifact_store_for(storage, artifacts)
    say(
        f"optuna-dashboard for {loc.shown}; artifacts: "
        + (str(folder) if folder else "none (give --artifacts DIR, the folder the workers upload to)")
    )
    say(f"study {study_name!r}: {url}" if study_name else f"studies {', '.join(names)}: {url}")
    say("Ctrl-C to stop")
    if open_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    _interrupted[0] = lambda: "dashboard stopped"
    try:
        optuna_dashboard.run_server(backend, host=host, port=port, artifact_store=store)
    except OSError as e:  # taken between the check and now
        raise UsageError(
            f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}); choose another --port"
        ) from None


def _port_is_free(host: str, port: int) -> None:
    """Refuse a port another server holds before printing a URL that would not answer (the
    server itself reports it only after its "Listening on" line, as a traceback)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UsageError(
            f"--host {host}: not an address of this machine ({e.strerror or e}); give 127.0.0.1, or 0.0.0.0 for every interface"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as e:
            raise UsageError(
                f"--port {port}: cannot listen on {host}:{port} ({e.strerror or e}; another nas dashboard?); choose another --port"
            ) from None


@app.command(short_help="Write a study's trials.csv and report.html.")
def report(
    study_name: StudyName = "mnist",
    storage: Storage = DEFAULT_STORAGE,
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help="Folder for trials.csv and report.html (made if missing; their earlier versions are replaced).",
        ),
    ] = Path("runs/report"),
) -> None:
    """Write trials.csv and a self-contained report.html (Pareto front, history, importances, curves)."""
    from nas.study import analytics
    from nas.study.report import rule_table, write_report
    from nas.study.storage import load_study

    study = load_study(study_name, storage)
    _writable(out)
    paths = write_report(study, out)
    say(analytics.summary(study))
    replays = rule_table(study)
    if replays:
        say("convergence rules replayed on the trials that trained all their epochs:")
        for line in replays:
            say("  " + line)
    say("wrote " + ", ".join(str(p) for p in paths))


@app.command(short_help="Retrain the winner on all the data and write its model files.")
def export(
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help=(
                "Folder to write model.pt (TorchScript), model.pt2 (torch.export), state_dict.pt, architecture.toml, metrics.json and README.md "
                "(the model card), and with the onnx extra model.onnx and model.int8.onnx."
            ),
        ),
    ],
    study_name: Annotated[
        str | None,
        typer.Option(
            "--study-name",
            "--study",
            show_default="mnist, unless --arch is given",
            help="Export the best trial (or --trial N) of this study.",
        ),
    ] = None,
    storage: Storage = DEFAULT_STORAGE,
    trial: Annotated[int | None, typer.Option(min=0, help="Export this trial number instead of the best.")] = None,
    arch: Annotated[
        str | None, typer.Option(help="Export an architecture file (or built-in name) instead of a study's trial.")
    ] = None,
    seeds: Annotated[
        int, typer.Option(min=1, help="Retrain with this many seeds to show the result holds (model.pt is seed 0's).")
    ] = 1,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1, show_default=f"the study's --max-epochs; with --arch, {_table(_TRAIN.epochs)}", help="Epochs."
        ),
    ] = None,
    device: DeviceOpt = Device.auto,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME|PATH",
            show_default=(
                f"with --arch {DEFAULT_DATASET}; with a study, its named dataset from --data-dir, or the path it was made with"
            ),
            help=(
                f"With --arch, the data to train on ({', '.join(NAMED)} or PATH); with a study, where the study's data is on this machine, checked against its SHA-256."
            ),
        ),
    ] = None,
    data_dir: DataDir = None,
    train_size: Annotated[
        int | None,
        typer.Option(min=1, show_default="all", help="Retrain on the first N training images only (smoke runs)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an earlier export in --out.")] = False,
    artifacts: Artifacts = None,
) -> None:
    """Retrain the winner on all the data's training images, test it once, and write it as TorchScript (model.pt), a torch.export
    program (model.pt2) and, with the onnx extra, ONNX (fp32 and int8)."""
    from nas.arch.spec import load_arch, param_count
    from nas.data import datasets
    from nas.ship import export as ex
    from nas.study import analytics
    from nas.study.analytics import count
    from nas.study.storage import load_study
    from nas.train.engine import check_fits

    if arch is not None and study_name is not None:
        raise UsageError("give either --study NAME (best or --trial N of a study) or --arch FILE, not both")
    if arch is None:
        study_name = study_name or "mnist"
    _refuse_overwrite(out, ex.FILES, force)
    _writable(out)
    if arch is not None:
        spec = load_arch(arch)
        ds = datasets.read(dataset or DEFAULT_DATASET, data_dir, log=say)
        source = ex.Source(
            spec, TrainConfig.from_dict(spec.train, str(arch)), {"study": None, "trial": None, "arch_file": str(arch)}
        )
    else:
        study = load_study(study_name, storage)
        if trial is None:
            chosen = analytics.best_trial(study)
            if chosen is None:
                raise UsageError(
                    f"study {study_name!r} has no complete trial reaching {100 * analytics.study_settings(study).target_accuracy:.2f} % validation accuracy; "
                    "search longer, or pick one with --trial N"
                )
        else:
            found = [t for t in study.get_trials(deepcopy=False) if t.number == trial and t.state.name == "COMPLETE"]
            if not found:
                raise UsageError(f"study {study_name!r} has no complete trial number {trial}; see `nas report`")
            chosen = found[0]
        source = ex.from_trial(study, chosen)
        ds = datasets.for_study(analytics.study_settings(study).dataset, dataset, data_dir, log=say)
    check_fits(source.arch, ds.spec)
    say(f"exporting {source.arch.name}: {param_count(source.arch):,} params, {count(seeds, 'seed')}, {ds.spec.name}")
    try:
        m = ex.export(
            source, out, ds, _device(device), seeds, epochs, log=say, train_size=train_size, on_progress=interrupt.check
        )
    except ex.ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if (
        study_name is not None
    ):  # the study remembers its exports (report, study note) and offers their files for download
        from nas.study import notes

        notes.record_export(study, m, out, notes.artifact_store_for(storage, artifacts)[1])
    say(
        f"test accuracy {100 * m['test_acc']:.2f} % (seeds: mean {100 * m['test_acc_mean']:.2f} %, range {100 * m['test_acc_min']:.2f}-{100 * m['test_acc_max']:.2f} %), "
        f"{m['params']:,} params; TorchScript via {m['torchscript']}{' and ONNX' if m['onnx'] else ''} taking pixels in [0, 1] (normalisation inside), "
        f"verified in a fresh process; wrote {out}/"
    )


class _ListArgument(typer.core.TyperCommand):
    """Help names a repeatable argument by its metavar alone (`IMAGE`; the usage line says `{IMAGE}...`), without the
    Python type recent typer adds to it (`<list[Path]>`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.nargs == -1 and hasattr(param, "display_type_rich"):
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]


@app.command(cls=_ListArgument, short_help="Classify images with an exported model.")
def predict(
    model: Annotated[
        Path,
        typer.Argument(
            dir_okay=False,
            help="Exported model.pt (TorchScript), model.onnx or model.int8.onnx (run by onnxruntime); they normalise inside.",
        ),
    ],
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE",
            help=(
                "PNG/JPEG pictures, IDX files or .npz files (their x) of images the model's size; a picture is read in the model's channels (grey or colour), "
                "and inverted first when its background is the opposite of the training images' (a dark digit on light paper for MNIST)."
            ),
        ),
    ],
) -> None:
    """Print the class an exported model sees in each image (fed as pixels in [0, 1]), with its name where the data has names."""
    from nas.ship.predict import classify, load_images, load_model

    net, info = load_model(model)
    pictures = [load_images(path, info) for path in images]  # every input is checked before any output
    for path, (picture, inverted) in zip(images, pictures):
        classes, conf = classify(net, picture)
        for i, (k, c) in enumerate(zip(classes.tolist(), conf.tolist())):
            say(
                f"{path}{f'[{i}]' if len(classes) > 1 else ''}: {info.label(k)}  ({100 * c:.1f} %)"
                + (f"  ({info.inverted})" if inverted else "")
            )


def _refuse_overwrite(out: Path, names: tuple[str, ...], force: bool) -> None:
    """An earlier run's files are overwritten only when asked."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    earlier = [n for n in names if (out / n).exists()]
    if earlier and not force:
        raise UsageError(
            f"{out} already holds {', '.join(earlier)} from an earlier run; pass --force to overwrite, or choose another --out"
        )


def _writable(out: Path) -> None:
    """Refuse an --out folder that cannot be made or written, before any work is done; a folder
    made to find out is removed again (the command makes it when it writes)."""
    import tempfile

    made: list[Path] = []
    try:
        for folder in reversed((out, *out.parents)):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    finally:
        for folder in reversed(made):
            folder.rmdir()


def _device(device: Device):
    from nas.train.engine import resolve_device

    return resolve_device(device.value)


def _error(e: BaseException) -> str | None:
    """A command-line mistake typer (click) caught, as one line; None for anything else. Named
    by duck type: typer vendors its own copy of click in recent versions."""
    if not (hasattr(e, "format_message") and hasattr(e, "exit_code")) or type(e).__name__ in ("Exit", "Abort"):
        return None
    ctx = getattr(e, "ctx", None)
    return e.format_message() + (f" (see {ctx.command_path} --help)" if ctx is not None else "")


def main() -> None:
    """Entry point: a mistake the user can fix is one line on stderr (`error: ...`, exit 2),
    never a traceback; Ctrl-C is one line (exit 130)."""
    code: int = 0
    with interrupt.catching():
        try:
            code = app(standalone_mode=False, prog_name="nas") or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            code = 130
        except Exception as e:  # noqa: BLE001 - typer's own usage errors, whatever its version calls them
            line = _error(e)
            if type(e).__name__ == "NoArgsIsHelpError":  # `nas` alone: the help, as click shows it
                print(e.format_message(), file=sys.stderr)
                code = 2
            elif line is not None:
                print(f"error: {line}", file=sys.stderr)
                code = 2
            elif type(e).__name__ == "Abort":  # click's word for a Ctrl-C
                code = 130
            else:
                raise
        if code == 130 or interrupt.happened():  # typer turns a Ctrl-C into exit code 130 without a word
            print(_interrupted[0](), file=sys.stderr)
            code = 130
    sys.exit(code)
