"""The CUDA-graph state of a process, and what the graph engine asks of torch.cuda.

A captured step needs a graph memory pool, and a failed capture leaves state behind (its pool, the
allocator's and the default generator's capture state) that has to be cleared before the trial
falls back to eager; how this torch keeps the RNG state of a capture decides whether dropout in a
graph needs a generator of its own. _Graphs keeps all of that in one place, apart from the step
and the epoch loop (nas.train.trial, nas.train.engine), so a test can swap in a recording fake
that runs the graph engine's discipline on the CPU. The engine holds the one instance of the
process, nas.train.engine._GRAPHS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

CAPTURE_FAILURES_TO_RESTART = 3  # failed captures after which a worker process is re-executed (RestartWorker)
MEMORY_SHORT = 0.1  # a finished graph trial frees cached GPU memory when less than this share of it is free


class _Graphs:
    """What the graph engine asks of torch.cuda, and the state it keeps for the process: memory
    pools, failed captures, how this torch keeps the RNG state of a capture. Called only under
    GPU.exclusive() (nas.train.gpulock). One instance, nas.train.engine._GRAPHS; a test swaps in a
    recording fake that runs the graph engine's discipline on the CPU.

    Pools: one graph memory pool per trial stream (in effect per worker thread), taken at capture
    and given back when the trial's graph is destroyed, so that the thread's next graph reuses its
    memory instead of every trial leaving a pool behind for empty_cache to free. (Keyed by stream:
    the allocator hands a freed block only to the stream that freed it.) The cache is emptied only
    when memory is short (MEMORY_SHORT), never around a capture."""

    def __init__(self) -> None:
        self.failures = 0  # failed captures in this process
        # Pools of finished trials, by device and stream, for the next capture.
        self._free: dict[tuple[torch.device, int], Any] = {}
        # Pools of failed captures: kept referenced (freeing one may synchronize the device), counted
        # in `failures`.
        self._lost: list[Any] = []
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
            except (AttributeError, RuntimeError, TypeError):
                pool = _FreshPool()  # a torch whose MemPool cannot be made here: a fresh pool per capture
        return pool

    def release(self, pool: Any, device: torch.device) -> None:
        """A pool whose graph was destroyed waits for its stream's next capture; the cache is
        emptied only when memory is short."""
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
