"""Where studies live, checked before anything is written: storage URLs, the storages behind
them, one lock per study, and race-free study creation. Torch-free.

Three kinds of storage work, as Optuna knows them:
- `sqlite:///FILE`: one machine (any number of worker processes);
- `postgresql+psycopg://USER@HOST/DB`: many machines (`pip install 'nas[postgres]'`);
- `journal:///FILE`: a journal file on a file system every machine shares (NFS).

A fault that may pass (a restarting server) is told apart and waited out in nas.study.outages;
the heartbeats that find trials whose worker died, and their retries, are nas.study.keeper's.
Both are reached through this module too (`st.persist`, `st.Keeper`), as the search uses them.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import socket
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna

from nas.errors import SpecError

# The search reaches the keeper and the outage handling through this module (st.Keeper, st.persist).
from nas.study.keeper import GRACE_SECONDS as GRACE_SECONDS
from nas.study.keeper import HEARTBEAT_SECONDS as HEARTBEAT_SECONDS
from nas.study.keeper import MAX_RETRIES as MAX_RETRIES
from nas.study.keeper import Keeper as Keeper
from nas.study.keeper import RetriesFirst as RetriesFirst
from nas.study.keeper import finished as finished
from nas.study.keeper import retry as retry
from nas.study.levels import level_name
from nas.study.outages import StorageUnreachable, cause, transient
from nas.study.outages import persist as persist
from nas.study.settings import StudySettings

# Optuna's artifacts and constraints: stable enough for us.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
_HINT = "give sqlite:///FILE, postgresql+psycopg://USER@HOST/DB or journal:///FILE"


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
                "an in-memory SQLite database lives and dies with one process; "
                "give a file: sqlite:///studies/nas.sqlite3",
            )
        if not rest.startswith("/"):
            raise SpecError(
                "--storage",
                url,
                "a SQLite URL has three slashes before a relative path, four before an absolute one: "
                "sqlite:///studies/nas.sqlite3",
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

            return JournalStorage(JournalFileBackend(str(loc.path), lock_obj=JournalLock(str(loc.path))))
        kwargs: dict[str, Any] = (
            {"connect_args": {"timeout": 120}}
            if loc.kind == "sqlite"
            else {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
        )
        assert loc.sqlalchemy_url is not None  # parse gives one to every kind but journal
        return optuna.storages.RDBStorage(loc.sqlalchemy_url, engine_kwargs=kwargs)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy, drivers and the file system fail in many types
        if isinstance(e, (OSError, ImportError)) or transient(e) or type(e).__module__.split(".")[0] == "alembic":
            raise StorageUnreachable(
                "--storage",
                loc.describe(),
                f"cannot open the study storage ({cause(e)}); check the URL, the server and the permissions",
            ) from None
        raise


class JournalLock(optuna.storages.journal.JournalFileSymlinkLock):
    """The lock around each append to a journal file. Optuna's own, a symlink tried again after
    sleeps that double up to a second, is unfair: a process appending a burst of records (a new
    trial's parameters, its attributes, a note) took it back within a millisecond each time, while
    the other workers' heartbeats, one record each, missed every try for seconds on a busy
    machine, until their live trials were failed as stale. So nas's processes first wait for a
    lock the kernel hands on as soon as it is released (flock, as study_lock does, on NFS too),
    then take Optuna's symlink, which only another program (optuna-dashboard, a script) can hold
    then: the file stays theirs alone."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._queue = f"{path}.nas-journal-lock"
        self._held: Any = None

    def acquire(self) -> bool:
        f = open(self._queue, "a+")  # a file of its own: flock excludes every other, this process's threads' too
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            super().acquire()
        except BaseException:
            f.close()  # which releases the flock
            raise
        self._held = f
        return True

    def release(self) -> None:
        f, self._held = self._held, None
        try:
            super().release()
        finally:
            if f is not None:
                f.close()


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

    url = loc.sqlalchemy_url
    assert url is not None  # a storage without a file is PostgreSQL
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = sqlalchemy.create_engine(
            url, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 10}
        )
    key = zlib.crc32(f"nas:{study}".encode())
    try:
        conn = engine.connect()
    except Exception as e:  # noqa: BLE001 - the first contact with the server: a command's start says so in one line
        if transient(e):
            raise StorageUnreachable(
                "--storage",
                loc.describe(),
                f"cannot reach the database ({cause(e)}); check the URL, that the server runs and accepts "
                "this machine, and the password (~/.pgpass or PGPASSWORD)",
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
    _not_a_level(study, loc)
    return StudySettings.from_dict(study.user_attrs["settings"], f"study {name!r}")


def _not_a_level(study: optuna.Study, loc: Location) -> None:
    """A lower level's study (nas.study.levels) is searched through its top study only."""
    if "top" in study.user_attrs:
        raise SpecError(
            loc.describe(),
            study.study_name,
            f"is a lower level of study {study.user_attrs['top']!r}; search that study (nas best and "
            "nas report read this one too)",
        )


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
        if study is None:
            if settings is None:
                raise SpecError(
                    loc.describe(),
                    name,
                    f"no such study; start it with `nas search --study-name {name}`, or check --storage",
                )
            study = optuna.create_study(study_name=name, storage=storage, directions=directions(settings))
        _not_a_level(study, loc)
        if "settings" in study.user_attrs:
            StudySettings.from_dict(study.user_attrs["settings"], f"study {name!r}").reconcile(given or {}, name)
            return study
        if settings is None or any("seed_arch" not in t.user_attrs for t in study.get_trials(deepcopy=False)):
            raise SpecError(
                loc.describe(),
                name,
                "this study was not made by nas search (it stores no settings); use another --study-name",
            )
        # A new study, or one whose creation was cut short: finish it, its lower levels first
        # (nas.study.levels; the built-ins go to the lowest). The top's settings go last, as the
        # mark that the whole study is complete.
        ladder = settings.ladder
        for level, (epochs, images) in enumerate(ladder[:-1]):
            lower = _load(level_name(name, epochs, images), storage, loc) or optuna.create_study(
                study_name=level_name(name, epochs, images), storage=storage, directions=directions(settings)
            )
            if "settings" not in lower.user_attrs:
                _begin(lower, settings.at_level(level), seeds=level == 0)
                lower.set_user_attr("level", level)
                lower.set_user_attr("top", name)
                lower.set_user_attr("settings", settings.at_level(level).to_dict())
        _begin(study, settings, seeds=len(ladder) == 1)
        study.set_user_attr("settings", settings.to_dict())
        return study


def directions(settings: StudySettings) -> list[Literal["maximize", "minimize"]]:
    return ["maximize", "minimize"] if settings.objective == "pareto" else ["maximize"]


def _begin(study: optuna.Study, settings: StudySettings, seeds: bool) -> None:
    """Name a new study's metrics and enqueue its built-in networks (when `seeds`), once each."""
    present = {t.user_attrs["seed_arch"] for t in study.get_trials(deepcopy=False)}
    assert settings.seed_archs is not None  # filled in on construction
    study.set_metric_names(["val_accuracy", settings.minimize] if settings.objective == "pareto" else ["val_accuracy"])
    for data, params in zip(settings.seed_archs, settings.seed_configs) if seeds else ():
        if data["name"] not in present:
            study.enqueue_trial(params, user_attrs={"seed_arch": data["name"]}, skip_if_exists=False)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def next_worker(study: optuna.Study, loc: Location) -> int:
    """A number no other worker of this study has had (on any machine, in any run): the seed
    of its sampler is derived from it, so workers draw different architectures."""
    with study_lock(loc, study.study_name):
        n = study._storage.get_study_system_attrs(study._study_id).get("nas:workers", 0)
        study._storage.set_study_system_attr(study._study_id, "nas:workers", n + 1)
    return n
