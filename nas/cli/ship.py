"""The commands that ship a network: `export` retrains the winner (or an architecture file) on all
the data and writes its model files; `predict` classifies images with an exported model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nas.cli.app import app, say
from nas.cli.options import (
    DEFAULT_STORAGE,
    TRAIN_DEFAULTS,
    Artifacts,
    DataDir,
    Device,
    DeviceOpt,
    Storage,
    check_writable,
    refuse_overwrite,
    table_default,
    torch_device,
)
from nas.data.datasets import DEFAULT as DEFAULT_DATASET
from nas.data.datasets import NAMED
from nas.errors import UsageError
from nas.search import interrupt
from nas.train.config import TrainConfig

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


@app.command(short_help="Retrain the winner on all the data and write its model files.")
def export(
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            help=(
                "Folder to write model.pt (TorchScript), model.pt2 (torch.export), state_dict.pt, "
                "architecture.toml, metrics.json and README.md (the model card), "
                "and with the onnx extra model.onnx and model.int8.onnx."
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
            min=1,
            show_default=f"the study's --max-epochs; with --arch, {table_default(TRAIN_DEFAULTS.epochs)}",
            help="Epochs.",
        ),
    ] = None,
    device: DeviceOpt = Device.auto,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME|PATH",
            show_default=(
                f"with --arch {DEFAULT_DATASET}; "
                "with a study, its named dataset from --data-dir, or the path it was made with"
            ),
            help=(
                f"With --arch, the data to train on ({', '.join(NAMED)} or PATH); "
                "with a study, where the study's data is on this machine, checked against its SHA-256."
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
    """Retrain the winner on all the data's training images, test it once, and write it as
    TorchScript (model.pt), a torch.export program (model.pt2) and, with the onnx extra, ONNX
    (fp32 and int8)."""
    from nas.arch.spec import load_arch, param_count
    from nas.data import datasets
    from nas.ship import export as ex
    from nas.study import analytics
    from nas.study.analytics import count
    from nas.study.storage import load_study
    from nas.train.engine import check_fits

    if arch is not None and study_name is not None:
        raise UsageError("give either --study NAME (best or --trial N of a study) or --arch FILE, not both")
    refuse_overwrite(out, ex.FILES, force)
    check_writable(out)
    study: optuna.Study | None = None
    if arch is not None:
        spec = load_arch(arch)
        ds = datasets.read(dataset or DEFAULT_DATASET, data_dir, log=say)
        source = ex.Source(
            spec, TrainConfig.from_dict(spec.train, str(arch)), {"study": None, "trial": None, "arch_file": str(arch)}
        )
    else:
        study = load_study(study_name or "mnist", storage)
        source = ex.from_trial(study, _chosen(study, trial))
        ds = datasets.for_study(analytics.study_settings(study).dataset, dataset, data_dir, log=say)
    check_fits(source.arch, ds.spec)
    say(f"exporting {source.arch.name}: {param_count(source.arch):,} params, {count(seeds, 'seed')}, {ds.spec.name}")
    try:
        m = ex.export(
            source,
            out,
            ds,
            torch_device(device),
            seeds,
            epochs,
            log=say,
            train_size=train_size,
            on_progress=interrupt.check,
        )
    except ex.ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(1) from None
    if study is not None:  # the study remembers its exports (report, study note) and offers their files for download
        from nas.study import notes

        notes.record_export(study, m, out, notes.artifact_store_for(storage, artifacts)[1])
    say(
        f"test accuracy {100 * m['test_acc']:.2f} % (seeds: mean {100 * m['test_acc_mean']:.2f} %, "
        f"range {100 * m['test_acc_min']:.2f}-{100 * m['test_acc_max']:.2f} %), "
        f"{m['params']:,} params; TorchScript via {m['torchscript']}{' and ONNX' if m['onnx'] else ''} "
        "taking pixels in [0, 1] (normalisation inside), "
        f"verified in a fresh process; wrote {out}/"
    )


def _chosen(study: optuna.Study, trial: int | None) -> FrozenTrial:
    """The trial to export: number `trial` if given (a complete one), else the study's best."""
    from nas.study import analytics

    if trial is None:
        best = analytics.best_trial(study)
        if best is None:
            raise UsageError(
                f"study {study.study_name!r} has no complete trial reaching "
                f"{100 * analytics.study_settings(study).target_accuracy:.2f} % validation accuracy; "
                "search longer, or pick one with --trial N"
            )
        return best
    found = [t for t in study.get_trials(deepcopy=False) if t.number == trial and t.state.name == "COMPLETE"]
    if not found:
        raise UsageError(f"study {study.study_name!r} has no complete trial number {trial}; see `nas report`")
    return found[0]


class _ListArgument(typer.core.TyperCommand):
    """Help names a repeatable argument by its metavar alone (`IMAGE`; the usage line says
    `{IMAGE}...`), without the Python type recent typer adds to it (`<list[Path]>`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.nargs == -1 and hasattr(param, "display_type_rich"):
                param.display_type_rich = lambda ctx: None


@app.command(cls=_ListArgument, short_help="Classify images with an exported model.")
def predict(
    model: Annotated[
        Path,
        typer.Argument(
            dir_okay=False,
            help="Exported model.pt (TorchScript), model.onnx or model.int8.onnx (run by onnxruntime); "
            "they normalise inside.",
        ),
    ],
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE",
            help=(
                "PNG/JPEG pictures, IDX files or .npz files (their x) of images the model's size; "
                "a picture is read in the model's channels (grey or colour), and inverted first when its background "
                "is the opposite of the training images' (a dark digit on light paper for MNIST)."
            ),
        ),
    ],
) -> None:
    """Print the class an exported model sees in each image (fed as pixels in [0, 1]), with its name
    where the data has names."""
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
