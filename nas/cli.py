"""The `nas` command line: thin wrappers that parse options, print progress and map errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from nas.arch import SpecError, load_arch, param_count
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from nas import data as mnist
    from nas.arch import arch_to_toml
    from nas.train import TrainConfig, evaluate
    from nas.train import train as fit

    spec = load_arch(arch)
    overrides = {k: v for k, v in dict(epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, optimizer=optimizer, augment=augment).items() if v is not None}
    cfg = TrainConfig.from_dict({**spec.train, **overrides}, str(arch))
    dev = _device(device)
    splits = mnist.load(data_dir, dev, val_size=val_size, train_size=train_size)
    say(f"{spec.name}: {len(spec.layers)} layers, training {len(splits.train):,} images, validating on {len(splits.val):,}, device {dev}")
    say(f"config: {json.dumps(cfg.to_dict())}")
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("", total=cfg.epochs)

        def on_epoch(e) -> None:
            bar.console.print(epoch_line(e, cfg.epochs), highlight=False)
            bar.advance(task)

        model, history = fit(spec, splits, cfg, on_epoch=on_epoch)
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


space_app = typer.Typer(no_args_is_help=True, help="Inspect search spaces.")
app.add_typer(space_app, name="space")
Storage = typer.Option("sqlite:///studies/nas.sqlite3", "--storage", envvar="NAS_STORAGE", help="Optuna storage URL (SQLite file by default; any RDB URL to share a study between machines).")
StudyName = typer.Option("mnist", "--study-name", "--study", help="Study name; re-using one resumes it.")


@space_app.command("show")
def space_show(
    file: Path = typer.Argument(Path("search_spaces/mnist_fcn.toml"), help="Search space .toml."),
    max_params: Optional[int] = typer.Option(None, help="Also estimate the share of the space within this budget."),
) -> None:
    """Print a search space, its size and an estimate of its parameter-count range."""
    from nas.space import describe, load_space

    say(describe(load_space(file), max_params=max_params))


@app.command()
def search(
    max_params: int = typer.Option(20_000, help="Parameter budget: bigger architectures are pruned before training."),
    max_epochs: int = typer.Option(20, help="Epochs each trial trains for (at most)."),
    target_accuracy: float = typer.Option(0.994, help="Validation accuracy an architecture must reach."),
    trials: Optional[int] = typer.Option(None, help="Trials to run in this invocation (default 50 unless --timeout is given)."),
    timeout: Optional[float] = typer.Option(None, help="Stop starting new trials after this many seconds."),
    space: Path = typer.Option(Path("search_spaces/mnist_fcn.toml"), help="Search space file."),
    study_name: str = StudyName,
    storage: str = Storage,
    objective: str = typer.Option("pareto", help="pareto: maximise accuracy and minimise parameters; accuracy: accuracy under the budget."),
    pruning: str = typer.Option("on", help="Convergence pruning: on, observe (record where it would prune, train on), off."),
    seed_arch: Optional[list[Path]] = typer.Option(None, "--seed-arch", help="Architecture enqueued first in a new study (repeatable; default: the 9,274-parameter seed)."),
    no_seed_arch: bool = typer.Option(False, "--no-seed-arch", help="Start a new study without seed architectures."),
    workers: int = typer.Option(1, min=1, help="Worker processes on this machine sharing the storage."),
    seed: int = typer.Option(0, help="Seed of the sampler and of every trial's training."),
    device: str = Device,
    data_dir: Optional[Path] = DataDir,
    train_size: Optional[int] = typer.Option(None, help="Search on the first N training images (smoke runs, CI)."),
    val_size: int = typer.Option(10_000, help="Training images held out for validation."),
) -> None:
    """Search the space for the smallest networks reaching the target accuracy."""
    import time

    from nas import search as s
    from nas.space import load_space

    if objective not in s.OBJECTIVES:
        raise UsageError(f"--objective must be one of {', '.join(s.OBJECTIVES)} (got {objective!r})")
    if pruning not in s.PRUNING_MODES:
        raise UsageError(f"--pruning must be one of {', '.join(s.PRUNING_MODES)} (got {pruning!r})")
    if not 0 < target_accuracy <= 1:
        raise UsageError(f"--target-accuracy is a fraction in (0, 1], e.g. 0.994 (got {target_accuracy})")
    load_space(space)  # fail on a bad file before anything starts
    _device(device)
    seeds = [] if no_seed_arch else [str(p) for p in (seed_arch or [s.DEFAULT_SEED])]
    for path in seeds:
        load_arch(path)
    settings = s.Settings(space=str(space), max_params=max_params, max_epochs=max_epochs, target_accuracy=target_accuracy,
                          objective=objective, pruning=pruning, seeds=seeds, seed=seed, device=device,
                          data_dir=str(data_dir) if data_dir else None, train_size=train_size, val_size=val_size)
    if trials is None and timeout is None:
        trials = 50
    start = time.time()
    say(f"study {study_name!r} in {storage}: budget {max_params:,} params, {max_epochs} epochs, target {100 * target_accuracy:.2f} % val acc, objective {objective}")
    try:
        study = s.search(study_name, storage, settings, trials, timeout, workers)
    except KeyboardInterrupt:
        say(f"interrupted after {s.elapsed(start)}: finished trials are saved in {storage}; run the same command to resume")
        study = s.open_study(study_name, storage)
    say(f"done in {s.elapsed(start)}")
    say(_study_summary(study))


def _study_summary(study) -> str:
    from nas import search as s

    c = s.counts(study)
    lines = [f"trials: {c['complete']} complete ({c['converged']} reached the target), pruned {c['pruned_budget']} by budget, "
             f"{c['pruned_invalid']} invalid, {c['pruned_convergence']} by convergence, {c['failed']} failed"]
    front = s.pareto_front(study)
    if front:
        lines.append("Pareto front (validation accuracy vs parameters):")
        lines.append(f"  {'trial':>5}  {'params':>8}  {'val acc':>8}  {'RF':>4}  note")
        for t in front:
            note = "seed" if "seed_file" in t.user_attrs else ""
            lines.append(f"  {t.number:>5}  {t.user_attrs['params']:>8,}  {100 * t.values[0]:>7.2f}%  {t.user_attrs['receptive_field']:>4}  {note}")
    best = s.best_trial(study)
    lines.append(f"best: {s.describe_trial(best)}" if best else f"best: no trial reached {100 * s.study_settings(study).target_accuracy:.2f} % yet")
    return "\n".join(lines)


@app.command()
def best(study_name: str = StudyName, storage: str = Storage) -> None:
    """Print the best architecture of a study (smallest one meeting the target) as a layer table."""
    from nas import search as s
    from nas.arch import arch_from_dict
    from nas.summary import summary_table

    study = s.open_study(study_name, storage)
    say(_study_summary(study))
    t = s.best_trial(study)
    if t is None:
        raise UsageError(f"study {study_name!r} has no trial that reaches its target; search longer or lower --target-accuracy")
    say(summary_table(arch_from_dict(json.loads(t.user_attrs["arch"]), f"trial {t.number}")))
    say(f"training: {json.dumps(t.user_attrs['train_config'])}")


@app.command()
def dashboard(
    study_name: Optional[str] = typer.Option(None, "--study-name", "--study", help="Only used to check the study exists."),
    storage: str = Storage,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8080, help="Port."),
) -> None:
    """Serve optuna-dashboard on the study storage."""
    import optuna_dashboard

    from nas import search as s

    if study_name:
        s.open_study(study_name, storage)
    say(f"optuna-dashboard on http://{host}:{port}/ for {storage} (Ctrl-C to stop)")
    optuna_dashboard.run_server(s.storage_for(storage), host=host, port=port)


@app.command()
def report(
    study_name: str = StudyName,
    storage: str = Storage,
    out: Path = typer.Option(Path("runs/report"), help="Folder for trials.csv and report.html."),
) -> None:
    """Write trials.csv and a self-contained report.html (Pareto front, history, importances, curves)."""
    from nas import search as s
    from nas.report import rule_table, write_report

    study = s.open_study(study_name, storage)
    paths = write_report(study, out)
    say(_study_summary(study))
    replays = rule_table(study)
    if replays:
        say("convergence rules replayed on the trials that trained all their epochs:")
        for line in replays:
            say("  " + line)
    say("wrote " + ", ".join(str(p) for p in paths))


@app.command()
def export(
    out: Path = typer.Option(..., help="Folder to write model.pt, state_dict.pt, architecture.toml, metrics.json, README.md."),
    study_name: Optional[str] = typer.Option(None, "--study-name", "--study", help="Export the best trial of this study."),
    storage: str = Storage,
    trial: Optional[int] = typer.Option(None, help="Export this trial number instead of the best."),
    arch: Optional[Path] = typer.Option(None, help="Export an architecture file instead of a study's trial."),
    seeds: int = typer.Option(1, min=1, help="Retrain with this many seeds to show the result holds (model.pt is seed 0's)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: the study's --max-epochs, or 20 for --arch)."),
    device: str = Device,
    data_dir: Optional[Path] = DataDir,
    train_size: Optional[int] = typer.Option(None, help="Retrain on the first N training images only (smoke runs; the default is all 60,000)."),
) -> None:
    """Retrain the winner on all 60,000 training images, test it once, write it as TorchScript."""
    from nas import export as ex
    from nas import search as s
    from nas.train import TrainConfig

    if (arch is None) == (study_name is None):
        raise UsageError("give either --study NAME (best or --trial N of a study) or --arch FILE")
    if arch is not None:
        spec = load_arch(arch)
        source = ex.Source(spec, TrainConfig.from_dict(spec.train, str(arch)), {"study": None, "trial": None, "arch_file": str(arch)})
    else:
        study = s.open_study(study_name, storage)
        if trial is None:
            chosen = s.best_trial(study)
            if chosen is None:
                raise UsageError(f"study {study_name!r} has no complete trial reaching {100 * s.study_settings(study).target_accuracy:.2f} % validation accuracy; "
                                 "search longer, or pick one with --trial N")
        else:
            found = [t for t in study.get_trials(deepcopy=False) if t.number == trial and t.state.name == "COMPLETE"]
            if not found:
                raise UsageError(f"study {study_name!r} has no complete trial number {trial}; see `nas report`")
            chosen = found[0]
        source = ex.from_trial(study, chosen)
    say(f"exporting {source.arch.name}: {param_count(source.arch):,} params, {seeds} seed(s)")
    try:
        m = ex.export(source, out, str(data_dir) if data_dir else None, _device(device), seeds, epochs, log=say, train_size=train_size)
    except ex.ExportError as e:
        say(f"error: {e}")
        raise typer.Exit(1)
    say(f"test accuracy {100 * m['test_acc']:.2f} % (seeds: mean {100 * m['test_acc_mean']:.2f} %, range {100 * m['test_acc_min']:.2f}-{100 * m['test_acc_max']:.2f} %), "
        f"{m['params']:,} params; TorchScript via {m['torchscript']}, verified in a fresh process; wrote {out}/")


@app.command()
def predict(
    model: Path = typer.Argument(..., help="Exported model.pt (TorchScript)."),
    images: list[Path] = typer.Argument(..., help="PNG/JPEG images or IDX files of 28x28 digits."),
) -> None:
    """Print the digit an exported model sees in each image."""
    import torch

    from nas.predict import classify, load_images

    try:
        net = torch.jit.load(str(model)).eval()
    except (RuntimeError, ValueError, OSError) as e:
        raise UsageError(f"{model}: not a TorchScript model saved by nas export ({str(e).splitlines()[0]})") from None
    for path in images:
        digits, conf = classify(net, load_images(path))
        for i, (d, c) in enumerate(zip(digits.tolist(), conf.tolist())):
            say(f"{path}{f'[{i}]' if len(digits) > 1 else ''}: {d}  ({100 * c:.1f} %)")


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
