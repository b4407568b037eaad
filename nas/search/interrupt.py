"""Ctrl-C that is never lost, and never lands in the middle of bookkeeping.

Python raises KeyboardInterrupt wherever the main thread happens to be. Raised inside a weakref
callback or a finalizer, it is printed as "Exception ignored" and dropped: torch imports modules
lazily during the first epochs, garbage collection runs such callbacks then, and a search hit by
Ctrl-C at that moment trained on as if nothing had happened (the CLI test that waited 60 s for an
exit). So while `catching()` is active, the handler also remembers the interrupt, and long loops
call `check()` at safe points (after every training step), which raises it again. `held()` keeps
an interrupt out of a block that must finish (recording a trial) and raises it after.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_pending = threading.Event()  # a Ctrl-C arrived while `catching()` was active
_catching: list[bool] = []


def _raise(signum: int, frame: Any) -> None:
    if _catching:
        _pending.set()
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def catching() -> Iterator[None]:
    """Remember every Ctrl-C in this block (main thread only; elsewhere signals never arrive),
    and keep quiet about one Python could not raise ("Exception ignored in ...", with a
    traceback): `check()` raises it again."""
    if not _main_thread():
        yield
        return
    previous, hook = signal.signal(signal.SIGINT, _raise), sys.unraisablehook

    def quiet(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    sys.unraisablehook = quiet
    if not _catching:
        _pending.clear()
    _catching.append(True)
    try:
        yield
    finally:
        _catching.pop()
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook
        if not _catching:
            _pending.clear()


def happened() -> bool:
    """Whether a Ctrl-C arrived while `catching()` was active."""
    return _pending.is_set()


def check(*_: Any) -> None:
    """In the main thread, raise a Ctrl-C that arrived and was swallowed where it landed; cheap
    enough for every step (it takes and ignores any arguments, so it can stand in for a
    progress callback). Other threads go on: the main thread stops them."""
    if _pending.is_set() and _main_thread():
        raise KeyboardInterrupt


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold a Ctrl-C until the block is done, then raise it: bookkeeping cut in half (a trial
    asked for but not yet marked as ours, a result half stored) loses a trial. A second Ctrl-C
    stops at once, as a way out of a storage outage."""
    if not _main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if got:
            _raise(signum, frame)
        got.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if got:
        raise KeyboardInterrupt
