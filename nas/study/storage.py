"""Where studies live, checked before anything is written: storage URLs, race-free study
creation, heartbeats, and the reaping of trials whose worker died. Torch-free.

Three kinds of storage work, as Optuna knows them:
- `sqlite:///FILE`: one machine (any number of worker processes);
- `postgresql+psycopg://USER@HOST/DB`: many machines (`pip install 'nas[postgres]'`);
- `journal:///FILE`: a journal file on a file system every machine shares (NFS).

Every process that runs trials keeps a `Keeper` thread: it records a heartbeat for the trials
it runs and fails (then retries, up to twice) the trials of workers that stopped beating.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nas.errors import SpecError
from nas.study.settings import StudySettings

warnings.filterwarnings(
    "ignore", category=optuna.exceptions.ExperimentalWarning
)  # artifacts, constraints: stable enough for us

# A killed worker's trial is failed within GRACE + HEARTBEAT seconds and retried at once.
# NAS_HEARTBEAT_SECONDS shortens both for tests (grace stays three beats).
HEARTBEAT_SECONDS = int(os.environ.get("NAS_HEARTBEAT_SECONDS", "10"))
GRACE_SECONDS = 3 * HEARTBEAT_SECONDS
MAX_RETRIES = 2  # a trial whose workers keep dying is given up after this many retries
STORAGE_PATIENCE = float(os.environ.get("NAS_STORAGE_PATIENCE", "600"))  # seconds to wait for a storage outage to end
_HINT = "give sqlite:///FILE, postgresql+psycopg://USER@HOST/DB or journal:///FILE"
_KEPT_ON_RETRY = ("seed_arch",)  # a retry is a clean trial: only what says where it came from is copied


class StorageUnreachable(SpecError):
    """The storage could not be reached; at a command's start this is the user's error to fix,
    in a running worker an outage to wait out (`persist` retries it)."""


@dataclass(frozen=True)
class Location:
    """A checked storage URL."""

    url: str
    kind: str  # sqlite | postgresql | journal
    path: Path | None = None  # the file of sqlite and journal storages
    sqlalchemy_url: str | None = None

    def describe(self) -> str:
        return str(self.path) if self.path else self.url.split("@")[-1]

    @property
    def shown(self) -> str:
        """The URL as it may be printed or stored: its password masked."""
        return masked(self.url)


def masked(url: str) -> str:
    """A storage URL with its password (user:PASSWORD@host, or ?password=...) replaced by ***,
    for everything nas prints, logs or stores: a terminal, a log file or a shared note is no
    place for it (put it in ~/.pgpass or PGPASSWORD instead)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, slash, path = rest.partition("/")
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        user = user.split(":", 1)[0] + ":***"
    path = re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", path)
    return f"{scheme}{sep}{user}{at}{host}{slash}{path}"


def parse(url: str) -> Location:
    """Check a --storage URL without touching anything; SpecError names the problem and the fix."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SpecError("--storage", masked(url), f"not a storage URL; {_HINT}")
    if scheme == "sqlite":
        if rest in ("", "/", "/:memory:") or ":memory:" in rest:
            raise SpecError(
                "--storage",
                url,
                "an in-memory SQLite database lives and dies with one process; give a file: sqlite:///studies/nas.sqlite3",
            )
        if not rest.startswith("/"):
            raise SpecError(
                "--storage",
                url,
                "a SQLite URL has three slashes before a relative path, four before an absolute one: sqlite:///studies/nas.sqlite3",
            )
        return Location(url, "sqlite", Path(rest[1:]), url)
    if scheme == "journal":
        if not rest.startswith("/") or len(rest) < 2:
            raise SpecError(
                "--storage",
                url,
                "a journal URL names a file: journal:///studies/nas.log (four slashes for an absolute path)",
            )
        return Location(url, "journal", Path(rest[1:]))
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        driver = scheme.partition("+")[2] or "psycopg"
        module = {"psycopg": "psycopg", "psycopg2": "psycopg2"}.get(driver)
        if module is None:
            raise SpecError(
                "--storage", scheme, "nas talks to PostgreSQL through psycopg: use postgresql+psycopg://USER@HOST/DB"
            )
        if importlib.util.find_spec(module) is None:
            raise SpecError(
                "--storage", url.split("@")[-1], f"PostgreSQL needs the {module} driver: pip install 'nas[postgres]'"
            )
        return Location(url, "postgresql", None, f"postgresql+{driver}://{rest}")
    raise SpecError("--storage", masked(url), f"unknown kind of storage {scheme!r}; {_HINT}")


def open_storage(loc: Location, create: bool) -> optuna.storages.BaseStorage:
    """The Optuna storage behind `loc`. With create=False (commands that only read), a missing
    file is an error instead of a new empty database. Creating tables races between processes:
    call it under study_lock when create is True."""
    _check_file(loc, create)
    try:
        if loc.kind == "journal":
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            return JournalStorage(JournalFileBackend(str(loc.path)))
        kwargs: dict[str, Any] = (
            {"connect_args": {"timeout": 120}}
            if loc.kind == "sqlite"
            else {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
        )
        return optuna.storages.RDBStorage(loc.sqlalchemy_url, engine_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy, drivers and the file system fail in many types
        if isinstance(e, (OSError, ImportError)) or transient(e) or type(e).__module__.split(".")[0] == "alembic":
            raise StorageUnreachable(
                "--storage",
                loc.describe(),
                f"cannot open the study storage ({cause(e)}); check the URL, the server and the permissions",
            ) from None
        raise


def _check_file(loc: Location, create: bool) -> None:
    if loc.path is None:
        return
    if loc.path.is_dir():
        raise SpecError("--storage", loc.url, "is a folder; give a file")
    if not create and not loc.path.is_file():
        raise SpecError(
            "--storage",
            loc.url,
            "no study storage there yet; run `nas search` first, or point --storage at an existing one",
        )
    try:
        loc.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError(
            "--storage", loc.url, f"cannot create the folder {loc.path.parent} ({e.strerror}); choose a writable place"
        ) from None
    if create and not os.access(loc.path.parent, os.W_OK) or loc.path.exists() and not os.access(loc.path, os.W_OK):
        raise SpecError("--storage", loc.url, "is not writable; choose a writable place")


def cause(e: BaseException) -> str:
    """The root cause in one line (Optuna wraps database errors in a generic message)."""
    while isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ is not None:
        e = e.__cause__
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --- one lock per study, across processes and machines ----------------------------------------

_engines: dict[str, Any] = {}


@contextlib.contextmanager
def study_lock(loc: Location, study: str) -> Iterator[None]:
    """Mutual exclusion for check-then-act steps (create a study and enqueue its seeds, start a
    trial only while the study still needs one, write the study note): a lock file next to a
    SQLite or journal file, a session advisory lock in PostgreSQL. Both end with the process,
    so a killed worker never leaves the study locked."""
    if loc.path is not None:
        _check_file(loc, create=True)
        with open(f"{loc.path}.nas-lock", "a+") as f:  # flock: per open file, so threads exclude each other too
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        return
    import sqlalchemy

    engine = _engines.get(loc.sqlalchemy_url)
    if engine is None:
        engine = _engines[loc.sqlalchemy_url] = sqlalchemy.create_engine(
            loc.sqlalchemy_url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10}
        )
    key = zlib.crc32(f"nas:{study}".encode())
    try:
        conn = engine.connect()
    except Exception as e:  # noqa: BLE001 - the first contact with the server: a command's start says so in one line
        if transient(e):
            raise StorageUnreachable(
                "--storage",
                loc.describe(),
                f"cannot reach the database ({cause(e)}); check the URL, that the server runs and accepts this machine, and the password (~/.pgpass or PGPASSWORD)",
            ) from None
        raise
    with conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            except Exception as e:  # noqa: BLE001
                if not transient(e):
                    raise
                # The connection died, and with its session the lock. Raising here would lose what
                # the locked step did: a trial asked for and then never run, never reaped (its own
                # worker beats for it), which kept a search waiting for ever.


# --- outages ----------------------------------------------------------------------------------


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


# --- heartbeats and the reaper ----------------------------------------------------------------


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
        study: optuna.Study,
        log: Callable[[str], None],
        on_reaped: Callable[[FrozenTrial, bool], None] | None = None,
    ):
        self.study, self.log, self.on_reaped = study, log, on_reaped
        self.backend = _unwrap(study._storage)
        self.trials: set[int] = set()
        self.unbeaten: dict[int, float] = {}  # trial id -> when this keeper first saw it RUNNING with no beat
        self.healthy_since = time.monotonic()
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="nas-keeper", daemon=True)

    def __enter__(self) -> Keeper:
        persist(self.reap, self.log, "reaping stale trials")  # a starting worker fails stale trials first
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

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

    def stale(self) -> list[int]:
        now, seen = time.time(), time.monotonic()
        out = []
        running = self.backend.get_all_trials(self.study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
        self.unbeaten = {k: v for k, v in self.unbeaten.items() if k in {t._trial_id for t in running}}
        for t in running:
            last = t.system_attrs.get("nas:heartbeat")
            if last is None:
                if seen - self.unbeaten.setdefault(t._trial_id, seen) > GRACE_SECONDS:
                    out.append(t._trial_id)
            elif now - last > GRACE_SECONDS:
                out.append(t._trial_id)
        return out

    def reap(self) -> list[int]:
        """Fail the trials whose worker stopped beating, and enqueue a clean retry of each."""
        reaped = []
        for trial_id in self.stale():
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
            retried = retry(self.study, t)
            self.log(
                f"[trial {t.number}] FAILED: its worker stopped (no heartbeat for {GRACE_SECONDS} s); "
                + (
                    "retried as a new trial"
                    if retried
                    else f"not retried: its configuration already lost {MAX_RETRIES} workers"
                )
            )
            if self.on_reaped is not None:
                self.on_reaped(t, retried)
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
                if self._storage.set_trial_state_values(
                    t._trial_id, state=TrialState.RUNNING
                ):  # False: another worker took it
                    return t._trial_id
            except UpdateFinishedTrialError:
                continue
        return None


def finished(trials: list[FrozenTrial]) -> int:
    """Trials that count towards --trials: complete, pruned or failed, except a failed trial
    that was retried (its retry counts instead)."""
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return sum(1 for t in trials if t.state.is_finished() and t.number not in retried)


# --- studies ----------------------------------------------------------------------------------


def load_study(name: str, url: str) -> optuna.Study:
    """An existing nas study, for commands that read (never creates a file or a study)."""
    loc = parse(url)
    study = _load(name, open_storage(loc, create=False), loc)
    if study is None:
        raise SpecError(
            loc.describe(), name, f"no such study; run `nas search --study-name {name}` first, or check --storage"
        )
    if "settings" not in study.user_attrs:
        raise SpecError(loc.describe(), name, "this study was not made by nas search (it stores no settings)")
    return study


def stored_settings(name: str, url: str) -> StudySettings | None:
    """The settings a study stores, or None when there is no such study yet; reads only (a
    storage file that does not exist is not made)."""
    loc = parse(url)
    if loc.path is not None and not loc.path.is_file():
        return None
    if loc.path is not None:
        study = _load(name, open_storage(loc, create=False), loc)
    else:
        with study_lock(loc, name):  # opening a PostgreSQL storage makes its tables: not while another process does
            study = _load(name, open_storage(loc, create=False), loc)
    if study is None or "settings" not in study.user_attrs:
        return None
    return StudySettings.from_dict(study.user_attrs["settings"], f"study {name!r}")


def _load(name: str, storage: optuna.storages.BaseStorage, loc: Location) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    except Exception as e:  # noqa: BLE001
        if transient(e):
            raise StorageUnreachable(
                "--storage", loc.describe(), f"cannot read the study storage ({cause(e)})"
            ) from None
        raise


def open_study(
    name: str, url: str, settings: StudySettings | None = None, given: dict[str, Any] | None = None
) -> optuna.Study:
    """Join a study, or create it when `settings` are given and it does not exist yet.

    Creation is atomic under study_lock: the tables, the study, its seed trials and its stored
    settings appear once however many processes start at the same moment. An existing study
    refuses `given` flags that disagree with the settings it stores."""
    loc = parse(url)
    with study_lock(loc, name):
        storage = open_storage(loc, create=settings is not None)
        study = _load(name, storage, loc)
        if study is None and settings is None:
            raise SpecError(
                loc.describe(),
                name,
                f"no such study; start it with `nas search --study-name {name}`, or check --storage",
            )
        if study is None:
            directions = ["maximize", "minimize"] if settings.objective == "pareto" else ["maximize"]
            study = optuna.create_study(study_name=name, storage=storage, directions=directions)
        if "settings" in study.user_attrs:
            StudySettings.from_dict(study.user_attrs["settings"], f"study {name!r}").reconcile(given or {}, name)
            return study
        if settings is None or any("seed_arch" not in t.user_attrs for t in study.get_trials(deepcopy=False)):
            raise SpecError(
                loc.describe(),
                name,
                "this study was not made by nas search (it stores no settings); use another --study-name",
            )
        # A new study, or one whose creation was cut short: finish it. The settings go last, as
        # the mark that the study is complete.
        present = {t.user_attrs["seed_arch"] for t in study.get_trials(deepcopy=False)}
        study.set_metric_names(
            ["val_accuracy", settings.minimize] if settings.objective == "pareto" else ["val_accuracy"]
        )
        for data, params in zip(settings.seed_archs, settings.seed_configs):
            if data["name"] not in present:
                study.enqueue_trial(params, user_attrs={"seed_arch": data["name"]}, skip_if_exists=False)
        study.set_user_attr("settings", settings.to_dict())
        return study


def next_worker(study: optuna.Study, loc: Location) -> int:
    """A number no other worker of this study has had (on any machine, in any run): the seed
    of its sampler is derived from it, so workers draw different architectures."""
    with study_lock(loc, study.study_name):
        n = study._storage.get_study_system_attrs(study._study_id).get("nas:workers", 0)
        study._storage.set_study_system_attr(study._study_id, "nas:workers", n + 1)
    return n
