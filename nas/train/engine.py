"""The trainer: one train() for the search, `nas train` and `nas export`.

Every epoch is a fresh shuffle (and augmentation) of the whole training split, made in a few
batched calls on the device and sliced into static batches: the last partial batch is dropped and
Epoch.images counts what was trained on (nas.data.tensors.static_batches). `_Trial.step` is the one
training step: learning rate from the step counter, forward, loss, backward, update, loss summed
on the device. The eager engine calls it once per batch (always on CPU; on CUDA when capture
fails); the graph engine (CUDA) captures it once per trial in a CUDA graph and replays it per batch
after copying the batch into static buffers. Either way the host waits for the device once per
epoch, to read the losses and the validation figures together.

K seeds train as one packed network (nas.arch.model.build(arch, copies=K)): copy k starts from the
weights a plain network gets under torch.manual_seed(cfg.seed + k) and sees its own shuffled,
augmented batches, so it is, up to float rounding, what training alone with that seed gives.
Dropout draws its mask per element of the packed tensor, so each copy gets masks of its own, as a
separate run would, but not that run's random numbers: with dropout, copies match separate runs
in distribution only.

Several trials may train at once in threads of one process, each on its own CUDA stream. They take
turns on the GPU through nas.train.gpulock: a capture (with its warm-up), a trial's first step and first
validation, seeding and graph destruction run alone; steps, replays, later validations, an epoch's
shuffle and the read of its figures run shared; callbacks run outside the lock. _Graphs holds the
CUDA-graph state of the process: graph memory pools reused across trials, failed captures
(recovered from, and after CAPTURE_FAILURES_TO_RESTART of them RestartWorker), and how this torch
keeps the RNG state of a capture.
"""

from __future__ import annotations

import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch.model import build, pack, unpack
from nas.arch.spec import Arch
from nas.data.datasets import DatasetSpec
from nas.data.tensors import Data, Split, shuffled_epoch, static_batches
from nas.errors import SpecError, UsageError
from nas.train.config import TrainConfig
from nas.train.gpulock import GPU

PRECISIONS = ("fp32", "bf16")
# On CUDA: the reference graph (issue 7) trained in fp32 at the figures it reports, and bf16 with
# channels_last failed to capture for a packed network there; benchmarks/gpu_suite.py measures bf16.
CUDA_PRECISION = "fp32"
ENGINES = ("auto", "eager", "graph")
WARMUP_STEPS = 3  # steps run before capture (cuDNN autotuning, lazy allocations); their effect is undone
VAL_IMAGES = {"cuda": 10_000, "cpu": 1_000}  # images x copies per validation batch
CHECKPOINT_SECONDS = 60.0  # a trial offers a checkpoint at the end of an epoch once this long has passed since its last
CUDNN_BENCHMARK = True  # let cuDNN time its algorithms for each new shape (benchmarks/gpu_suite.py measures it off)
CAPTURE_FAILURES_TO_RESTART = 3  # failed captures after which a worker process is re-executed (RestartWorker)
MEMORY_SHORT = 0.1  # a finished graph trial frees cached GPU memory when less than this share of it is free

# What runs alone and what runs shared on a GPU: nas.train.gpulock. One CUDA stream per thread, so that
# concurrent trials overlap.
_STREAMS = threading.local()


@dataclass
class Epoch:
    epoch: int  # 1-based
    lr: float  # the mean over the epoch's updates (OneCycle moves it every step)
    train_loss: float  # mean over the packed copies
    val_loss: float  # mean over copies
    val_acc: float  # mean over copies
    seconds: float  # the first epoch includes building the network and capturing the graph
    val_accs: list[float]  # one per copy (seed), in seed order
    images: int  # training images each copy saw this epoch (static batches drop the last partial one)


@dataclass
class Trained:
    packed: nn.Module  # the (possibly packed) network as trained
    history: list[Epoch]
    engine: str  # "cuda graph, fp32", "eager", "eager (capture failed: <reason>)", ...
    seeds: list[int]
    arch: Arch = field(repr=False)

    def model(self, k: int = 0) -> nn.Module:
        """Copy k as a plain nas.arch.model.build(arch) network (with one seed: `packed` itself)."""
        if len(self.seeds) == 1 and k == 0:
            return self.packed
        return unpack(self.packed, self.arch, k)


@dataclass
class Checkpoint:
    """Everything a run needs to go on from the end of an epoch as if it had never stopped: the
    network, the optimizer's state, the step counter, each copy's generator (shuffling and
    augmentation), the CPU generator (dropout on the CPU draws from it) and the epochs so far. All
    tensors are copies on the CPU, so it can be saved with torch.save and loaded on any device."""

    epoch: int  # epochs done
    steps: int  # updates done
    model: dict[str, torch.Tensor]
    optimizer: dict
    generators: list[torch.Tensor]
    cpu_rng: torch.Tensor
    history: list[Epoch]
    ema: dict[str, torch.Tensor] | None = None  # the averaged network (TrainConfig.ema_half_life), None when off


def _host(value):
    """A copy of a (nested) state on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_host(v) for v in value]
    return value


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class _CaptureFailed(RuntimeError):
    """The step could not be captured in a CUDA graph; training falls back to eager."""


class RestartWorker(RuntimeError):
    """CAPTURE_FAILURES_TO_RESTART captures failed in this process: each failure may leave memory
    (its graph pool) or CUDA state behind that cannot be freed from Python, so the worker process
    should re-enqueue its trials and start afresh (nas.search.worker does) rather than go on."""


def resolve_device(name: str = "auto") -> torch.device:
    """The device a --device value names; asking for a GPU torch cannot see is the user's error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def lr_at(step: int | torch.Tensor, cfg: TrainConfig, total: int) -> float | torch.Tensor:
    """The learning rate of update `step` (0-based) of `total`: a float for an int step (eager), a
    tensor for a tensor step (on the device, inside a CUDA graph).

    "onecycle" equals torch's OneCycleLR(max_lr=cfg.peak_lr(), pct_start=cfg.warmup,
    cycle_momentum=False) and "step" equals StepLR(step_size=total // 3, gamma=0.1), both stepped
    once per batch."""
    peak = cfg.peak_lr()
    tensor = isinstance(step, torch.Tensor)
    if cfg.schedule == "step":
        k = torch.floor(step / max(1, total // 3)) if tensor else step // max(1, total // 3)
        return peak * 0.1**k
    start = peak / 25  # OneCycleLR's div_factor and final_div_factor
    end = start / 1e4
    top = cfg.warmup * total - 1  # the last step of the rise, as OneCycleLR counts it
    cos = torch.cos if tensor else math.cos

    def anneal(a: float, b: float, pct):
        return b + (a - b) / 2 * (cos(math.pi * pct) + 1)

    rising = anneal(start, peak, step / top if top > 0 else step * 0.0)
    falling = anneal(peak, end, (step - top) / (total - 1 - top))
    if tensor:
        return torch.where(step <= top, rising, falling)
    return rising if step <= top else falling


def check_fits(arch: Arch, data: Data | DatasetSpec) -> None:
    """The architecture's input and classes must be the data's, or training would die in a kernel:
    refused in one line before anything runs."""
    if isinstance(data, DatasetSpec):
        shape, classes, of = list(data.shape), data.classes, f" ({data.name})"
    else:
        shape, of = list(data.train.x.shape[1:]), ""
        classes = int(data.train.y.max().item()) + 1 if len(data.train) else arch.classes
    if list(arch.input) != shape:
        raise SpecError(
            arch.name or "architecture",
            "input",
            f"is {list(arch.input)} but the images are {shape}{of}; give an architecture with input = {shape}",
        )
    if classes > arch.classes:
        raise SpecError(
            arch.name or "architecture",
            "classes",
            f"is {arch.classes} but the labels go up to {classes - 1}{of}; give an architecture with classes = {classes}",
        )


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    # No weight cache: a CUDA graph must cast inside every replay.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Logits (float32, fp32 arithmetic) of a plain network for all of x, in eval mode."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item()


def evaluate(model: nn.Module, split: Split) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of a plain network on a split."""
    logits = predict(model, split.x)
    return F.cross_entropy(logits, split.y).item(), accuracy(logits, split.y)


@torch.inference_mode()
def _validate(
    model: nn.Module, split: Split, copies: int, autocast: torch.autocast
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-copy mean loss and accuracy on `split` (every copy sees the same images), on the device."""
    model.eval()
    n = len(split)
    loss = torch.zeros(copies, device=split.x.device)
    correct = torch.zeros(copies, device=split.x.device)
    size = max(1, VAL_IMAGES.get(split.x.device.type, 2_000) // copies)
    for i in range(0, n, size):
        x, y = split.x[i : i + size], split.y[i : i + size]
        with autocast:
            logits = model(x.repeat(1, copies, 1, 1) if copies > 1 else x).float().view(len(y), copies, -1)
        target = y[:, None].expand(-1, copies)
        loss += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(0)
        correct += (logits.argmax(2) == target).sum(0)
    model.train()
    return loss / max(n, 1), correct / max(n, 1)


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
        self.count: int | torch.Tensor = (
            torch.zeros((), device=device, dtype=torch.float64) if graph else 0
        )  # float64: exact schedule
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
        self._pairs = {
            kind: (
                [avg[k] for k in avg if avg[k].is_floating_point() == kind],
                [live[k] for k in avg if avg[k].is_floating_point() == kind],
            )
            for kind in (True, False)
        }  # aliases of both networks' tensors (loading a state copies into them)
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
        self, x: torch.Tensor, y: torch.Tensor, dropout_seed: int
    ) -> tuple[Any, Any, Callable[[torch.Tensor, torch.Tensor], None]]:
        """Capture `step` in a CUDA graph on the current stream, alone in the process (nas.train.gpulock);
        returns the graph, its memory pool and a feed function that copies a batch into the static
        buffers and replays it (shared with other trials' work).

        The warm-up steps and the captured step really update the network, so its weights, its
        BatchNorm statistics, the optimizer's state, the counter and the loss sum are put back as
        they were: the first replay is the run's first step, as in the eager engine. Raises
        _CaptureFailed (after clearing what the failed capture left behind) to fall back to eager."""
        with GPU.exclusive():
            static_x, static_y = x.clone(), y.clone()
            saved = {k: v.clone() for k, v in self.model.state_dict().items()}
            saved_ema = {k: v.clone() for k, v in self.ema.state_dict().items()} if self.ema is not None else {}
            # A resumed run has optimizer state already (a fresh one gets it in the first warm-up step).
            saved_opt = {
                p: {k: v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
                for p, state in self.opt.state.items()
            }
            saved_count = self.count.clone()
            device = static_x.device
            dropout = any(isinstance(m, nn.Dropout) for m in self.model.modules())
            graph, pool = _GRAPHS.graph(), _GRAPHS.pool(device)
            began = False
            try:
                for _ in range(WARMUP_STEPS):
                    self.step(static_x, static_y)
                with _GRAPHS.dropout_rng(graph, device, dropout_seed, dropout):
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
                    _GRAPHS.recover(graph, pool, device)
                else:
                    graph.reset()
                    _GRAPHS.release(pool, device)
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
                        if isinstance(
                            v, torch.Tensor
                        ):  # as before the warm-up; zeroed momentum (and Adam's step and moments) act as fresh ones
                            v.copy_(saved_opt[p][k]) if k in saved_opt.get(p, {}) else v.zero_()
                self.count.copy_(saved_count)
                self.loss_sum.zero_()

        def feed(xb: torch.Tensor, yb: torch.Tensor) -> None:
            with GPU.shared():
                static_x.copy_(xb)
                static_y.copy_(yb)
                graph.replay()

        return graph, pool, feed


class _Graphs:
    """What the graph engine asks of torch.cuda, and the state it keeps for the process: memory
    pools, failed captures, how this torch keeps the RNG state of a capture. Called only under
    GPU.exclusive(). One instance, _GRAPHS; a test swaps in a recording fake that runs the graph
    engine's discipline on the CPU.

    Pools: one graph memory pool per trial stream (in effect per worker thread), taken at capture
    and given back when the trial's graph is destroyed, so that the thread's next graph reuses its
    memory instead of every trial leaving a pool behind for empty_cache to free. (Keyed by stream:
    the allocator hands a freed block only to the stream that freed it.) The cache is emptied only
    when memory is short (MEMORY_SHORT), never around a capture."""

    def __init__(self) -> None:
        self.failures = 0  # failed captures in this process
        self._free: dict[
            tuple[torch.device, int], Any
        ] = {}  # pools of finished trials, by device and stream, for the next capture
        self._lost: list[
            Any
        ] = []  # pools of failed captures: kept referenced (freeing one may synchronize the device), counted in `failures`
        self._per_capture: dict[torch.device, bool] = {}

    def available(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def graph(self) -> Any:
        return torch.cuda.CUDAGraph()

    def pool(self, device: torch.device) -> Any:
        """The memory pool for a capture on the current stream: its last trial's, or a new one."""
        pool = self._free.pop((device, torch.cuda.current_stream(device).cuda_stream), None)
        if pool is None:
            try:
                with torch.cuda.device(device):
                    pool = torch.cuda.MemPool()
            except (
                AttributeError,
                RuntimeError,
                TypeError,
            ):  # a torch whose MemPool cannot be made here: a fresh pool per capture
                pool = _FreshPool()
        return pool

    def release(self, pool: Any, device: torch.device) -> None:
        """A pool whose graph was destroyed waits for its stream's next capture; the cache is emptied only when memory is short."""
        self._free[(device, torch.cuda.current_stream(device).cuda_stream)] = pool
        free, total = torch.cuda.mem_get_info(device)
        if free < MEMORY_SHORT * total:
            torch.cuda.empty_cache()

    def rng_per_capture(self, device: torch.device) -> bool:
        """Whether this torch keeps RNG state per capture (a random draw elsewhere during a capture
        works) or marks the generator capturing for the whole process (torch 2.11): found by
        trying it once per device, not from the version string."""
        if device not in self._per_capture:
            self._per_capture[device] = _rng_survives_a_capture(device)
        return self._per_capture[device]

    @contextlib.contextmanager
    def dropout_rng(self, graph: Any, device: torch.device, seed: int, dropout: bool) -> Iterator[None]:
        """Around capture_begin..capture_end. Where the torch has no per-capture RNG state, a
        network with dropout draws in its graph from a generator of its own (seeded with the
        trial's seed), registered with the graph: the default generator is pointed at its state
        during the capture (dropout takes no generator argument; the lock keeps every other
        thread off it meanwhile) and back after. So no capture marks the process's default
        generator, and concurrent graphs do not share the one seed/offset pair whose updates race
        on replay (identical masks)."""
        if not dropout or self.rng_per_capture(device):
            yield
            return
        own = torch.Generator(device=device).manual_seed(seed)
        graph.register_generator_state(own)
        default = self.default_generator(device)
        saved = default.graphsafe_get_state()
        default.graphsafe_set_state(own)
        try:
            yield
        finally:
            default.graphsafe_set_state(saved)

    def default_generator(self, device: torch.device) -> torch.Generator:
        return torch.cuda.default_generators[_index(device)]

    def recover(self, graph: Any, pool: Any, device: torch.device) -> None:
        """After a failed capture: destroy the graph, tell the allocator the capture ended (torch
        2.11's capture_end raises before it does), take the default generator out of its capture
        state, and count the failure; the failed pool is kept referenced, never reused. A generator
        that cannot be cleared counts as CAPTURE_FAILURES_TO_RESTART failures: the process restarts."""
        self.failures += 1
        self._lost.append(pool)
        with contextlib.suppress(RuntimeError):
            graph.reset()
        self.end_allocation(pool, device)
        if not self.clear_capture_state(device):
            self.failures = max(self.failures, CAPTURE_FAILURES_TO_RESTART)

    def end_allocation(self, pool: Any, device: torch.device) -> None:
        end = getattr(torch._C, "_cuda_endAllocateToPool", None)  # private: 2.11 and 2.13 have it
        if pool.id is not None and end is not None:
            with contextlib.suppress(RuntimeError):  # raises where capture_end already ended it
                end(_index(device), pool.id)

    def clear_capture_state(self, device: torch.device) -> bool:
        """Capture one small kernel on the current stream and destroy the graph: its capture_begin
        and capture_end put the default generator back to "not capturing". False if that failed."""
        try:
            scratch = torch.zeros(1, device=device)
            graph = torch.cuda.CUDAGraph()
            graph.capture_begin(capture_error_mode="relaxed")
            try:
                scratch.add_(1)
            finally:
                graph.capture_end()
            graph.reset()
        except RuntimeError:
            return False
        return True


class _FreshPool:
    """No pool of our own: the capture makes a new one (freed by empty_cache when memory is short)."""

    id = None


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _rng_survives_a_capture(device: torch.device) -> bool:
    """Draw random numbers on one stream while another captures: torch 2.11 raises "Offset increment
    outside graph capture encountered unexpectedly" (its generator is marked capturing for the
    whole process); a torch with per-capture RNG state draws. Any other failure counts as the
    former, the safe side."""
    caller = torch.cuda.current_stream(device)
    capturing, other = torch.cuda.Stream(device), torch.cuda.Stream(device)
    captured, drawn = torch.zeros(1, device=device), torch.empty(16, device=device)
    capturing.wait_stream(caller)
    other.wait_stream(caller)
    graph, works = torch.cuda.CUDAGraph(), False
    with torch.cuda.stream(capturing):
        graph.capture_begin(capture_error_mode="relaxed")
        try:
            captured.add_(1)
            with torch.cuda.stream(other), contextlib.suppress(RuntimeError):
                drawn.bernoulli_(0.5)
                works = True
        finally:
            graph.capture_end()
    graph.reset()
    other.synchronize()
    return works


_GRAPHS = _Graphs()


def _epoch_batches(
    split: Split, used: int, generators: list[torch.Generator], cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The epoch's images of every copy stacked along channels [used, K*C, H, W], labels [used, K]."""
    augment = dict(degrees=cfg.rotate, translate=cfg.translate, scale=cfg.scale) if cfg.augment else None
    parts = [shuffled_epoch(split, used, g, augment) for g in generators]
    if len(parts) == 1:
        return parts[0][0], parts[0][1][:, None]
    return torch.cat([x for x, _ in parts], 1), torch.stack([y for _, y in parts], 1)


@contextlib.contextmanager
def _on_trial_stream(device: torch.device) -> Iterator[None]:
    """On CUDA, run on this thread's own stream (concurrent trials in threads overlap on the GPU)."""
    if device.type != "cuda":
        yield
        return
    torch.backends.cudnn.benchmark = (
        CUDNN_BENCHMARK  # small convs: let cuDNN pick (at a trial's first step and validation, alone)
    )
    streams = _STREAMS.__dict__.setdefault("by_device", {})
    with GPU.shared():
        if device not in streams:
            streams[device] = torch.cuda.Stream(device)
        stream = streams[device]
        caller = torch.cuda.current_stream(device)
        stream.wait_stream(caller)  # the data was written on the caller's stream
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        with GPU.shared():
            caller.wait_stream(stream)  # the caller may use the trained network right away


def _network(arch: Arch, seeds: list[int], device: torch.device, precision: str) -> nn.Module:
    """Plain networks initialised under each seed, packed when there are several. channels_last
    where it measured faster: bf16 on CUDA, and always on the CPU (AMD EPYC with AVX-512, one
    thread, CPU seconds per 10,000 training images of the seed network: 3.6-3.9 against 5.2-5.4 at
    batch 128, 3.7 against 7.1 at batch 1024; validation 0.9 against 2.9). Alone in the process:
    torch.manual_seed reseeds the CUDA generators too."""
    with GPU.exclusive():
        nets = []
        for s in seeds:
            torch.manual_seed(s)
            nets.append(build(arch))
        model = (nets[0] if len(nets) == 1 else pack(nets, arch)).to(device)
        if precision == "bf16" or device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
    return model


def train(
    arch: Arch,
    data: Data,
    cfg: TrainConfig,
    on_epoch: Callable[[Epoch], None] | None = None,
    *,
    seeds: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    engine: str = "auto",
    precision: str | None = None,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> Trained:
    """Train `arch` from scratch on data.train, validating on data.val after every epoch.

    `seeds` > 1 trains that many copies (seeds cfg.seed, cfg.seed + 1, ...) as one packed network.
    `on_epoch` may raise (e.g. optuna.TrialPruned) to stop early; `on_progress(images_done,
    images_total)` is called on the host after every step, counting within the current epoch, with
    no device sync. Raises Diverged when the loss stops being finite. Deterministic for given seeds
    on the CPU; on CUDA up to cuDNN's autotuned algorithm choice. Safe to call from several threads
    (each runs on its own CUDA stream, taking turns through nas.train.gpulock); raises RestartWorker when
    too many captures failed in the process. `engine` ("auto": a CUDA graph on CUDA, eager elsewhere) and
    `precision` (default: fp32, CUDA_PRECISION on CUDA) are for tests and benchmarks.

    `on_checkpoint` is offered a Checkpoint at the end of an epoch (after `on_epoch`) once
    `checkpoint_seconds` have passed since the run (re)started or last offered one, so a short
    trial writes none; `resume` goes on from one, with the same arch, data, cfg and seeds. On the
    CPU a resumed run ends bit-identical to an uninterrupted one.
    """
    check_fits(arch, data)
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1 (got {seeds})")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    device = data.train.x.device
    precision = precision or (CUDA_PRECISION if device.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if engine == "graph" and not _GRAPHS.available(device):
        raise ValueError(f"the graph engine needs a CUDA device, the data is on {device}")
    seed_list = [cfg.seed + k for k in range(seeds)]
    suffix = f", {precision}" if device.type == "cuda" else ""
    with _on_trial_stream(device):
        try:
            if _GRAPHS.available(device) and engine != "eager":
                try:
                    return _run(
                        arch,
                        data,
                        cfg,
                        seed_list,
                        on_epoch,
                        on_progress,
                        precision,
                        True,
                        f"cuda graph{suffix}",
                        resume,
                        on_checkpoint,
                        checkpoint_seconds,
                    )
                except _CaptureFailed as e:
                    if _GRAPHS.failures >= CAPTURE_FAILURES_TO_RESTART:
                        raise RestartWorker(
                            f"{_GRAPHS.failures} CUDA graph captures failed in this process (the last: {e}); the worker restarts"
                        ) from e
                    return _run(
                        arch,
                        data,
                        cfg,
                        seed_list,
                        on_epoch,
                        on_progress,
                        precision,
                        False,
                        f"eager{suffix} (capture failed: {e})",
                        resume,
                        on_checkpoint,
                        checkpoint_seconds,
                    )
            return _run(
                arch,
                data,
                cfg,
                seed_list,
                on_epoch,
                on_progress,
                precision,
                False,
                f"eager{suffix}",
                resume,
                on_checkpoint,
                checkpoint_seconds,
            )
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                with (
                    GPU.exclusive()
                ):  # freeing cached blocks synchronizes the device: never during another thread's capture
                    torch.cuda.empty_cache()
            raise


def _run(
    arch: Arch,
    data: Data,
    cfg: TrainConfig,
    seeds: list[int],
    on_epoch: Callable[[Epoch], None] | None,
    on_progress: Callable[[int, int], None] | None,
    precision: str,
    graph: bool,
    name: str,
    resume: Checkpoint | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> Trained:
    """The epoch loop, shared by both engines: only how a batch reaches `_Trial.step` differs."""
    start = last_checkpoint = time.perf_counter()
    device = data.train.x.device
    batch, steps = static_batches(len(data.train), cfg.batch_size)
    model = _network(arch, seeds, device, precision)
    with GPU.shared():
        trial = _Trial(model, cfg, len(seeds), cfg.epochs * steps, device, precision, graph)
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        history: list[Epoch] = []
        if resume is not None:
            if len(resume.generators) != len(seeds) or not 0 < resume.epoch <= cfg.epochs:
                raise ValueError(
                    f"the checkpoint holds {len(resume.generators)} seed(s) after epoch {resume.epoch}; this run trains {len(seeds)} for {cfg.epochs} epochs"
                )
            trial.restore(resume.steps, resume.model, resume.optimizer, resume.ema)
            for g, state in zip(generators, resume.generators):
                g.set_state(state.to(g.get_state().device))
            if device.type == "cpu":
                torch.set_rng_state(resume.cpu_rng)
            history = list(resume.history)
    feed: Callable[[torch.Tensor, torch.Tensor], None] = GPU.alone_first(
        trial.step
    )  # eager: the first step alone (new shapes)
    captured, pool = None, None
    first = len(history) + 1
    try:
        for epoch in range(first, cfg.epochs + 1):
            with GPU.shared():
                x, y = _epoch_batches(data.train, steps * batch, generators, cfg)
            if graph and captured is None:
                captured, pool, feed = trial.capture(x[:batch], y[:batch], seeds[0])
            for i in range(steps):
                feed(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
                if on_progress:
                    on_progress((i + 1) * batch, steps * batch)
            with (
                GPU.exclusive() if epoch == first else GPU.shared()
            ):  # the first validation alone: new shapes, cuDNN autotunes
                if len(data.val):
                    val = torch.cat(_validate(trial.averaged, data.val, len(seeds), trial.autocast))
                else:  # nas export trains on every image
                    val = torch.full((2 * len(seeds),), math.nan, device=device)
            with GPU.shared():
                figures = torch.cat([trial.loss_sum / steps, val]).tolist()  # the epoch's one host sync
                trial.loss_sum.zero_()
            k = len(seeds)
            losses, val_losses, val_accs = figures[:k], figures[k : 2 * k], figures[2 * k :]
            for what, values in (("training", losses), ("validation", val_losses if len(data.val) else [])):
                bad = [v for v in values if not math.isfinite(v)]
                if bad:  # validation too: with one step an epoch, the step's own loss is taken before its update
                    raise Diverged(f"{what} loss became {bad[0]} in epoch {epoch}")
            lr = sum(lr_at(i, cfg, cfg.epochs * steps) for i in range((epoch - 1) * steps, epoch * steps)) / steps
            history.append(
                Epoch(
                    epoch,
                    lr,
                    sum(losses) / k,
                    sum(val_losses) / k,
                    sum(val_accs) / k,
                    time.perf_counter() - start,
                    val_accs,
                    steps * batch,
                )
            )
            if on_epoch:
                on_epoch(history[-1])
            if (
                on_checkpoint is not None
                and epoch < cfg.epochs
                and time.perf_counter() - last_checkpoint >= checkpoint_seconds
            ):
                with GPU.shared():
                    done, weights, optimizer, ema = trial.state()
                    states = [g.get_state() for g in generators]
                on_checkpoint(
                    Checkpoint(epoch, done, weights, optimizer, states, torch.get_rng_state(), list(history), ema)
                )
                last_checkpoint = time.perf_counter()
            start = time.perf_counter()  # the callback's own time is not the epoch's
    finally:
        trial.opt.zero_grad(set_to_none=True)  # on the graph engine the gradients live in the graph's memory pool
        if captured is not None:
            del feed
            with GPU.exclusive():  # destroying a graph races with another thread's capture_begin
                captured.reset()
                _GRAPHS.release(pool, device)  # the pool serves this thread's next trial
    return Trained(trial.averaged, history, name, seeds, arch)
