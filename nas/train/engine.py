"""The trainer: one train() for the search, `nas train` and `nas export`.

Every epoch is a fresh shuffle (and augmentation) of the whole training split, made in a few
batched calls on the device and sliced into static batches: the last partial batch is dropped and
Epoch.images counts what was trained on (nas.data.tensors.static_batches). The one training step
is nas.train.trial's `_Trial.step`: learning rate from the step counter (nas.train.schedule),
forward, loss, backward, update, loss summed on the device. The eager engine calls it once per
batch (always on CPU; on CUDA when capture fails); the graph engine (CUDA) captures it once per
trial in a CUDA graph and replays it per batch after copying the batch into static buffers. Either
way the host waits for the device once per epoch, to read the losses and the validation figures
together.

K seeds train as one packed network (nas.arch.model.build(arch, copies=K)): copy k starts from the
weights a plain network gets under torch.manual_seed(cfg.seed + k) and sees its own shuffled,
augmented batches, so it is, up to float rounding, what training alone with that seed gives.
Dropout draws its mask per element of the packed tensor, so each copy gets masks of its own, as a
separate run would, but not that run's random numbers: with dropout, copies match separate runs
in distribution only.

Several trials may train at once in threads of one process, each on its own CUDA stream. They take
turns on the GPU through nas.train.gpulock: a capture (with its warm-up), a trial's first step and
first validation, seeding and graph destruction run alone; steps, replays, later validations, an
epoch's shuffle and the read of its figures run shared; callbacks run outside the lock. _GRAPHS
(nas.train.graphs) holds the CUDA-graph state of the process: graph memory pools reused across
trials, failed captures (recovered from, and after CAPTURE_FAILURES_TO_RESTART of them
RestartWorker), and how this torch keeps the RNG state of a capture.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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
from nas.train.graphs import CAPTURE_FAILURES_TO_RESTART, _Graphs
from nas.train.schedule import lr_at
from nas.train.trial import _CaptureFailed, _Trial

PRECISIONS = ("fp32", "bf16")
# On CUDA: the reference graph (issue 7) trained in fp32 at the figures it reports, and bf16 with
# channels_last failed to capture for a packed network there; benchmarks/gpu_suite.py measures bf16.
CUDA_PRECISION = "fp32"
ENGINES = ("auto", "eager", "graph")
VAL_IMAGES = {"cuda": 10_000, "cpu": 1_000}  # images x copies per validation batch
# A trial offers a checkpoint at the end of an epoch once this long has passed since its last.
CHECKPOINT_SECONDS = 60.0
CUDNN_BENCHMARK = True  # let cuDNN time its algorithms for each new shape (benchmarks/gpu_suite.py measures it off)

# What runs alone and what runs shared on a GPU: nas.train.gpulock. One CUDA stream per thread, so
# that concurrent trials overlap.
_STREAMS = threading.local()
_GRAPHS = _Graphs()  # the CUDA-graph state of the process; a test swaps in a recording fake


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


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


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
            f"is {arch.classes} but the labels go up to {classes - 1}{of}; "
            f"give an architecture with classes = {classes}",
        )


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
    # Small convs: let cuDNN pick (at a trial's first step and validation, alone).
    torch.backends.cudnn.benchmark = CUDNN_BENCHMARK
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
        nets: list[nn.Module] = []
        for s in seeds:
            torch.manual_seed(s)
            nets.append(build(arch))
        model = (nets[0] if len(nets) == 1 else pack(nets, arch)).to(device)
        if precision == "bf16" or device.type == "cpu":
            # Module.to takes memory_format (torch's docs, its code); its typed overloads omit it.
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it
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

    def run(graph: bool, name: str) -> Trained:
        return _run(
            arch,
            data,
            cfg,
            seed_list,
            on_epoch,
            on_progress,
            precision,
            graph,
            name,
            resume,
            on_checkpoint,
            checkpoint_seconds,
        )

    with _on_trial_stream(device):
        try:
            if _GRAPHS.available(device) and engine != "eager":
                try:
                    return run(True, f"cuda graph{suffix}")
                except _CaptureFailed as e:
                    if _GRAPHS.failures >= CAPTURE_FAILURES_TO_RESTART:
                        raise RestartWorker(
                            f"{_GRAPHS.failures} CUDA graph captures failed in this process (the last: {e}); "
                            "the worker restarts"
                        ) from e
                    return run(False, f"eager{suffix} (capture failed: {e})")
            return run(False, f"eager{suffix}")
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                # Freeing cached blocks synchronizes the device: never during another thread's capture.
                with GPU.exclusive():
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
                    f"the checkpoint holds {len(resume.generators)} seed(s) after epoch {resume.epoch}; "
                    f"this run trains {len(seeds)} for {cfg.epochs} epochs"
                )
            trial.restore(resume.steps, resume.model, resume.optimizer, resume.ema)
            for g, state in zip(generators, resume.generators):
                g.set_state(state.to(g.get_state().device))
            if device.type == "cpu":
                torch.set_rng_state(resume.cpu_rng)
            history = list(resume.history)
    # Eager: the first step alone (new shapes).
    feed: Callable[[torch.Tensor, torch.Tensor], None] = GPU.alone_first(trial.step)
    captured, pool = None, None
    first = len(history) + 1
    try:
        for epoch in range(first, cfg.epochs + 1):
            with GPU.shared():
                x, y = _epoch_batches(data.train, steps * batch, generators, cfg)
            if graph and captured is None:
                captured, pool, feed = trial.capture(x[:batch], y[:batch], seeds[0], _GRAPHS)
            for i in range(steps):
                feed(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch])
                if on_progress:
                    on_progress((i + 1) * batch, steps * batch)
            # The first validation alone: new shapes, cuDNN autotunes.
            with GPU.exclusive() if epoch == first else GPU.shared():
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
                # Validation too: with one step an epoch, the step's own loss is taken before its update.
                if bad:
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
        # On the graph engine the gradients live in the graph's memory pool.
        trial.opt.zero_grad(set_to_none=True)
        if captured is not None:
            del feed
            with GPU.exclusive():  # destroying a graph races with another thread's capture_begin
                captured.reset()
                _GRAPHS.release(pool, device)  # the pool serves this thread's next trial
    return Trained(trial.averaged, history, name, seeds, arch)
