"""The learning-rate schedule: one function for both engines, so the eager step (a float from an
int step counter) and the captured step (a tensor from the counter on the device, inside a CUDA
graph) can never disagree."""

from __future__ import annotations

import math
from typing import overload

import torch

from nas.train.config import TrainConfig


@overload
def lr_at(step: int, cfg: TrainConfig, total: int) -> float: ...
@overload
def lr_at(step: torch.Tensor, cfg: TrainConfig, total: int) -> torch.Tensor: ...
def lr_at(step: int | torch.Tensor, cfg: TrainConfig, total: int) -> float | torch.Tensor:
    """The learning rate of update `step` (0-based) of `total`: a float for an int step (eager), a
    tensor for a tensor step (on the device, inside a CUDA graph).

    "onecycle" equals torch's OneCycleLR(max_lr=cfg.peak_lr(), pct_start=cfg.warmup,
    cycle_momentum=False) and "step" equals StepLR(step_size=total // 3, gamma=0.1), both stepped
    once per batch."""
    peak = cfg.peak_lr()
    if cfg.schedule == "step":
        every = max(1, total // 3)
        k = torch.floor(step / every) if isinstance(step, torch.Tensor) else step // every
        return peak * 0.1**k
    start = peak / 25  # OneCycleLR's div_factor and final_div_factor
    end = start / 1e4
    top = cfg.warmup * total - 1  # the last step of the rise, as OneCycleLR counts it

    def anneal(a: float, b: float, pct: float | torch.Tensor) -> float | torch.Tensor:
        cos = torch.cos(math.pi * pct) if isinstance(pct, torch.Tensor) else math.cos(math.pi * pct)
        return b + (a - b) / 2 * (cos + 1)

    rising = anneal(start, peak, step / top if top > 0 else step * 0.0)
    falling = anneal(peak, end, (step - top) / (total - 1 - top))
    if isinstance(step, torch.Tensor):
        return torch.where(step <= top, rising, falling)
    return rising if step <= top else falling
