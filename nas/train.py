"""The training loop: one function, data already on the device, a callback per epoch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch import Arch
from nas.config import TrainConfig
from nas.data import Data, Split, batches
from nas.errors import SpecError
from nas.model import build


@dataclass
class Epoch:
    epoch: int  # 1-based
    lr: float
    train_loss: float
    val_loss: float
    val_acc: float
    seconds: float


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """On CUDA, channels_last and cuDNN autotuning: the convs here are small and launch-bound."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return model.to(device, memory_format=torch.channels_last)
    return model.to(device)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Logits (float32) for all of x, in eval mode."""
    model.eval()
    device = x.device
    with _autocast(device):
        out = [model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a split."""
    logits = predict(model, split.x)
    return F.cross_entropy(logits, split.y).item(), accuracy(logits, split.y)


def _optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    lr = cfg.peak_lr()
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)
    else:  # the seed's step schedule: x0.1 every third of the run, stepped per batch
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.epochs * steps_per_epoch // 3), gamma=0.1)
    return opt, sched


def check_fits(arch: Arch, data: Data) -> None:
    """The architecture's input and classes must be the data's, or training would die in a kernel."""
    shape = list(data.train.x.shape[1:])
    if list(arch.input) != shape:
        raise SpecError(arch.name or "architecture", "input", f"is {list(arch.input)} but the images are {shape}; set input = {shape}")
    classes = int(data.train.y.max().item()) + 1 if len(data.train) else arch.classes
    if classes > arch.classes:
        raise SpecError(arch.name or "architecture", "classes", f"is {arch.classes} but the labels go up to {classes - 1}; set classes = {classes}")


def train(
    arch: Arch,
    data: Data,
    cfg: TrainConfig,
    on_epoch: Callable[[Epoch], None] | None = None,
) -> tuple[nn.Module, list[Epoch]]:
    """Train `arch` from scratch on data.train, validating on data.val after every epoch.

    Deterministic for a given cfg.seed and device. `on_epoch` may raise (e.g. optuna.TrialPruned)
    to stop early. Raises Diverged when the loss stops being finite.
    """
    check_fits(arch, data)
    device = data.train.x.device
    torch.manual_seed(cfg.seed)
    model = _prepare(build(arch), device)
    steps = math.ceil(len(data.train) / cfg.batch_size)
    opt, sched = _optimizer(model, cfg, steps)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    history: list[Epoch] = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        model.train()
        lr = opt.param_groups[0]["lr"]
        total = torch.zeros((), device=device)  # summed on device: no host sync per step
        for xb, yb in batches(data.train, cfg.batch_size, generator, cfg.augment):
            with _autocast(device):
                loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(yb)
        train_loss = total.item() / len(data.train)
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch}")
        val_loss, val_acc = evaluate(model, data.val) if len(data.val) else (math.nan, math.nan)
        history.append(Epoch(epoch, lr, train_loss, val_loss, val_acc, time.perf_counter() - start))
        if on_epoch:
            on_epoch(history[-1])
    return model, history
