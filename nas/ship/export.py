"""Ship an architecture: retrain on all the data's training images, evaluate once on the test
set, write TorchScript (model.pt), torch.export's program (model.pt2, TorchScript's successor),
ONNX (fp32 and int8) and friends, and prove the saved models predict as the trained one.

The shipped models take pixels as people have them (float in [0, 1], [N, C, H, W] as the data
has them): the data's normalisation is inside them, so a caller cannot forget it. What they take
(size, channels, class names, the polarity of the training images) is stored in them
(nas.ship.predict.ModelInfo), so `nas predict` needs nothing else."""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from torch import nn

import nas
from nas.arch.budgets import trial_attrs
from nas.arch.model import deployed
from nas.arch.spec import Arch, arch_to_toml, costs, param_count, receptive_field
from nas.data.datasets import MNIST, Dataset, DatasetSpec
from nas.data.stats import background
from nas.data.tensors import Data, load_full_train, load_test
from nas.ship import deploy
from nas.ship.card import model_card
from nas.ship.predict import INFO, ModelInfo, jit_quietly, pixels
from nas.train.config import TrainConfig
from nas.train.engine import Epoch, accuracy, predict, train

# Runs in a fresh, isolated interpreter (-I) where nas cannot be imported: only torch is needed
# to load and run the exported model (argv: kind "pt" or "pt2", model, inputs, outputs).
_VERIFY = """
import sys, warnings
sys.modules["nas"] = None
import torch
warnings.filterwarnings("ignore", message=".*torch[.]jit[.].*deprecated")  # torch 2.13-2.14 deprecate torch.jit.load
model = torch.jit.load(sys.argv[2]) if sys.argv[1] == "pt" else torch.export.load(sys.argv[2]).module()
x = torch.load(sys.argv[3])
with torch.no_grad():
    torch.save(torch.cat([model(x[i:i + 2000]) for i in range(0, len(x), 2000)]), sys.argv[4])
"""


FILES = (
    "model.pt",
    "model.pt2",
    "state_dict.pt",
    "architecture.toml",
    "metrics.json",
    "README.md",
    deploy.FP32,
    deploy.INT8,
)
# ONNX logits may differ from TorchScript's by this much (absolute and relative, torch.allclose);
# measured: at most 9.5e-6 for the exported seed network on the 10,000 test images.
ONNX_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export could not be completed or verified."""


@dataclass
class Source:
    """Where the architecture comes from: a study's trial or a file."""

    arch: Arch
    cfg: TrainConfig
    origin: dict[str, Any]


def from_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> Source:
    from nas.arch.spec import arch_from_dict

    arch = arch_from_dict(json.loads(trial.user_attrs["arch"]), f"trial {trial.number}")
    cfg = TrainConfig(**trial.user_attrs["train_config"])
    origin = {
        "study": study.study_name,
        "trial": trial.number,
        "search_val_acc": trial.values[0] if trial.values else None,
    }
    return Source(arch, cfg, origin)


class RawPixels(nn.Module):
    """What ships: the data's normalisation (per channel), then the trained network."""

    if TYPE_CHECKING:  # the buffers' type, for mypy: TorchScript cannot read these (string) annotations
        mean: torch.Tensor
        std: torch.Tensor

    def __init__(self, net: nn.Module, spec: DatasetSpec = MNIST):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [N, C, H, W], pixels in [0, 1]."""
        return self.net((x - self.mean) / self.std)


def model_info(ds: Dataset) -> ModelInfo:
    """What the exported files say about the images they take."""
    return ModelInfo(ds.spec.name, ds.spec.shape, ds.spec.class_names, background(ds.x_train))


def to_torchscript(model: torch.nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    with jit_quietly():
        try:
            return torch.jit.script(model), "script"
        except Exception as e:  # noqa: BLE001 - any scripting failure falls back, and says why
            return torch.jit.trace(model, example), f"trace (script failed: {str(e).splitlines()[0]})"


def to_exported(model: torch.nn.Module, example: torch.Tensor, path: Path, info: ModelInfo) -> None:
    """model.pt2: torch.export's program of the shipped network, any batch size, with the same
    ModelInfo as model.pt (load with torch.export.load(path).module())."""
    # Weights in the standard layout: the trainer's channels_last ones save as views that
    # torch.export's archive warns about when loaded ("No complete tensor found in the group").
    model = copy.deepcopy(model)
    model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # stubs omit memory_format
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(path), extra_files={INFO: info.to_json()})


def verify(model_path: Path, x: torch.Tensor, expected: torch.Tensor, workdir: Path) -> torch.Tensor:
    """Load model_path in a fresh, isolated Python process without nas, feed it `x` (raw pixels)
    and check its logits match `expected` (the trained network on normalised images). The
    process runs in `workdir`, so every path it is given is absolute (a relative --out once
    failed here after the whole retraining)."""
    workdir = workdir.resolve()
    inputs, outputs = workdir / ".verify_inputs.pt", workdir / ".verify_outputs.pt"
    torch.save(x, inputs)
    try:
        kind = "pt2" if model_path.suffix == ".pt2" else "pt"
        run = subprocess.run(
            [sys.executable, "-I", "-c", _VERIFY, kind, str(model_path.resolve()), str(inputs), str(outputs)],
            capture_output=True,
            text=True,
            cwd=workdir,
        )
        if run.returncode != 0:
            raise ExportError(
                f"the exported model could not be loaded in a fresh process: {run.stderr.strip().splitlines()[-1]}"
            )
        logits = torch.load(outputs)
    finally:
        inputs.unlink(missing_ok=True)
        outputs.unlink(missing_ok=True)
    if not torch.equal(logits.argmax(1), expected.argmax(1)) or not torch.allclose(
        logits, expected, atol=1e-4, rtol=1e-4
    ):
        raise ExportError(
            f"{model_path} does not reproduce the trained model's predictions on the test set; not exporting"
        )
    return logits


def export(
    source: Source,
    out: Path,
    ds: Dataset,
    device: torch.device,
    seeds: int = 1,
    epochs: int | None = None,
    log: Callable[[str], None] = print,
    train_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Retrain with `seeds` seeds on the full training set, all at once as one packed network;
    ship seed 0's model (choosing by test accuracy would leak the test set into the choice).
    Returns what metrics.json holds.

    The files are written to a hidden folder inside `out` and moved into place only once the
    model is verified: a failed or interrupted export leaves `out` as it was."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        metrics = _export(source, stage, ds, device, seeds, epochs, log, train_size, on_progress)
        for name in FILES:  # an ONNX file not made this time (no onnx extra) must not outlive its model
            if (stage / name).exists():
                os.replace(stage / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return metrics


def _export(
    source: Source,
    out: Path,
    ds: Dataset,
    device: torch.device,
    seeds: int,
    epochs: int | None,
    log: Callable[[str], None],
    train_size: int | None,
    on_progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    full = load_full_train(device=device, dataset=ds)
    if train_size is not None:  # smoke runs and tests only
        full = replace(full, x=full.x[:train_size], y=full.y[:train_size])
    data = Data(train=full, val=replace(full, x=full.x[:0], y=full.y[:0]))  # no validation: every image trains
    test = load_test(dataset=ds)  # first touched here, after the architecture is fixed
    raw = pixels(torch.from_numpy(ds.x_test))  # the same images as callers of model.pt have them
    info = model_info(ds)
    cfg0 = replace(source.cfg, seed=0, epochs=epochs or source.cfg.epochs).fitted(len(full))
    start = time.perf_counter()
    # The seeds train at once as one packed network (nas.arch.model); copy k is what seed k gives alone.
    trained = train(
        source.arch,
        data,
        cfg0,
        on_epoch=lambda e: log(_line(e, cfg0.epochs, seeds)),
        seeds=seeds,
        on_progress=on_progress,
    )
    seconds = time.perf_counter() - start
    runs = []
    for k, seed in enumerate(trained.seeds):
        model = trained.model(k).float().cpu().eval()
        logits = predict(model, test.x)
        runs.append({"seed": seed, "test_acc": accuracy(logits, test.y)})
        log(f"seed {seed}: test accuracy {100 * runs[-1]['test_acc']:.2f} %")
        if k == 0:
            model0, eager_logits = model, logits
    scripted, how = to_torchscript(RawPixels(model0, ds.spec).eval(), raw[:2])
    model_path = out / "model.pt"
    scripted.save(str(model_path), _extra_files={INFO: info.to_json()})
    torch.save(model0.state_dict(), out / "state_dict.pt")
    shipped = replace(source.arch, train=cfg0.to_dict())
    (out / "architecture.toml").write_text(arch_to_toml(shipped))
    logits = verify(model_path, raw, eager_logits, out)
    to_exported(RawPixels(model0, ds.spec).eval(), raw[:2], out / "model.pt2", info)
    verify(out / "model.pt2", raw, eager_logits, out)
    calibration = pixels(
        torch.from_numpy(ds.x_train[: min(deploy.CALIBRATION_IMAGES, len(full))])
    )  # training images only
    onnx_files = ship_onnx(model0, ds.spec, info, out, raw, test.y, logits, calibration, log)
    c, h, w = ds.spec.shape
    accs = [r["test_acc"] for r in runs]
    metrics = {
        "name": source.arch.name,
        "params": param_count(source.arch),
        "receptive_field": receptive_field(source.arch),
        "epochs": cfg0.epochs,
        "train_images": len(full),
        "dataset": ds.spec.to_dict(),
        "train_config": cfg0.to_dict(),
        "seeds": runs,
        "test_acc": accuracy(logits, test.y),
        "test_acc_mean": sum(accs) / len(accs),
        "test_acc_min": min(accs),
        "test_acc_max": max(accs),
        "train_seconds": seconds,
        "final_train_loss": trained.history[-1].train_loss,
        "engine": trained.engine,
        "costs": trial_attrs(costs(source.arch)),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torchscript": how,
        "input": f"model.pt: float [N, {c}, {h}, {w}] pixels in [0, 1] (normalisation inside), as model.pt2; "
        "state_dict.pt: the bare network, normalised input",
        "background": info.background,
        "verified": True,
        "onnx": onnx_files,
        "versions": {
            "nas": nas.__version__,
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "python": platform.python_version(),
            **(deploy.versions() if onnx_files else {}),
        },
        **source.origin,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "README.md").write_text(model_card(source.arch, metrics))
    return metrics


def ship_onnx(
    net: nn.Module,
    spec: DatasetSpec,
    info: ModelInfo,
    out: Path,
    raw: torch.Tensor,
    labels: torch.Tensor,
    expected: torch.Tensor,
    calibration: torch.Tensor,
    log: Callable[[str], None],
) -> dict[str, Any] | None:
    """Write model.onnx (the deployed network: BatchNorm folded where it can be, raw pixels in) and
    model.int8.onnx (calibrated on `calibration`, training images), run both on the test images
    `raw` in a fresh process with onnxruntime alone, and check model.onnx against the TorchScript
    logits `expected`. Returns what metrics.json holds under "onnx"; None, saying so in one line,
    when the onnx extra is not installed (and no ONNX file of an earlier export is left behind)."""
    fp32, int8 = out / deploy.FP32, out / deploy.INT8
    absent = deploy.missing()
    if absent:
        fp32.unlink(missing_ok=True)
        int8.unlink(missing_ok=True)
        log(
            f"no ONNX files: {', '.join(absent)} not installed "
            f"({deploy.INSTALL} to get {deploy.FP32} and {deploy.INT8})"
        )
        return None
    assert isinstance(net, nn.Sequential)  # nas.arch.model.build's network, which nas trains
    start = time.perf_counter()
    try:
        deploy.write_fp32(
            RawPixels(deployed(net), spec), torch.zeros(2, *raw.shape[1:]), fp32, {INFO: info.to_json()}
        )  # the input shape only
        deploy.quantize(fp32, int8, calibration.numpy())
    except Exception as e:  # noqa: BLE001 - the exporter and quantiser raise many kinds; each is one line here
        raise ExportError(
            f"the ONNX files could not be written ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    try:
        got = [torch.from_numpy(x) for x in deploy.run_isolated([fp32, int8], raw.numpy())]
    except RuntimeError as e:
        raise ExportError(f"the ONNX files could not be run by onnxruntime in a fresh process: {e}") from None
    if not torch.equal(got[0].argmax(1), expected.argmax(1)) or not torch.allclose(
        got[0], expected, atol=ONNX_TOLERANCE, rtol=ONNX_TOLERANCE
    ):
        raise ExportError(
            f"{fp32} does not reproduce model.pt's predictions on the test set "
            f"(tolerance {ONNX_TOLERANCE}); not exporting"
        )
    fp32_acc, int8_acc = accuracy(got[0], labels), accuracy(got[1], labels)
    agreement = (got[1].argmax(1) == got[0].argmax(1)).float().mean().item()
    log(
        f"ONNX: {deploy.FP32} {100 * fp32_acc:.2f} % (as model.pt), {deploy.INT8} {100 * int8_acc:.2f} % "
        f"(agrees with fp32 on {100 * agreement:.2f} %), checked with onnxruntime alone, "
        f"{time.perf_counter() - start:.0f} s"
    )
    return {
        "input": f"{deploy.INPUT}: float32 [N, {', '.join(map(str, spec.shape))}] pixels in [0, 1] "
        f"(normalisation inside); output {deploy.OUTPUT} [N, {spec.classes}]",
        "tolerance": ONNX_TOLERANCE,
        "fp32": {
            "file": deploy.FP32,
            **deploy.stored(fp32),
            "test_acc": fp32_acc,
            "max_logit_difference": (got[0] - expected).abs().max().item(),
        },
        "int8": {"file": deploy.INT8, **deploy.stored(int8), "test_acc": int8_acc, "agreement": agreement},
        "quantization": deploy.QUANTIZATION,
        "calibration_images": len(calibration),
    }


def _line(e: Epoch, epochs: int, seeds: int) -> str:
    loss = f"train loss {e.train_loss:.4f}" + (f" (mean of {seeds} seeds)" if seeds > 1 else "")
    return f"epoch {e.epoch:>3}/{epochs}  mean lr {e.lr:.4f}  {loss}  {e.seconds:6.2f} s"
