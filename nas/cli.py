"""The `nas` command line: thin wrappers that parse options, print progress and map errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from nas.arch import SpecError, load_arch
from nas.data import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search for small fully convolutional networks under a hard parameter budget.")

DataDir = typer.Option(None, "--data-dir", envvar="NAS_DATA_DIR", help="Folder with the MNIST IDX files (default: ~/.cache/nas/mnist, downloaded if missing).")
Device = typer.Option("auto", "--device", help="auto, cpu or cuda.")


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def say(message: str) -> None:
    print(message, flush=True)


def epoch_line(e, epochs: int) -> str:
    return (f"epoch {e.epoch:>3}/{epochs}  lr {e.lr:.4f}  train loss {e.train_loss:.4f}  "
            f"val loss {e.val_loss:.4f}  val acc {100 * e.val_acc:6.2f} %  {e.seconds:6.2f} s")


@app.command()
def summary(arch: Path = typer.Argument(..., help="Architecture .toml file.")) -> None:
    """Print the layer table (output shape, parameters, receptive field) of an architecture."""
    from nas.summary import summary_table

    say(summary_table(load_arch(arch)))


@app.command()
def train(
    arch: Path = typer.Argument(..., help="Architecture .toml file (its [train] table, if any, sets the defaults)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default 20)."),
    seed: Optional[int] = typer.Option(None, help="Random seed for initialisation, shuffling and augmentation."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size (default 128; the learning rate scales with it)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate at batch size 128."),
    optimizer: Optional[str] = typer.Option(None, help="sgd or adamw."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Random small rotation/translation."),
    val_size: int = typer.Option(10_000, help="Training images held out for validation."),
    train_size: Optional[int] = typer.Option(None, help="Train on the first N of the remaining training images."),
    device: str = Device,
    data_dir: Optional[Path] = DataDir,
    out: Optional[Path] = typer.Option(None, help="Save state_dict.pt, architecture.toml and history.json here."),
) -> None:
    """Train one architecture on MNIST; print per-epoch progress, then validation and test accuracy."""
    from dataclasses import asdict

    import torch

    from nas import data as mnist
    from nas.arch import arch_to_toml
    from nas.train import TrainConfig, evaluate, resolve_device
    from nas.train import train as fit

    spec = load_arch(arch)
    overrides = {k: v for k, v in dict(epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, optimizer=optimizer, augment=augment).items() if v is not None}
    cfg = TrainConfig.from_dict({**spec.train, **overrides}, str(arch))
    dev = _device(device)
    splits = mnist.load(data_dir, dev, val_size=val_size, train_size=train_size)
    say(f"{spec.name}: {sum(1 for _ in spec.layers)} layers, training {len(splits.train):,} images, validating on {len(splits.val):,}, device {dev}")
    say(f"config: {json.dumps(cfg.to_dict())}")
    model, history = fit(spec, splits, cfg, on_epoch=lambda e: say(epoch_line(e, cfg.epochs)))
    test = mnist.load_test(data_dir, dev)
    test_loss, test_acc = evaluate(model, test)
    seconds = sum(e.seconds for e in history)
    say(f"final: val acc {100 * history[-1].val_acc:.2f} %  test acc {100 * test_acc:.2f} %  "
        f"({seconds:.1f} s, {seconds / len(history):.2f} s/epoch on {dev})")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "state_dict.pt")
        spec.train = cfg.to_dict()
        (out / "architecture.toml").write_text(arch_to_toml(spec))
        (out / "history.json").write_text(json.dumps({"history": [asdict(e) for e in history], "test_acc": test_acc, "test_loss": test_loss, "device": str(dev)}, indent=1))
        say(f"saved to {out}/")


def _device(name: str):
    from nas.train import resolve_device

    try:
        return resolve_device(name)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None


def main() -> None:
    """Entry point: known errors become one line on stderr (exit 2), never a traceback."""
    try:
        app()
    except (SpecError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
