"""Storage URLs, race-free study creation, stale-trial reaping and trial counting."""

import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from pgserver import postgres  # noqa: F401 - fixture

from nas.errors import SpecError
from nas.study import keeper as kp
from nas.study import outages
from nas.study import storage as st
from nas.study.settings import StudySettings


@pytest.mark.parametrize(
    "url, kind",
    [
        ("sqlite:///studies/nas.sqlite3", "sqlite"),
        ("sqlite:////tmp/x.db", "sqlite"),
        ("journal:///studies/nas.log", "journal"),
        ("postgresql+psycopg://nas@localhost/nas", "postgresql"),
        ("postgresql://nas@localhost/nas", "postgresql"),
    ],
)
def test_parse_known_urls(url, kind):
    loc = st.parse(url)
    assert loc.kind == kind
    if kind == "postgresql":
        assert loc.sqlalchemy_url.startswith("postgresql+psycopg://")


@pytest.mark.parametrize(
    "url, text",
    [
        ("garbage", "not a storage URL"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://x@y/z", "unknown kind of storage"),
        ("postgresql+pg8000://x@y/z", "through psycopg"),
        ("journal://", "names a file"),
    ],
)
def test_parse_refuses_with_the_fix(url, text):
    with pytest.raises(SpecError, match=text):
        st.parse(url)


def test_postgres_without_its_driver_names_the_extra(monkeypatch):
    monkeypatch.setattr(st.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError, match=r"pip install 'nas\[postgres\]'"):
        st.parse("postgresql+psycopg://nas@localhost/nas")


def test_reading_commands_never_create_a_storage(tmp_path):
    with pytest.raises(SpecError, match="no study storage there yet"):
        st.load_study("mnist", f"sqlite:///{tmp_path}/none/nas.sqlite3")
    assert not (tmp_path / "none").exists()
    with pytest.raises(SpecError, match="is a folder"):
        st.open_storage(st.parse(f"sqlite:///{tmp_path}"), create=True)


def test_unwritable_place_is_one_line():
    with pytest.raises(SpecError, match="choose a writable place"):
        st.open_study("x", "sqlite:////proc/nas/study.db", StudySettings())


_CREATE = """
import sys
from nas.study.storage import open_study
from nas.study.settings import StudySettings
open_study("race", sys.argv[1], StudySettings(max_epochs=1))
"""


def _create_at_once(url: str, n: int = 8) -> list[subprocess.CompletedProcess]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CREATE, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    return [(p.wait(120), p.stderr.read()) for p in procs]


def _created_once(url: str) -> None:
    results = _create_at_once(url)
    assert all(code == 0 for code, _ in results), [err for _, err in results]
    study = optuna.load_study(study_name="race", storage=url)
    builtins = [a["name"] for a in StudySettings(max_epochs=1).seed_archs]
    assert len(builtins) >= 4 and [t.user_attrs["seed_arch"] for t in study.trials] == builtins  # each once
    assert all(t.state == TrialState.WAITING for t in study.trials)
    assert study.user_attrs["settings"]["max_epochs"] == 1


def test_eight_processes_create_one_sqlite_study(tmp_path):
    _created_once(f"sqlite:///{tmp_path}/new.sqlite3")


def test_eight_processes_create_one_postgres_study(postgres):  # noqa: F811
    _created_once(postgres.url)


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql+psycopg://nas:pw@127.0.0.1:5999/nas", "postgresql+psycopg://nas:***@127.0.0.1:5999/nas"),
        (
            "postgresql://u:p%40ss@h/db?sslmode=require&password=x",
            "postgresql://u:***@h/db?sslmode=require&password=***",
        ),
        ("postgresql+psycopg://nas@h/nas", "postgresql+psycopg://nas@h/nas"),
        ("sqlite:///a/b.db", "sqlite:///a/b.db"),
        ("nas:pw@h/db", "nas:***@h/db"),
    ],
)
def test_a_password_is_masked(url, shown):
    assert st.masked(url) == shown


def test_the_password_is_never_printed_or_stored(postgres, mnist_dir, tmp_path):  # noqa: F811
    """A search, a report, `nas best` and a dashboard start against a URL with a password: no
    output, no file they wrote (report, artifacts, checkpoints) and nothing in the database shows it."""
    import json
    import os
    import socket

    import sqlalchemy

    secret = "Pa55-nas-secret"
    url = postgres.url.replace("://nas@", f"://nas:{secret}@")  # the test server trusts any password
    assert secret in url
    env = {**os.environ, "NAS_CHECKPOINT_SECONDS": "0", "OMP_NUM_THREADS": "1"}

    def nas(*args):
        return subprocess.run(
            [sys.executable, "-m", "nas", *map(str, args)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )

    outputs = [
        nas(
            "search",
            "--storage",
            url,
            "--study",
            "pw",
            "--trials",
            2,
            "--max-epochs",
            2,
            "--train-size",
            200,
            "--val-size",
            100,
            "--target-accuracy",
            0.05,
            "--artifacts",
            "art",
            "--data-dir",
            mnist_dir,
            "--device",
            "cpu",
        ),
        nas("report", "--storage", url, "--study", "pw", "--out", "rep"),
        nas("best", "--storage", url, "--study", "pw"),
    ]
    assert [r.returncode for r in outputs] == [0, 0, 0], [r.stdout[-1000:] + r.stderr[-1000:] for r in outputs]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "nas", "dashboard", "--storage", url, "--port", str(port), "--artifacts", "art"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    shown = [dashboard.stdout.readline() for _ in range(3)]
    dashboard.terminate()
    shown.append(dashboard.communicate(timeout=30)[0])
    printed = "".join(r.stdout + r.stderr for r in outputs) + "".join(shown)
    assert "nas:***@127.0.0.1" in printed and "Ctrl-C to stop" in printed
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"report.html", "trials.csv"} and any(
        p.parent.name == "art" for p in written
    )  # an architecture file
    engine = sqlalchemy.create_engine(postgres.url)
    with engine.connect() as conn:
        tables = (
            conn.execute(sqlalchemy.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars().all()
        )
        stored = json.dumps(
            [[list(map(str, row)) for row in conn.execute(sqlalchemy.text(f'SELECT * FROM "{t}"'))] for t in tables]
        )
    engine.dispose()
    assert (
        "study_user_attributes" in tables and "settings" in stored and "Trial 0" in stored
    )  # the settings and the notes were read
    for where, text in [
        ("output", printed),
        ("database", stored),
        *((str(p), p.read_bytes().decode("latin-1")) for p in written),
    ]:
        assert secret not in text, f"the password is in the {where}"


def test_a_lock_whose_server_restarted_meanwhile_is_let_go_quietly(postgres):  # noqa: F811
    """The session, and with it the advisory lock, died with the server: what was done under the
    lock (a trial asked for) must not be lost to an error on unlocking."""
    loc = st.parse(postgres.url)
    with st.study_lock(loc, "restart-in-lock"):
        postgres.restart()
    with st.study_lock(loc, "restart-in-lock"):  # and it can be taken again
        pass


def test_resume_refuses_disagreeing_settings(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    st.open_study("s", url, StudySettings(max_params=20_000))
    st.open_study("s", url, StudySettings(max_params=20_000), {"max_params": 20_000})  # same value: fine
    with pytest.raises(SpecError) as err:
        st.open_study("s", url, StudySettings(max_params=5000), {"max_params": 5000})
    assert (
        "--max-params" in str(err.value)
        and "20000" in str(err.value)
        and "5000" in str(err.value)
        and "--study-name" in str(err.value)
    )


def _running_trial(url: str, monkeypatch) -> tuple[optuna.Study, kp.Keeper, int]:
    monkeypatch.setattr(kp, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(kp, "GRACE_SECONDS", 1)
    study = st.open_study("k", url, StudySettings(levels=()))
    trial = study.ask()  # the enqueued seed trial
    trial.set_user_attr("curve", [0.5])
    keeper = kp.Keeper(study, lambda msg: None)
    keeper.beat(trial._trial_id)
    return study, keeper, trial.number


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_stale_trials_are_failed_and_retried_clean(tmp_path, monkeypatch, kind):
    url = f"sqlite:///{tmp_path}/k.db" if kind == "sqlite" else f"journal:///{tmp_path}/k.log"
    study, keeper, number = _running_trial(url, monkeypatch)
    assert keeper.reap() == []  # it beat just now
    time.sleep(2.2)
    assert len(keeper.reap()) == 1 and keeper.reap() == []  # reaped once, however often asked
    trials = study.get_trials()
    dead, again = trials[number], trials[-1]
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("stale")
    assert again.state == TrialState.WAITING and again.user_attrs == {
        "seed_arch": "seed_9274",
        "retry_of": number,
        "retries": 1,
    }
    assert kp.finished(trials) == 0  # the retry will count instead


def test_a_trial_that_never_beat_is_reaped_after_a_grace_period_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(kp, "GRACE_SECONDS", 1)
    study = st.open_study("u", f"sqlite:///{tmp_path}/u.db", StudySettings(levels=()))
    study.ask()  # its worker died before its first beat
    keeper = kp.Keeper(study, lambda msg: None)
    assert keeper.reap() == []  # first seen now: no clock of another machine is trusted for it
    time.sleep(1.2)
    assert len(keeper.reap()) == 1


def test_a_trial_is_retried_at_most_twice(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/r.db")
    dead = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"retries": 2})
    assert not kp.retry(study, dead) and study.trials == []


def test_an_interrupt_does_not_use_up_the_retries(tmp_path):
    """Three Ctrl-Cs during the seed trial once dropped the seed for good: an interrupt is no lost worker."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/r.db")
    interrupted = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"retries": 2, "seed_arch": "seed_9274"})
    assert kp.retry(study, interrupted, lost_worker=False)
    assert study.trials[0].user_attrs == {"retries": 2, "retry_of": interrupted.number, "seed_arch": "seed_9274"}


def test_finished_counts_complete_pruned_and_unretried_failures():
    make = optuna.trial.create_trial
    trials = [
        make(state=TrialState.COMPLETE, value=1.0),
        make(state=TrialState.PRUNED),
        make(state=TrialState.FAIL),
        make(state=TrialState.FAIL),
        make(state=TrialState.RUNNING),
        make(state=TrialState.WAITING),
    ]
    for n, t in enumerate(trials):
        t.number = n
    trials[5].user_attrs["retry_of"] = 3
    assert kp.finished(trials) == 3


def test_persist_waits_out_an_outage(monkeypatch):
    monkeypatch.setattr(outages, "STORAGE_PATIENCE", 5.0)
    calls, said = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise optuna.exceptions.StorageInternalError("server closed the connection")
        return "stored"

    assert outages.persist(flaky, said.append, "storing a result") == "stored" and len(calls) == 3 and len(said) == 1
    with pytest.raises(ValueError):
        outages.persist(lambda: (_ for _ in ()).throw(ValueError("a bug, not an outage")), said.append, "x")
