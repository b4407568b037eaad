"""One run's training state and its one training step, which both engines run.

`_Trial.step` is the step: learning rate from the step counter, forward, loss, backward, update,
weight average, loss summed on the device. The eager engine calls it once per batch; the graph
engine captures it once per trial in a CUDA graph (`_Trial.capture`) and replays it per batch.
Keeping the step, the optimizer it updates and its capture here, apart from the epoch loop
(nas.train.engine), is what lets the two engines share one step and stay equal.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.train.config import TrainConfig
from nas.train.gpulock import GPU
from nas.train.graphs import _Graphs
from nas.train.schedule import lr_at

WARMUP_STEPS = 3  # steps run before capture (cuDNN autotuning, lazy allocations); their effect is undone


def _host(value):
    """A copy of a (nested) state on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_host(v) for v in value]
    return value


class _CaptureFailed(RuntimeError):
    """The step could not be captured in a CUDA graph; training falls back to eager."""


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    # No weight cache: a CUDA graph must cast inside every replay.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


class _Trial:
    """One run's network, optimizer, step counter and summed loss, and the step both engines run."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        copies: int,
        total: int,
        device: torch.device,
        precision: str,
        graph: bool,
    ):
        self.model, self.cfg, self.copies, self.total = model, cfg, copies, total
        self.autocast = _autocast(device, precision)
        # The graph engine keeps the step counter and the learning rate on the device, where the
        # captured step reads and advances them; a fused or capturable optimizer takes a tensor lr.
        # float64: an exact schedule.
        self.count: int | torch.Tensor = torch.zeros((), device=device, dtype=torch.float64) if graph else 0
        lr: float | torch.Tensor = torch.tensor(lr_at(0, cfg, total), device=device) if graph else lr_at(0, cfg, total)
        params: Any = model.parameters()
        if not cfg.decay_norm_bias:  # BatchNorm weights and biases are the 1-D parameters
            params = [
                {"params": [p for p in model.parameters() if p.ndim > 1]},
                {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
            ]
        if cfg.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay, fused=graph or None
            )
        else:
            self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, capturable=graph)
        # The weight average: a copy of the network whose floating-point weights and BatchNorm
        # statistics move towards the trained ones after every update (one foreach op, so a CUDA
        # graph captures it with the step); its integer batch counters are copied.
        self.ema = copy.deepcopy(model) if cfg.ema_half_life > 0 else None
        self.ema_weight = 1 - 0.5 ** (cfg.epochs / (cfg.ema_half_life * total)) if self.ema is not None else 0.0
        self.averaged = model if self.ema is None else self.ema  # what validation and export use
        live, avg = model.state_dict(), self.ema.state_dict() if self.ema is not None else {}
        # Aliases of both networks' tensors (loading a state copies into them), floating and not.
        self._pairs = {
            kind: (
                [avg[k] for k in avg if avg[k].is_floating_point() == kind],
                [live[k] for k in avg if avg[k].is_floating_point() == kind],
            )
            for kind in (True, False)
        }
        self.loss_sum = torch.zeros(copies, device=device)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One update on batch x [B, copies*C, H, W], labels y [B, copies]: the seam of both engines."""
        lr = lr_at(self.count, self.cfg, self.total)
        for group in self.opt.param_groups:
            if isinstance(lr, torch.Tensor):
                group["lr"].copy_(lr)
            else:
                group["lr"] = lr
        self.count += 1
        with self.autocast:
            logits = self.model(x).float().view(len(y), self.copies, -1)
        losses = F.cross_entropy(
            logits.transpose(1, 2), y, label_smoothing=self.cfg.label_smoothing, reduction="none"
        ).mean(0)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # copy k's parameters get the gradient of copy k's loss only
        self.opt.step()
        if self.ema is not None:
            self._average()
        self.loss_sum += losses.detach()

    @torch.no_grad()
    def _average(self) -> None:
        torch._foreach_lerp_(*self._pairs[True], self.ema_weight)
        torch._foreach_copy_(*self._pairs[False])

    def state(self) -> tuple[int, dict[str, torch.Tensor], dict, dict[str, torch.Tensor] | None]:
        """(steps done, network, optimizer, weight average or None), copied to the CPU."""
        ema = _host(self.ema.state_dict()) if self.ema is not None else None
        return int(self.count), _host(self.model.state_dict()), _host(self.opt.state_dict()), ema

    def restore(
        self, steps: int, model: dict[str, torch.Tensor], optimizer: dict, ema: dict[str, torch.Tensor] | None
    ) -> None:
        """Put back a state from `state` (before any capture). The learning rate stays this
        trial's own (a tensor the captured step writes on the graph engine)."""
        self.model.load_state_dict(model)
        if self.ema is not None:
            if ema is None:
                raise ValueError("the checkpoint holds no weight average, but this run keeps one (ema_half_life)")
            self.ema.load_state_dict(ema)
        lrs = [group["lr"] for group in self.opt.param_groups]
        self.opt.load_state_dict(optimizer)
        for group, lr in zip(self.opt.param_groups, lrs):
            group["lr"] = lr
        if isinstance(self.count, torch.Tensor):
            self.count.fill_(steps)
        else:
            self.count = steps

    def capture(
        self, x: torch.Tensor, y: torch.Tensor, dropout_seed: int, graphs: _Graphs
    ) -> tuple[Any, Any, Callable[[torch.Tensor, torch.Tensor], None]]:
        """Capture `step` in a CUDA graph on the current stream, alone in the process
        (nas.train.gpulock), with the process's CUDA-graph state `graphs` (nas.train.engine._GRAPHS);
        returns the graph, its memory pool and a feed function that copies a batch into the static
        buffers and replays it (shared with other trials' work).

        The warm-up steps and the captured step really update the network, so its weights, its
        BatchNorm statistics, the optimizer's state, the counter and the loss sum are put back as
        they were: the first replay is the run's first step, as in the eager engine. Raises
        _CaptureFailed (after clearing what the failed capture left behind) to fall back to eager."""
        count = self.count
        assert isinstance(count, torch.Tensor)  # the graph engine keeps the counter on the device
        with GPU.exclusive():
            static_x, static_y = x.clone(), y.clone()
            saved = {k: v.clone() for k, v in self.model.state_dict().items()}
            saved_ema = {k: v.clone() for k, v in self.ema.state_dict().items()} if self.ema is not None else {}
            # A resumed run has optimizer state already (a fresh one gets it in the first warm-up step).
            saved_opt = {
                p: {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
                for p, state in self.opt.state.items()
            }
            saved_count = count.clone()
            device = static_x.device
            dropout = any(isinstance(m, nn.Dropout) for m in self.model.modules())
            graph, pool = graphs.graph(), graphs.pool(device)
            began = False
            try:
                for _ in range(WARMUP_STEPS):
                    self.step(static_x, static_y)
                with graphs.dropout_rng(graph, device, dropout_seed, dropout):
                    graph.capture_begin(pool=pool.id, capture_error_mode="thread_local")
                    began = True
                    try:
                        self.step(static_x, static_y)
                    except BaseException:
                        with contextlib.suppress(RuntimeError):  # the failed step already invalidated the capture
                            graph.capture_end()
                        raise
                    graph.capture_end()
            except BaseException as e:
                if began:
                    graphs.recover(graph, pool, device)
                else:
                    graph.reset()
                    graphs.release(pool, device)
                if isinstance(e, torch.OutOfMemoryError) or not isinstance(e, Exception):
                    raise
                raise _CaptureFailed(
                    f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}"
                ) from e
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    v.copy_(saved[k])
                if self.ema is not None:
                    for k, v in self.ema.state_dict().items():
                        v.copy_(saved_ema[k])
                for p, state in self.opt.state.items():
                    for k, v in state.items():
                        # As before the warm-up; zeroed momentum (and Adam's step and moments) act as
                        # fresh ones.
                        if isinstance(v, torch.Tensor):
                            v.copy_(saved_opt[p][k]) if k in saved_opt.get(p, {}) else v.zero_()
                count.copy_(saved_count)
                self.loss_sum.zero_()

        def feed(xb: torch.Tensor, yb: torch.Tensor) -> None:
            with GPU.shared():
                static_x.copy_(xb)
                static_y.copy_(yb)
                graph.replay()

        return graph, pool, feed
