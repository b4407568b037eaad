"""The commands on one architecture or search space: `summary` (its layer table), `train` (train
it once and print its accuracy) and `space show` (a search space, its size and costs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nas.cli.app import app, say
from nas.cli.options import (
    TRAIN_DEFAULTS,
    DataDir,
    DatasetOpt,
    Device,
    DeviceOpt,
    Optimizer,
    TrainSize,
    ValSize,
    check_writable,
    refuse_overwrite,
    table_default,
    torch_device,
)
from nas.data.datasets import DEFAULT as DEFAULT_DATASET
from nas.search import interrupt
from nas.train.config import MIN_UPDATES, REFERENCE_BATCH, TrainConfig

if TYPE_CHECKING:
    from nas.train.engine import Epoch

space_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect search spaces.")
app.add_typer(space_app, name="space")


def epoch_line(e: Epoch, epochs: int) -> str:
    return (
        f"epoch {e.epoch:>3}/{epochs}  mean lr {e.lr:.4f}  train loss {e.train_loss:.4f}  "
        f"val loss {e.val_loss:.4f}  val acc {100 * e.val_acc:6.2f} %  {e.seconds:6.2f} s"
    )


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
    epochs: Annotated[
        int | None, typer.Option(min=1, show_default=table_default(TRAIN_DEFAULTS.epochs), help="Epochs.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            show_default=table_default(TRAIN_DEFAULTS.seed),
            help="Random seed for initialisation, shuffling and augmentation.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=table_default(TRAIN_DEFAULTS.batch_size),
            help=(
                "Batch size; the learning rate scales with it. Unless given, it is halved "
                f"(down to {REFERENCE_BATCH}) until the epochs make {MIN_UPDATES} updates."
            ),
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            show_default=table_default(TRAIN_DEFAULTS.lr), help="Peak learning rate at batch size 128, positive."
        ),
    ] = None,
    optimizer: Annotated[
        Optimizer | None, typer.Option(show_default=table_default(TRAIN_DEFAULTS.optimizer), help="Optimizer.")
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            show_default=table_default("on" if TRAIN_DEFAULTS.augment else "off"),
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
    """Train one architecture on the data (MNIST unless --dataset); print per-epoch progress, then
    validation and test accuracy."""
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
        refuse_overwrite(out, saved, force)
        check_writable(out)
    dev = torch_device(device)
    ds = datasets.read(dataset, data_dir, log=say)
    check_fits(spec, ds.spec)
    splits = loader.load(data_dir, dev, val_size=val_size, train_size=train_size, dataset=ds)
    cfg = asked if batch_size else asked.fitted(len(splits.train))
    if cfg.batch_size != asked.batch_size:
        say(
            f"batch {asked.batch_size} halved to {cfg.batch_size}: {count(cfg.epochs, 'epoch')} of "
            f"{len(splits.train):,} images must make {MIN_UPDATES} updates, "
            "or a large batch diverges (pass --batch-size to choose)"
        )
    say(
        f"{spec.name}: {len(spec.layers)} layers, training {len(splits.train):,} images of {ds.spec.name}, "
        f"validating on {len(splits.val):,}, device {dev}"
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

        def on_epoch(e: Epoch) -> None:
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
