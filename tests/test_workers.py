"""Many worker processes on one study, as on many machines: a real PostgreSQL server and a
journal file; exact trial counts, no architecture trained twice, a killed worker's trial
retried, and a database restart survived."""

import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState
from pgserver import postgres  # noqa: F401 - fixture

from nas.errors import SpecError
from nas.study import storage as st
from nas.study.storage import finished

TINY = ["--train-size", "400", "--val-size", "200", "--target-accuracy", "0.5"]


def nas(*args, mnist_dir):
    """A `nas` process with one-second heartbeats (a killed worker's trial is failed after 3 s)."""
    env = {**os.environ, "NAS_HEARTBEAT_SECONDS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nas", *map(str, args), "--data-dir", str(mnist_dir), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def wait_for(predicate, seconds=120, what="condition"):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def study_of(url, name):
    """The study, read as nas reads it (a journal URL is not an SQLAlchemy one), or None."""
    try:
        return st.load_study(name, url)
    except SpecError:
        return None


def start(url, name, n_trials, extra_workers, mnist_dir, epochs=1):
    """`nas search` creates the study, then `nas worker` processes join it (as other machines would)."""
    first = nas(
        "search",
        "--study-name",
        name,
        "--storage",
        url,
        "--trials",
        n_trials,
        "--max-epochs",
        epochs,
        *TINY,
        mnist_dir=mnist_dir,
    )
    wait_for(lambda: study_of(url, name), what="the study")
    return [first] + [
        nas("worker", "--study-name", name, "--storage", url, mnist_dir=mnist_dir) for _ in range(extra_workers)
    ]


def finish(procs, timeout=240):
    out = []
    for p in procs:
        text, _ = p.communicate(timeout=timeout)
        out.append((p.returncode, text))
    return out


def check_exact(url, name, n_trials):
    trials = study_of(url, name).trials
    assert finished(trials) == n_trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    # A result is a finished trial that trained; a trial failed midway (its worker killed, or the
    # storage gone) is redone by its retry, which is recovery, not a repeat.
    trained = [
        t.user_attrs["config_key"]
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        and "curve" in t.user_attrs
        and "duplicate_of" not in t.user_attrs
    ]
    assert len(trained) == len(set(trained)), "an architecture was trained twice"
    return trials


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_four_workers_finish_exactly_the_trials_asked(kind, postgres, mnist_dir, tmp_path):  # noqa: F811
    url = postgres.url if kind == "postgresql" else f"journal:///{tmp_path}/study.log"
    # Three epochs a trial: at one (a second a trial) the first process once finished all 12 on a
    # loaded machine before the workers had imported torch, and nothing was left to share.
    procs = start(url, f"four-{kind}", 12, 3, mnist_dir, epochs=3)
    results = finish(procs)
    assert all(code == 0 for code, _ in results), results
    # No worker died here, so no trial may have been failed as stale: a live worker's trial reaped
    # because its heartbeat came late (it once waited seconds for the journal's lock on a busy
    # machine) is retried with the same parameters, and its result may be kept beside the retry's.
    reaped = [line for _, text in results for line in text.splitlines() if "stopped (no heartbeat" in line]
    assert not reaped, reaped
    trials = check_exact(url, f"four-{kind}", 12)
    workers = {t.user_attrs.get("worker") for t in trials if t.state.is_finished()}
    assert len(workers) >= 2, "the work was not shared"
    drawn = [tuple(sorted(t.params.items())) for t in trials if "seed_arch" not in t.user_attrs]
    assert len(drawn) == len(set(drawn)), "two workers drew the same architecture"


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_a_killed_workers_trial_is_retried(kind, postgres, mnist_dir, tmp_path):  # noqa: F811
    url = postgres.url if kind == "postgresql" else f"journal:///{tmp_path}/study.log"
    name = f"kill-{kind}"
    procs = start(url, name, 6, 2, mnist_dir, epochs=3)
    victims = {f":{p.pid}": p for p in procs[1:]}

    def running_on_a_victim():
        for t in study_of(url, name).get_trials(states=(TrialState.RUNNING,)):
            for tag, p in victims.items():
                if t.user_attrs.get("worker", "").endswith(tag):
                    return t.number, p
        return None

    number, victim = wait_for(running_on_a_victim, what="a trial running on a worker")
    victim.send_signal(signal.SIGKILL)
    results = finish([p for p in procs if p is not victim])
    assert all(code == 0 for code, _ in results), results
    trials = check_exact(url, name, 6)
    dead = trials[number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"].startswith("stale")
    retry = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert len(retry) == 1 and retry[0].state.is_finished() and retry[0].state != TrialState.FAIL
    assert dead.params.items() <= retry[0].params.items()  # what it had drawn before it died, the retry replays
    assert any("stopped (no heartbeat" in text for _, text in results)


def test_workers_survive_a_database_restart(postgres, mnist_dir):  # noqa: F811
    name = "restart"
    procs = start(postgres.url, name, 10, 1, mnist_dir, epochs=2)
    wait_for(lambda: finished(study_of(postgres.url, name).trials) >= 3, what="three finished trials")
    postgres.restart(down_seconds=2.0)
    results = finish(procs)
    assert all(code == 0 for code, _ in results), results
    trials = check_exact(postgres.url, name, 10)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3
