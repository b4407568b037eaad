"""End-to-end searches on a few hundred real MNIST images, one epoch per trial."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pandas as pd
import pytest
from conftest import ROOT
from optuna.trial import TrialState
from typer.testing import CliRunner

import nas.search.objective as objective_mod
import nas.search.worker as search_mod
from nas.arch.spec import arch_to_dict, load_arch
from nas.cli.app import app
from nas.search.worker import Run, search
from nas.study import storage as st
from nas.study.analytics import ConvergenceRule
from nas.study.settings import StudySettings

SPACE = ROOT / "search_spaces" / "mnist_fcn.toml"
SEED_9274 = arch_to_dict(load_arch("seed_9274"))
BUILTINS = [a["name"] for a in StudySettings().seed_archs]  # the default study's: seed, records, nas's finds
SMALL = ["--max-epochs", "1", "--train-size", "600", "--val-size", "300", "--target-accuracy", "0.5"]


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path}/s.db"


def run_cli(*args):
    result = CliRunner().invoke(app, list(map(str, args)))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def tiny(name, store, mnist_dir, n_trials, **kw):
    """A search of one-epoch trials on 600 images, run in this process."""
    settings = StudySettings(**{**dict(max_epochs=1, train_size=600, val_size=300, target_accuracy=0.5), **kw})
    return search(name, store, settings, n_trials, None, Run(device="cpu", data_dir=str(mnist_dir)))


def load(store, name="mnist"):
    return optuna.load_study(study_name=name, storage=store)


def test_tiny_search_end_to_end_seed_first(store, mnist_dir):
    out = run_cli("search", "--trials", 3, "--storage", store, "--data-dir", mnist_dir, *SMALL)
    trials = load(store).trials
    assert {"seed_9274", "rec_3762", "rec_7918", "rec_13562"} <= set(BUILTINS)  # every built-in within 20,000
    assert [t.user_attrs["seed_arch"] for t in trials] == BUILTINS  # 3 run; the other built-ins wait
    seed, params = trials[0], [t.user_attrs["params"] for t in trials[1:3]]
    assert seed.user_attrs["params"] == 9274 and params == sorted(params) and params[0] == 3762  # then smallest first
    assert seed.state == TrialState.COMPLETE and len(seed.user_attrs["curve"]) == 1
    for key in ("receptive_field", "arch", "train_config", "device", "train_seconds", "converged"):
        assert key in seed.user_attrs
    assert "[trial 0]" in out and "Pareto front" in out and "best:" in out
    assert "the first epoch took" in out and "so far)" in out
    # what the dashboard shows: each trial's note, the study's note, the architecture files
    from optuna_dashboard._note import get_note_from_system_attrs

    study = load(store)
    attrs = study._storage.get_study_system_attrs(study._study_id)
    assert (
        "complete" in get_note_from_system_attrs(attrs, seed._trial_id)["body"]
        and "Total params: 9,274" in get_note_from_system_attrs(attrs, seed._trial_id)["body"]
    )
    assert "Pareto front" in get_note_from_system_attrs(attrs, None)["body"]
    artifacts = [a for a in optuna.artifacts.get_all_artifact_meta(seed, storage=study._storage)]
    assert [a.filename for a in artifacts] == ["trial_0.toml"]


def test_over_budget_is_pruned_without_training(store, mnist_dir, monkeypatch):
    trained = []
    real_train = objective_mod.train
    monkeypatch.setattr(objective_mod, "train", lambda arch, *a, **k: trained.append(arch) or real_train(arch, *a, **k))
    tiny(
        "b", store, mnist_dir, 4, max_params=5000, seed_archs=(SEED_9274,)
    )  # asked for, so enqueued though over the budget
    trials = load(store, "b").trials
    seed = trials[0]
    assert seed.state == TrialState.PRUNED and seed.user_attrs["prune_reason"] == "budget: parameters 9,274 > 5,000"
    assert seed.user_attrs["params"] == 9274 and "curve" not in seed.user_attrs
    assert seed.constraints == pytest.approx({"valid": 0.0, "params": 9274 / 5000 - 1})
    from nas.arch.spec import param_count

    assert all(param_count(a) <= 5000 for a in trained)
    assert len(trained) == sum(1 for t in trials if "curve" in t.user_attrs)


def test_every_budget_prunes_with_its_own_reason(store, mnist_dir):
    from nas.study.analytics import over_budget

    study = tiny("m", store, mnist_dir, 8, max_macs=600_000, max_activation_kb=5.0, seed_archs=(SEED_9274,))
    seed = study.trials[0]
    assert seed.state == TrialState.PRUNED and seed.user_attrs["over_budget"] == ["macs", "activation"]
    assert set(seed.constraints) == {"valid", "params", "macs", "activation"}
    assert seed.constraints["macs"] == pytest.approx(1_217_160 / 600_000 - 1)
    trained = [t for t in study.trials if "curve" in t.user_attrs]
    assert all(t.user_attrs["macs"] <= 600_000 and t.user_attrs["activation_int8_bytes"] <= 5000 for t in trained)
    assert over_budget(study)["macs"] >= 1 and over_budget(study)["activation"] >= 1


def test_diverging_trials_fail_and_the_study_goes_on(store, mnist_dir, tmp_path):
    space = tmp_path / "hot.toml"
    space.write_text(
        SPACE.read_text()
        .replace("lr_sgd = [0.02, 0.2]", "lr_sgd = [1e10, 1e12]")
        .replace('optimizer = ["sgd", "adamw"]', 'optimizer = ["sgd"]')
    )
    out = run_cli(
        "search", "--trials", 3, "--space", space, "--no-seed-arch", "--storage", store, "--data-dir", mnist_dir, *SMALL
    )
    trials = load(store).trials
    assert len(trials) == 3
    trained = [t for t in trials if t.state != TrialState.PRUNED]
    assert trained and all(t.state == TrialState.FAIL and "loss became" in t.user_attrs["fail_reason"] for t in trained)
    assert "FAILED" in out


def test_trials_counts_the_study_not_the_run(store, mnist_dir):
    run_cli("search", "--trials", 2, "--storage", store, "--data-dir", mnist_dir, *SMALL)
    run_cli(
        "search", "--trials", 2, "--storage", store, "--data-dir", mnist_dir, *SMALL
    )  # already has 2: nothing to do
    assert sum(t.state.is_finished() for t in load(store).trials) == 2
    run_cli("search", "--trials", 4, "--storage", store, "--data-dir", mnist_dir, *SMALL)
    trials = load(store).trials
    assert sum(t.state.is_finished() for t in trials) == 4 and len(BUILTINS) >= 4
    assert [t.user_attrs["seed_arch"] for t in trials] == BUILTINS  # enqueued once, by the first run


def test_a_trial_failed_as_stale_under_its_worker_does_not_stop_it(store):
    """A worker cut off from the storage for longer than the grace finds its trial failed (and
    retried) by another: it says so and goes on to the next trial instead of crashing."""
    study = optuna.create_study(storage=store)
    trial = study.ask()
    study.tell(trial.number, state=TrialState.FAIL)  # what another worker's reaper did
    worker, said = search_mod.Worker.__new__(search_mod.Worker), []
    worker.log = said.append
    objective = lambda t: t.set_user_attr("curve", [0.5])  # noqa: E731 - its next write
    objective.log = said.append
    worker.run_trial(trial, search_mod.Level(0, study, objective))
    assert "failed as stale by another worker" in said[-1] and study.trials[0].user_attrs == {}


def test_interrupted_trial_is_rerun_on_resume(store, mnist_dir, monkeypatch):
    calls = []
    real_train = objective_mod.train

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*a, **k)

    monkeypatch.setattr(objective_mod, "train", flaky)
    with pytest.raises(KeyboardInterrupt):
        tiny("i", store, mnist_dir, 5)
    study = load(store, "i")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL][0]
    assert len(done) >= 1
    tiny("i", store, mnist_dir, 5)
    rerun = next(t for t in load(store, "i").trials if t.user_attrs.get("retry_of") == interrupted.number)
    assert rerun.user_attrs["retry_of"] == interrupted.number and rerun.params == interrupted.params
    assert rerun.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_a_ctrl_c_in_the_seed_trial_never_loses_it(store, mnist_dir, monkeypatch):
    """The newcomer's sequence: `--trials 3`, Ctrl-C in the seed trial's first epoch, the same
    command again. The seed's retry runs first (ahead of the built-ins still queued), so the seed
    is trained once and counted once, the goal of 3 is met, the summary counts no failure, and
    the built-ins the goal left untrained are named."""
    from nas.study import analytics

    real_train = objective_mod.train

    def ctrl_c_in_the_first_epoch(*a, on_progress=None, **k):
        def stop(done, total):
            raise KeyboardInterrupt

        return real_train(*a, on_progress=stop, **k)

    monkeypatch.setattr(objective_mod, "train", ctrl_c_in_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        tiny("n", store, mnist_dir, 3)
    monkeypatch.setattr(objective_mod, "train", real_train)
    tiny("n", store, mnist_dir, 3)
    study = load(store, "n")
    seeds = [t for t in study.trials if t.user_attrs.get("seed_arch") == "seed_9274"]
    assert [t.state for t in seeds] == [TrialState.FAIL, TrialState.COMPLETE] and seeds[1].user_attrs[
        "retry_of"
    ] == seeds[0].number
    assert st.finished(study.trials) == 3
    text = analytics.summary(study)
    assert "0 failed (1 more stopped and run again)" in text
    waiting = [t.user_attrs["seed_arch"] for t in study.trials if t.state == TrialState.WAITING]
    assert waiting and f"built-ins not trained yet (the --trials goal came first): {', '.join(waiting)}" in text


def test_a_restarting_worker_requeues_its_trials_uncounted_and_execs_nas_worker(store, mnist_dir, monkeypatch):
    """Two trials at a time in one worker process; the third training raises RestartWorker (as
    nas.train.engine does after repeated failed captures) once another trial is in flight: that one stops
    at its next epoch, both are failed and enqueued again without using up a retry, finished trials
    stay, and the process is re-executed as `nas worker` on the same study (recorded, not run)."""
    import threading

    from nas.search.placement import Slot
    from nas.study import storage as st
    from nas.train.engine import RestartWorker

    st.open_study("r", store, StudySettings(max_epochs=3, train_size=600, val_size=300, target_accuracy=0.5))
    real_train, calls, running, lock = objective_mod.train, [], set(), threading.Lock()

    def poisoned(*a, **k):
        with lock:
            n = len(calls)
            calls.append(n)
        if n == 2:
            for _ in range(600):  # another trial is training: it will have to stop too
                if running:
                    break
                time.sleep(0.05)
            raise RestartWorker(
                "3 CUDA graph captures failed in this process (the last: RuntimeError: test); the worker restarts"
            )
        running.add(n)
        try:
            return real_train(*a, **k)
        finally:
            running.discard(n)

    execs = []
    monkeypatch.setattr(objective_mod, "train", poisoned)
    monkeypatch.setattr(search_mod, "EXEC", lambda path, argv: execs.append(argv))
    search_mod.work("r", store, Run(device="cpu", data_dir=str(mnist_dir)), 30, None, Slot(0, None, 2, 1))
    trials = load(store, "r").trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped and all(t.user_attrs["fail_reason"].startswith("its worker restarted: ") for t in stopped)
    assert any("CUDA graph captures failed" in t.user_attrs["fail_reason"] for t in stopped)
    copies = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    assert sorted(copies) == [t.number for t in stopped] and all(c.state == TrialState.WAITING for c in copies.values())
    # Whatever else waits is a built-in the two threads had not reached when the worker restarted
    # (how many depends on how fast the others trained: under load, more of them)
    assert all(
        "seed_arch" in t.user_attrs for t in trials if t.state == TrialState.WAITING and "retry_of" not in t.user_attrs
    )
    assert all(
        c.user_attrs["retries"] == 0 and c.system_attrs["fixed_params"] == trials[n].params for n, c in copies.items()
    )  # not counted as retries
    assert [t.state for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]  # finished trials are kept
    assert len(execs) == 1 and execs[0][0] == sys.executable
    assert execs[0][1:] == [
        "-m",
        "nas",
        "worker",
        "--study-name",
        "r",
        "--storage",
        store,
        "--device",
        "cpu",
        "--workers",
        "1",
        "--data-dir",
        str(mnist_dir),
        "--trials",
        "30",
    ]


def test_an_interrupted_trial_goes_on_from_its_checkpoint_bit_identical(store, mnist_dir, monkeypatch, tmp_path):
    """Ctrl-C three times during the seed trial, each time just after it wrote a checkpoint: every
    re-run takes the trial up where the last one stopped, the interrupts never use up the retries
    meant for dead workers, and the seed ends with exactly the curve of a run never stopped. The
    checkpoint is gone once the trial is."""
    from nas.search.checkpoints import Checkpoints

    monkeypatch.setattr(objective_mod, "CHECKPOINT_EVERY", 0.0)  # a checkpoint after every epoch but the last
    kw = dict(
        max_epochs=4, pruning="off", seed_archs=StudySettings().seed_archs[:1]
    )  # seed_9274 alone, no other built-in waiting
    whole = tiny("whole", store, mnist_dir, 1, **kw).trials[0]
    real_train = objective_mod.train

    def stopped_after_a_checkpoint(*a, on_checkpoint, **k):
        def then_ctrl_c(ckpt):
            on_checkpoint(ckpt)
            raise KeyboardInterrupt

        return real_train(*a, on_checkpoint=then_ctrl_c, **k)

    checkpoints = Checkpoints.of(
        store, "cut", tmp_path / "artifacts"
    )  # the default artifact folder: next to the SQLite file
    monkeypatch.setattr(objective_mod, "train", stopped_after_a_checkpoint)
    for run in range(3):
        with pytest.raises(KeyboardInterrupt):
            tiny("cut", store, mnist_dir, 1, **kw)
        cut = load(store, "cut").trials
        assert [t.state for t in cut] == [TrialState.FAIL] * (run + 1) + [TrialState.WAITING]
        assert cut[-1].user_attrs == {"seed_arch": "seed_9274", "retry_of": run, "retries": 0}
        assert checkpoints.path(cut[run].user_attrs["config_key"]).is_file()
        assert cut[run].user_attrs.get("resumed", {}).get("epoch") == (run or None)
    monkeypatch.setattr(objective_mod, "train", real_train)
    tiny("cut", store, mnist_dir, 1, **kw)
    seed = load(store, "cut").trials[-1]
    assert seed.state == TrialState.COMPLETE and seed.user_attrs["resumed"] == {"epoch": 3, "from_trial": 2}
    assert seed.user_attrs["curve"] == whole.user_attrs["curve"] and seed.values == whole.values  # bit for bit
    assert seed.user_attrs["config_key"] == whole.user_attrs["config_key"]
    assert not checkpoints.path(seed.user_attrs["config_key"]).exists() and not list(checkpoints.folder.glob("*.tmp"))


def test_two_workers_share_one_storage(store, mnist_dir):
    run_cli(
        "search",
        "--trials",
        4,
        "--workers",
        2,
        "--max-params",
        5000,
        "--storage",
        store,
        "--data-dir",
        mnist_dir,
        *SMALL,
    )
    trials = load(store).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert sum("seed_arch" in t.user_attrs for t in trials) == 1  # rec_3762, the one built-in within 5,000


def test_convergence_rule():
    rule = ConvergenceRule(target=0.99, max_epochs=20, slack=0.06, start=0.5)
    assert rule.first_epoch() == 10 and not rule.should_prune(9, 0.10)  # the noisy first half is never judged
    assert rule.should_prune(10, 0.95) and not rule.should_prune(10, 0.961)
    assert rule.needed(10) == pytest.approx(0.96)
    assert not rule.should_prune(20, 0.5)  # the last epoch completes, recorded as not converged


def test_convergence_pruning_in_a_search(store, mnist_dir):
    tiny("c", store, mnist_dir, 1, max_epochs=4, target_accuracy=0.999, train_size=300)
    seed = load(store, "c").trials[0]
    assert seed.state == TrialState.PRUNED and seed.user_attrs["prune_reason"] == "convergence"
    assert len(seed.user_attrs["curve"]) == 3 and seed.user_attrs["would_prune_epoch"] == 3


def test_single_objective_mode(store, mnist_dir):
    run_cli("search", "--trials", 2, "--objective", "accuracy", "--storage", store, "--data-dir", mnist_dir, *SMALL)
    study = load(store)
    assert len(study.directions) == 1 and study.trials[0].intermediate_values


def test_report_best_and_dashboard(store, mnist_dir, tmp_path):
    run_cli("search", "--trials", 3, "--storage", store, "--data-dir", mnist_dir, *SMALL[:-1], "0.05")
    out = run_cli("report", "--storage", store, "--out", tmp_path / "rep")
    df = pd.read_csv(tmp_path / "rep" / "trials.csv")
    df = df[df["state"] != "waiting"]  # the fourth built-in waits for a longer search
    assert len(df) == 3 and df["params"].iloc[0] == 9274 and df["seed_arch"].iloc[0] == "seed_9274"
    page = (tmp_path / "rep" / "report.html").read_text()
    assert (
        "Validation accuracy vs parameters" in page
        and "Learning curves, coloured by outcome" in page
        and "plotly" in page
    )
    assert "wrote" in out
    best = run_cli("best", "--storage", store)
    assert "Total params" in best

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas", "dashboard", "--storage", store, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("dashboard did not answer")
        assert [s["study_name"] for s in body["study_summaries"]] == ["mnist"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_bad_input_is_one_line_exit_2(tmp_path):
    for args, text in (
        (["summary", str(tmp_path / "none.toml")], "no such file"),
        (["search", "--space", str(tmp_path / "none.toml")], "no such file"),
        (["best", "--storage", f"sqlite:///{tmp_path}/x.db", "--study", "nope"], "no study storage there"),
    ):
        r = subprocess.run([sys.executable, "-m", "nas", *args], capture_output=True, text=True)
        assert r.returncode == 2 and text in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_replaying_a_rule_counts_savings_and_wrong_prunes():
    from nas.study.analytics import replay_rule

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("settings", StudySettings(max_epochs=4, target_accuracy=0.98).to_dict())
    curves = {0: [0.90, 0.88, 0.981, 0.985], 1: [0.90, 0.91, 0.93, 0.95], 2: [0.97, 0.975, 0.979, 0.981]}
    for curve in curves.values():
        study.add_trial(
            optuna.trial.create_trial(
                values=[curve[-1], 1000], user_attrs={"curve": curve, "epoch_seconds": [1.0] * 4, "params": 1000}
            )
        )
    early = replay_rule(study, ConvergenceRule(0.98, 4, slack=0.06, start=0.25))
    assert early == {
        "trials": 3,
        "pruned": 2,
        "seconds": 12.0,
        "saved": 6.0,
        "wrongly_pruned": [0],
    }  # both < 0.935 at epoch 1
    late = replay_rule(study, ConvergenceRule(0.98, 4, slack=0.06, start=0.75))
    assert late["pruned"] == 1 and late["saved"] == 1.0 and late["wrongly_pruned"] == []


def test_the_estimate_hints_when_a_search_takes_hours():
    from types import SimpleNamespace

    from nas.search.objective import Objective

    fake = SimpleNamespace(device="cpu", goal=50, left=None, level=None)
    slow, quick = Objective.estimate(fake, 60.0, 20), Objective.estimate(fake, 0.3, 20)
    assert "20m00s" in slow and "--train-size" in slow and "--device cuda" in slow
    assert "--train-size" not in quick and "0m06s" in quick
    joining = Objective.estimate(
        SimpleNamespace(device="cpu", goal=20, left=5, level=None), 3.0, 20
    )  # a worker joining a study 15 trials in
    assert "the 5 trials left at most 5m00s" in joining
    # in a ladder the trial's own time only: the search is estimated whole, promotions included
    screening = Objective.estimate(SimpleNamespace(device="cpu", goal=20, left=5, level=0), 3.0, 4)
    assert "a 4-epoch trial takes about 0m12s" in screening and "left" not in screening


def test_the_pareto_rule_stops_a_live_trial_its_cheaper_peers_beat_unless_it_is_built_in():
    from types import SimpleNamespace

    from nas.arch.budgets import resource
    from nas.search.objective import Objective
    from nas.study.analytics import ParetoRule

    study = optuna.create_study(directions=["maximize", "minimize"])
    settings = StudySettings(max_epochs=4, stop_rungs=(0.5,), stop_eta=3.0)
    study.set_user_attr("settings", settings.to_dict())
    for _ in range(6):
        study.add_trial(
            optuna.trial.create_trial(
                values=[0.97, 1000], user_attrs={"curve": [0.9, 0.96, 0.97, 0.97], "params": 1000, "arch": "{}"}
            )
        )
    said = []
    objective = Objective.__new__(Objective)
    objective.settings, objective.log, objective.minimized, objective.pareto_rule = (
        settings,
        said.append,
        resource("params"),
        ParetoRule.of(settings),
    )
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective.pareto_stop(trial, SimpleNamespace(epoch=2, val_acc=0.95), 5000)  # 6 of 6 cheaper peers beat it
    assert trial.user_attrs["would_stop_epoch"] == 2 and trial.user_attrs["prune_reason"].startswith(
        "pareto: at epoch 2, 6 of the 6 trials"
    )
    objective.pareto_stop(trial, SimpleNamespace(epoch=2, val_acc=0.975), 5000)  # in the top third: goes on
    built_in = study.ask()
    built_in.set_user_attr("seed_arch", "rec_3762")
    objective.pareto_stop(built_in, SimpleNamespace(epoch=2, val_acc=0.5), 5000)  # never stopped
    assert "would_stop_epoch" not in built_in.user_attrs


def test_the_pareto_rule_is_off_unless_asked_and_stored_when_it_is(store, mnist_dir):
    assert StudySettings(max_epochs=20).stop_epochs() == ()  # measured not to earn its keep (README): off by default
    run_cli(
        "search",
        "--trials",
        1,
        "--stop-at",
        0.5,
        "--stop-at",
        0.75,
        "--stop-eta",
        2,
        "--max-epochs",
        4,
        "--train-size",
        600,
        "--val-size",
        300,
        "--target-accuracy",
        0.5,
        "--storage",
        store,
        "--data-dir",
        mnist_dir,
    )
    stored = StudySettings.from_dict(load(store).user_attrs["settings"])
    assert stored.stop_rungs == (0.5, 0.75) and stored.stop_eta == 2 and stored.stop_epochs() == (2, 3)
