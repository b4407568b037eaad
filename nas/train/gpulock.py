"""The GPU lock: which thread of a process may issue CUDA work while another captures a CUDA graph.

Several trials share a GPU as threads of one process (nas.search.placement), each on its own CUDA stream.
A capture must see no other CUDA work of the process: on torch 2.11 `capture_begin` marks the
default CUDA generator as capturing for the whole process, so a replay or a dropout in another
thread raises; a device-wide synchronize (cuDNN autotuning a new shape, `empty_cache`) invalidates
the capture; destroying a graph races with `capture_begin`. So the work of a trial comes in two
kinds (nas.train.engine uses this module for both):

- **exclusive**, alone in the process: seeding and building a network, warm-up and capture, a
  trial's first step and first validation (new shapes: cuDNN autotunes and synchronizes the
  device), destroying a graph, freeing cached memory;
- **shared**, any number of threads at once: replays and eager steps, later validations, an
  epoch's shuffle and augmentation, reading the epoch's figures back.

A readers/writer lock with writer preference: once a writer waits, no new reader gets in, so a
capture waits only for the shared work already running, which is one step, one epoch's shuffle,
one validation or one read of an epoch's figures: at most about an epoch. It is the innermost lock:
a thread that holds it takes no other lock and runs no callback, storage call, heartbeat or console
output, so it never waits for anything but the GPU. It is not reentrant: a thread that asks again
while it holds it gets a RuntimeError instead of a deadlock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class GpuLock:
    """Readers (shared work) and writers (exclusive work), writers preferred."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self._mine = threading.local()  # the mode the calling thread holds, if any

    def held(self) -> str | None:
        """'shared' or 'exclusive' when the calling thread holds the lock, else None."""
        return getattr(self._mine, "mode", None)

    def readers(self) -> int:
        """Threads doing shared work now (a test checks it is 0 whenever a capture begins)."""
        with self._cond:
            return self._readers

    def shared(self) -> contextlib.AbstractContextManager[None]:
        """Work that may overlap other shared work, never a capture."""
        return self._hold("shared", self._in_shared, self._out_shared)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Work that must run alone in the process."""
        return self._hold("exclusive", self._in_exclusive, self._out_exclusive)

    @contextlib.contextmanager
    def _hold(self, mode: str, enter: Callable[[], None], leave: Callable[[], None]) -> Iterator[None]:
        if self.held() is not None:
            raise RuntimeError(
                f"the GPU lock is not reentrant: this thread holds it ({self.held()}) and asked for it {mode}"
            )
        self._mine.mode = mode
        try:
            with self._cond:
                enter()
        except BaseException:
            self._mine.mode = None
            raise
        try:
            yield
        finally:
            with self._cond:
                leave()
            self._mine.mode = None

    # The four below run under self._cond.

    def _in_shared(self) -> None:
        while self._writer or self._waiting_writers:
            self._cond.wait()
        self._readers += 1

    def _out_shared(self) -> None:
        self._readers -= 1
        if not self._readers:
            self._cond.notify_all()

    def _in_exclusive(self) -> None:
        self._waiting_writers += 1
        try:
            while self._writer or self._readers:
                self._cond.wait()
        finally:
            self._waiting_writers -= 1
            if not self._waiting_writers:
                self._cond.notify_all()  # readers held back by a writer that gave up waiting
        self._writer = True

    def _out_exclusive(self) -> None:
        self._writer = False
        self._cond.notify_all()

    def alone_first(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn` under the lock: its first call exclusive (new shapes), every later call shared."""
        first = True

        def call(*args, **kwargs) -> T:
            nonlocal first
            with self.exclusive() if first else self.shared():
                out = fn(*args, **kwargs)
            first = False
            return out

        return call


GPU = GpuLock()  # the one lock of the process: every trial on every device of it takes turns here
