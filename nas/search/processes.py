"""Running a search's worker processes on this machine when its plan (nas.search.placement) has several.

Each is spawned, and a spawned process starts with the environment of the moment it is started: so each
is started inside its slot's environment (Slot.env: its GPU and CPU threads), which is set before the
process imports torch. Torch-free, like the plan.

Ctrl-C reaches each worker exactly once, however it was sent: the workers run in process groups of
their own, so a terminal's Ctrl-C (which signals the whole foreground group) reaches this process
alone, and this process passes each one it gets on to every live worker. A second one reaching a
worker means "stop at once" there (nas.search.interrupt.held), so a doubled first one would lose
the trial it was recording. A worker whose parent is gone (killed, or its terminal closed) stops
as if interrupted, unless the parent had passed an interrupt on already.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from nas.search.placement import Slot


def run_all(target: Callable[..., None], jobs: Sequence[tuple[Slot, tuple[Any, ...]]]) -> None:
    """Run `target(*args)` for each (slot, args) in a process of its own, and wait for all of them; each
    Ctrl-C is passed on to those still running, and raised here once they have all stopped. A
    RuntimeError names the exit codes of those that failed."""
    ctx = mp.get_context("spawn")
    passed_on = ctx.Value("i", 0, lock=False)  # interrupts passed on: read by the workers if this process dies
    procs = []
    for slot, args in jobs:
        with _environ(slot.env):
            p = ctx.Process(target=_child, args=(target, args, passed_on))
            p.start()
        procs.append(p)
    interrupted = False
    while True:
        try:
            for p in procs:
                p.join()
            break
        except KeyboardInterrupt:
            interrupted = True
            passed_on.value += 1
            for p in procs:
                if p.pid is not None and p.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):  # it ended just now
                        os.kill(p.pid, signal.SIGINT)
    if interrupted:
        raise KeyboardInterrupt
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} worker process(es) exited with codes {failed}; see their output above")


def _child(target: Callable[..., None], args: tuple[Any, ...], passed_on: Any) -> None:
    os.setpgrp()  # out of the terminal's foreground group: its Ctrl-C comes through the parent, once
    threading.Thread(target=_stop_with_parent, args=(passed_on,), daemon=True).start()
    target(*args)


def _stop_with_parent(passed_on: Any) -> None:
    """Interrupt this worker when its parent is gone without having passed an interrupt on: killed, or
    its terminal closed. The worker then records its trial as interrupted, as on Ctrl-C."""
    parent = mp.parent_process()
    assert parent is not None  # started by run_all
    parent.join()  # returns when the parent process has ended
    if not passed_on.value:
        os.kill(os.getpid(), signal.SIGINT)


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
