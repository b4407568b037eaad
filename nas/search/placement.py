"""Where a search's work runs: worker processes, the GPU each is pinned to, how many trials each
runs at once, and its CPU threads. Torch-free: `nas search` and `nas worker` plan before any
worker imports torch, and the plan is tested without a GPU.

On a GPU, separate processes take turns (no MPS), while trials in one process on separate CUDA
streams overlap: so the default is one process per GPU running DEFAULT_TRIALS_PER_GPU trials at a
time in threads (nas.train.engine is thread-safe). On the CPU, trials run eagerly and the cores are the
limit: N processes with the CPU threads split between them, one trial each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Concurrent trials per GPU when not told. Not measured yet (no GPU in the session that wrote this;
# benchmarks/gpu_suite.py measures 1 against several). Reasoning: once a step is one CUDA graph,
# the seed network's small-channel kernels bind and leave most of an H100 idle (batch 1024 is no
# faster per epoch than 512), and packing 8 copies cost only 2.77x one, so there is room for about
# 3x more work per launch; 4 trials on separate streams take most of that room, while each trial
# needs well under 1 GB of memory and one host thread that mostly waits.
DEFAULT_TRIALS_PER_GPU = 4


@dataclass(frozen=True)
class Slot:
    """One worker process: its place in the plan and what it is given."""

    worker: int  # 0-based
    gpu: str | None  # the device id it sees as cuda:0 (CUDA_VISIBLE_DEVICES), None on the CPU
    trials: int  # trials it runs at the same time (threads; 1 on the CPU)
    threads: int  # torch CPU threads (torch.set_num_threads)
    env: dict[str, str] = field(default_factory=dict)  # set before the worker imports torch


def visible_gpus(count: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """The ids of the `count` GPUs torch sees, as CUDA_VISIBLE_DEVICES names them, so that a worker
    pinned to one of them sees the same physical GPU even when the parent was itself restricted."""
    env = os.environ if environ is None else environ
    given = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" in env and len(given) >= count:
        return given[:count]
    return [str(i) for i in range(count)]


def cores() -> int:
    """The CPU cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_cap(gpus: int, trials_per_gpu: int | None = None, cpus: int | None = None) -> tuple[int, str]:
    """The most worker processes worth starting on this machine, and what sets that number: each
    needs a CPU core, and on GPUs more processes than the GPUs' concurrent trials only wait for
    their turn. (64 workers on 2 cores once ran for minutes without starting a trial.)"""
    n = max(1, cpus if cpus is not None else cores())
    why = f"{n} CPU core{'s' if n != 1 else ''}"
    slots = gpus * (trials_per_gpu or DEFAULT_TRIALS_PER_GPU)
    if gpus and slots < n:
        return (
            slots,
            f"{gpus} GPU{'s' if gpus != 1 else ''} x {trials_per_gpu or DEFAULT_TRIALS_PER_GPU} trials at a time",
        )
    return n, why


def describe(slots: Sequence[Slot]) -> str:
    """The plan in a few words, however many workers it has."""
    if all(x.gpu is None for x in slots):
        threads = slots[0].threads
        return (
            f"{len(slots)} worker{'s' if len(slots) != 1 else ''} on the CPU, "
            f"{threads} thread{'s' if threads != 1 else ''}{' each' if len(slots) > 1 else ''}"
        )
    per: dict[str, list[Slot]] = {}
    for x in slots:
        per.setdefault(str(x.gpu), []).append(x)
    return "; ".join(
        f"GPU {g}: {sum(x.trials for x in xs)} trials at a time in {len(xs)} worker{'s' if len(xs) != 1 else ''}"
        for g, xs in per.items()
    )


def plan_workers(
    gpus: int | Sequence[str],
    workers: int | None = None,
    trials_per_gpu: int | None = None,
    cpus: int | None = None,
    thread_cap: int | None = None,
) -> list[Slot]:
    """The worker processes to start.

    gpus: how many GPUs this machine has (or their ids, from visible_gpus); 0 means the CPU.
    workers: processes to start (default: one per GPU, or one on the CPU). Workers are spread over
    the GPUs in turn, and the trials_per_gpu concurrent trials of a GPU (default
    DEFAULT_TRIALS_PER_GPU) are shared among the workers on it, at least one each.
    cpus: CPU cores to share (default: the cores this process may run on).
    thread_cap: at most this many threads a process (the user's OMP_NUM_THREADS, as torch reads it).
    """
    ids = [str(i) for i in range(gpus)] if isinstance(gpus, int) else [str(g) for g in gpus]
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    if trials_per_gpu is not None and trials_per_gpu < 1:
        raise ValueError(f"trials per GPU must be at least 1 (got {trials_per_gpu})")
    n = workers or max(1, len(ids))
    threads = max(1, max(1, cpus if cpus is not None else cores()) // n)
    if thread_cap is not None:
        threads = max(1, min(threads, thread_cap))
    if not ids:
        # CUDA_VISIBLE_DEVICES="" keeps a CPU worker off any GPU a CPU run was asked for.
        return [
            Slot(w, None, 1, threads, {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)}) for w in range(n)
        ]
    per_gpu = trials_per_gpu or DEFAULT_TRIALS_PER_GPU
    slots = []
    for w in range(n):
        gpu = w % len(ids)
        sharing = len(range(gpu, n, len(ids)))  # workers on this GPU
        rank = w // len(ids)  # this worker's place among them
        trials = max(1, per_gpu // sharing + (rank < per_gpu % sharing))
        slots.append(
            Slot(w, ids[gpu], trials, threads, {"CUDA_VISIBLE_DEVICES": ids[gpu], "OMP_NUM_THREADS": str(threads)})
        )
    return slots


def omp_threads() -> int | None:
    """OMP_NUM_THREADS when it is a positive whole number (None otherwise)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None
