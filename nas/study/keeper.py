"""Trials whose worker died are found and run again: heartbeats, the reaper, and retries.
Torch-free.

Every process that runs trials keeps a `Keeper` thread: it records a heartbeat for the trials
it runs and fails (then retries, up to twice) the trials of workers that stopped beating. A
retry is a clean trial with the same parameters; `RetriesFirst` hands retries out before the
rest of the queue, and `finished` counts a retried trial once.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.study.outages import cause, persist, transient

# A killed worker's trial is failed within GRACE + HEARTBEAT seconds and retried at once.
# NAS_HEARTBEAT_SECONDS shortens both for tests (grace stays three beats).
HEARTBEAT_SECONDS = int(os.environ.get("NAS_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = 3 * HEARTBEAT_SECONDS
MAX_RETRIES = 2  # a trial whose workers keep dying is given up after this many retries
# A retry is a clean trial: only what says where it came from is copied (a promotion keeps its parent).
_KEPT_ON_RETRY = ("seed_arch", "parent", "level")


def _unwrap(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """Optuna wraps RDB storages in a cache; heartbeats go to the database itself."""
    return storage._backend if isinstance(storage, optuna.storages._CachedStorage) else storage


class Keeper:
    """The heartbeat and the reaper of one worker process, on one thread.

    The beat is a trial system attribute holding the time (seconds since the epoch, so the
    machines' clocks must agree to within the grace period, as NTP keeps them), the same on
    every kind of storage: Optuna's own RDB heartbeat leaves a trial that never beat RUNNING
    forever, and a journal has none in Optuna 5. A trial seen RUNNING without any beat is
    stale once it has gone a grace period unbeaten under this keeper's eyes. After its own
    storage outage a keeper waits a grace period before reaping, so trials of workers that
    were merely cut off too are not failed by mistake."""

    def __init__(
        self,
        study: optuna.Study | list[optuna.Study],
        log: Callable[[str], None],
        on_reaped: Callable[[optuna.Study, FrozenTrial, bool], None] | None = None,
        on_beat: Callable[[], None] | None = None,
    ):
        # Every level of a study (nas.study.levels) is watched by the same keeper.
        self.studies = study if isinstance(study, list) else [study]
        self.log, self.on_reaped, self.on_beat = log, on_reaped, on_beat
        self.backend = _unwrap(self.studies[0]._storage)
        self.trials: set[int] = set()
        self.unbeaten: dict[int, float] = {}  # trial id -> when this keeper first saw it RUNNING with no beat
        self.healthy_since = time.monotonic()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="nas-keeper", daemon=True)

    def __enter__(self) -> Keeper:
        persist(self.reap, self.log, "reaping stale trials")  # a starting worker fails stale trials first
        self._beat_hook()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._beat_hook()  # the last seconds of this run count too

    def _beat_hook(self) -> None:
        if self.on_beat is not None:
            with contextlib.suppress(Exception):  # a missed tick loses seconds of the clock, nothing else
                self.on_beat()

    def track(self, trial_id: int) -> None:
        """Beat for this trial from now on; never raises, so a trial once asked for is never lost."""
        with self._guard:
            self.trials.add(trial_id)
        with contextlib.suppress(Exception):  # the keeper's thread beats again within HEARTBEAT_SECONDS
            self.beat(trial_id)

    def untrack(self, trial_id: int) -> None:
        with self._guard:
            self.trials.discard(trial_id)

    def beat(self, trial_id: int) -> None:
        self.backend.set_trial_system_attr(trial_id, "nas:heartbeat", time.time())

    def _run(self) -> None:
        down = False
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with self._guard:
                    ids = list(self.trials)
                for trial_id in ids:
                    with contextlib.suppress(UpdateFinishedTrialError):
                        self.beat(trial_id)
                if time.monotonic() - self.healthy_since >= GRACE_SECONDS:
                    self.reap()
                self._beat_hook()
                if down:
                    self.log("storage reachable again")
                    down = False
            except Exception as e:  # noqa: BLE001 - the keeper must outlive any outage
                if not transient(e):
                    self.log(f"heartbeat: {cause(e)}")
                elif not down:
                    self.log(f"storage unreachable ({cause(e)}); heartbeats resume when it is back")
                down = True
                self.healthy_since = time.monotonic()

    def stale(self) -> list[tuple[optuna.Study, int]]:
        now, seen = time.time(), time.monotonic()
        out = []
        running = [
            (study, t)
            for study in self.studies
            for t in self.backend.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
        ]
        self.unbeaten = {k: v for k, v in self.unbeaten.items() if k in {t._trial_id for _, t in running}}
        for study, t in running:
            last = t.system_attrs.get("nas:heartbeat")
            if last is None:
                if seen - self.unbeaten.setdefault(t._trial_id, seen) > GRACE_SECONDS:
                    out.append((study, t._trial_id))
            elif now - last > GRACE_SECONDS:
                out.append((study, t._trial_id))
        return out

    def reap(self) -> list[int]:
        """Fail the trials whose worker stopped beating, and enqueue a clean retry of each."""
        reaped = []
        for study, trial_id in self.stale():
            if trial_id in self.trials:
                continue
            try:
                self.backend.set_trial_user_attr(
                    trial_id,
                    "fail_reason",
                    f"stale: its worker sent no heartbeat for {GRACE_SECONDS} s (killed, or cut off from the storage)",
                )
                if not self.backend.set_trial_state_values(trial_id, TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:
                continue  # another worker reaped it, or its own worker just finished it
            t = self.backend.get_trial(trial_id)
            retried = retry(study, t)
            of = f" of {study.study_name}" if len(self.studies) > 1 else ""  # which level, in a ladder
            self.log(
                f"[trial {t.number}{of}] FAILED: its worker stopped (no heartbeat for {GRACE_SECONDS} s); "
                + (
                    "retried as a new trial"
                    if retried
                    else f"not retried: its configuration already lost {MAX_RETRIES} workers"
                )
            )
            if self.on_reaped is not None:
                self.on_reaped(study, t, retried)
            reaped.append(trial_id)
        return reaped


def retry(study: optuna.Study, t: FrozenTrial, lost_worker: bool = True) -> bool:
    """Enqueue a clean copy of a trial that died with its worker (same parameters, none of its
    attributes but where it came from); False when its configuration already lost MAX_RETRIES
    workers. Only a lost worker counts toward that cap: an interrupt (Ctrl-C) is the user's
    choice, not a fault of the configuration, and is retried however often it happens."""
    retries = t.user_attrs.get("retries", 0) + lost_worker
    if retries > MAX_RETRIES:
        return False
    kept = {k: t.user_attrs[k] for k in _KEPT_ON_RETRY if k in t.user_attrs}
    study.enqueue_trial(t.params, user_attrs={**kept, "retry_of": t.number, "retries": retries}, skip_if_exists=False)
    return True


class RetriesFirst(optuna.Study):
    """A study whose queue hands out the retries of stopped trials (Ctrl-C, a lost or restarting
    worker) before anything else waiting, oldest first, then the rest in the order enqueued.
    Optuna's own queue takes the oldest waiting trial, so a retry (enqueued last) would wait
    behind every built-in still queued, and a --trials goal met meanwhile would leave it untrained."""

    def _pop_waiting_trial_id(self) -> int | None:
        waiting = self._storage.get_all_trials(self._study_id, deepcopy=False, states=(TrialState.WAITING,))
        for t in sorted(waiting, key=lambda t: ("retry_of" not in t.user_attrs, t.number)):
            try:
                # False: another worker took it
                if self._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                    return t._trial_id
            except UpdateFinishedTrialError:
                continue
        return None


def finished(trials: list[FrozenTrial]) -> int:
    """Trials that count towards --trials: complete, pruned or failed, except a failed trial
    that was retried (its retry counts instead)."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(1 for t in trials if t.state.is_finished() and t.number not in retried)
