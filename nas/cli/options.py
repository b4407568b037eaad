"""The options several commands share, written once so that each reads the same in every `--help`,
and the checks on them that run before any work is done.

Nothing here imports torch: the options are built whenever `nas` starts, `--help` included.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nas.arch.budgets import NAMES as RESOURCE_NAMES
from nas.data.datasets import MAX_VAL, NAMED
from nas.errors import UsageError
from nas.study.settings import OBJECTIVES, PRUNING_MODES, SAMPLERS
from nas.train.config import OPTIMIZERS, TrainConfig

if TYPE_CHECKING:
    import torch

# The choices of an option are the values the settings list, so that the two cannot drift apart.
if TYPE_CHECKING:  # mypy cannot see members made from a list: to it, each is a StrEnum
    Objective = StrEnum
    Pruning = StrEnum
    Optimizer = StrEnum
    Minimize = StrEnum
    Sampler = StrEnum
else:
    Objective = StrEnum("Objective", {v: v for v in OBJECTIVES})
    Pruning = StrEnum("Pruning", {v: v for v in PRUNING_MODES})
    Optimizer = StrEnum("Optimizer", {v: v for v in OPTIMIZERS})
    Minimize = StrEnum("Minimize", {v: v for v in RESOURCE_NAMES})
    Sampler = StrEnum("Sampler", {v: v for v in SAMPLERS})


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


TRAIN_DEFAULTS = TrainConfig()
DEFAULT_STORAGE = "sqlite:///studies/nas.sqlite3"

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="NAS_DATA_DIR",
        file_okay=False,
        show_default="~/.cache/nas/NAME",
        help="Where the named datasets are on this machine: for mnist the folder of its four IDX files, "
        "for fashion-mnist and kmnist the folder that holds their NAME/ folder; missing files are downloaded there.",
    ),
]
DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset",
        metavar="NAME|PATH",
        help=f"The data: {', '.join(NAMED)}, or PATH: a folder of the four IDX files, "
        "or an .npz with x (uint8 [N, H, W] or [N, H, W, C]) and y (integer labels), "
        "optionally x_test and y_test (else a test split is held out of x) and class_names.",
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
        help="Folder of the study's artifacts (architecture files, model cards) that the dashboard offers "
        "for download; with workers on several machines, give a folder all of them and the dashboard share.",
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


def table_default(default: object) -> str:
    """The default of a train option: the architecture's train table sets it (TrainConfig where it says nothing)."""
    return f"the architecture's train table, else {default}"


def refuse_overwrite(out: Path, names: tuple[str, ...], force: bool) -> None:
    """An earlier run's files are overwritten only when asked."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    earlier = [n for n in names if (out / n).exists()]
    if earlier and not force:
        raise UsageError(
            f"{out} already holds {', '.join(earlier)} from an earlier run; "
            "pass --force to overwrite, or choose another --out"
        )


def check_writable(out: Path) -> None:
    """Refuse an --out folder that cannot be made or written, before any work is done; a folder
    made to find out is removed again (the command makes it when it writes). Another command may
    make the same parent folders at the same moment (two exports side by side): a folder that
    appears meanwhile is theirs, one they have written into is left, and one that vanishes
    meanwhile (their look, undone) is made again."""
    import tempfile

    made: list[Path] = []
    try:
        for attempt in range(3):
            try:
                for folder in reversed((out, *out.parents)):
                    if not folder.exists():
                        with contextlib.suppress(FileExistsError):
                            folder.mkdir()
                            made.append(folder)
                break
            except FileNotFoundError:  # the other command removed a parent it had made to look: again
                if attempt == 2:
                    raise
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    finally:
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: another command is using it
                folder.rmdir()


def torch_device(device: Device) -> torch.device:
    """The device --device names (auto: a GPU where there is one); imports torch."""
    from nas.train.engine import resolve_device

    return resolve_device(device.value)
