"""Storage faults that may pass, told apart from the rest, and waited out where losing work would
cost more than waiting. Torch-free.

A command that cannot reach its storage at the start stops with one line naming the cause; a
worker that loses it mid-search waits (`persist`, up to STORAGE_PATIENCE seconds) rather than
dropping a finished trial's result. nas.study.storage and nas.study.keeper both decide here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import optuna

from nas.errors import SpecError

STORAGE_PATIENCE = float(os.environ.get("NAS_STORAGE_PATIENCE", "600"))  # seconds to wait for an outage to end


class StorageUnreachable(SpecError):
    """The storage could not be reached; at a command's start this is the user's error to fix,
    in a running worker an outage to wait out (`persist` retries it)."""


def cause(e: BaseException) -> str:
    """The root cause in one line (Optuna wraps database errors in a generic message)."""
    while isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ is not None:
        e = e.__cause__
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def transient(e: BaseException) -> bool:
    """A storage fault that may pass (a restarting server, a dropped connection, a busy file)."""
    if isinstance(e, (optuna.exceptions.StorageInternalError, StorageUnreachable)):
        return True
    return type(e).__module__.split(".")[0] in ("sqlalchemy", "psycopg", "psycopg2", "sqlite3") or isinstance(
        e, (ConnectionError, TimeoutError)
    )


def persist(action: Callable[[], Any], log: Callable[[str], None], what: str) -> Any:
    """Run a storage action, waiting out an outage (up to STORAGE_PATIENCE seconds) rather than
    losing a finished trial's result."""
    deadline, wait, told = time.monotonic() + STORAGE_PATIENCE, 0.5, False
    while True:
        try:
            return action()
        except Exception as e:  # noqa: BLE001 - only transient faults are retried
            if not transient(e) or time.monotonic() > deadline:
                raise
            if not told:
                log(f"storage unreachable while {what} ({cause(e)}); retrying for up to {STORAGE_PATIENCE:.0f} s")
                told = True
            time.sleep(wait)
            wait = min(5.0, wait * 2)
