"""Running a search's worker processes on this machine when its plan (nas.search.placement) has several.

Each is spawned, and a spawned process starts with the environment of the moment it is started: so each
is started inside its slot's environment (Slot.env: its GPU and CPU threads), which is set before the
process imports torch. Torch-free, like the plan.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from nas.search.placement import Slot


def run_all(target: Callable[..., None], jobs: Sequence[tuple[Slot, tuple[Any, ...]]]) -> None:
    """Run `target(*args)` for each (slot, args) in a process of its own, and wait for all of them (on
    Ctrl-C too, which reaches them as well); a RuntimeError names the exit codes of those that failed."""
    ctx = mp.get_context("spawn")
    procs = []
    for slot, args in jobs:
        with _environ(slot.env):
            p = ctx.Process(target=target, args=args)
            p.start()
        procs.append(p)
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join()
        raise
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) exited with codes {failed}; see their output above")


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
