"""Trial and study notes, and artifacts, on a study with the attributes a real search writes."""

import json
import subprocess
import sys

import optuna
import pytest
from conftest import ROOT, make_study
from optuna.trial import TrialState
from optuna_dashboard._note import get_note_from_system_attrs

from nas.arch.spec import arch_from_dict, arch_to_dict, param_count, read_toml
from nas.study import analytics, notes
from nas.study.analytics import ConvergenceRule, study_settings
from nas.study.settings import StudySettings
from nas.study.study_note import study_note
from nas.study.trial_note import arch_line, ending, sparkline, trial_note


def by_label(study, label):
    settings = study_settings(study)
    return [t for t in study.trials if ending(t, settings)[0] == label]


def stored_note(study, trial_id=None):
    return get_note_from_system_attrs(study._storage.get_study_system_attrs(study._study_id), trial_id)


def test_every_ending_is_explained(synthetic_study):
    study, settings = synthetic_study, study_settings(synthetic_study)
    seed = study.trials[0]
    note = trial_note(seed, settings)
    assert "### Trial 0: converged" in note and "complete and converged: 98.50 %" in note
    assert "Total params: 9,274" in note and "Receptive field: 38 px" in note  # nas summary's table
    assert "| epochs | batch_size | optimizer | lr |" in note and "`seed_9274`" in note
    assert sparkline(seed.user_attrs["curve"]) in note

    budget = by_label(study, "pruned (budget)")[0]
    assert f"pruned by budget before training: parameters {budget.user_attrs['params']:,} > 9,300" in trial_note(
        budget, settings
    )

    pruned = by_label(study, "pruned (convergence)")[0]
    epoch = pruned.user_attrs["would_prune_epoch"]
    text = trial_note(pruned, settings)
    needed = ConvergenceRule.of(settings).needed(epoch)
    assert f"pruned for convergence at epoch {epoch} of 4" in text and f"< the {100 * needed:.2f} % needed" in text
    assert f"| {epoch} | {100 * pruned.user_attrs['curve'][-1]:.2f} % ✗ | {100 * needed:.2f} % |" in text

    below = by_label(study, "below target")[0]
    assert f"complete below the target: {100 * below.values[0]:.2f} % < 98.00 %" in trial_note(below, settings)
    assert "invalid architecture, not trained: feature map shrinks" in trial_note(
        by_label(study, "invalid")[0], settings
    )
    assert "failed: training loss became nan in epoch 2" in trial_note(by_label(study, "failed")[0], settings)
    stale = trial_note(by_label(study, "failed (stale)")[0], settings)
    assert "failed as stale by another worker" in stale and "no heartbeat from worker w1 on host-b" in stale


def test_attributes_others_add_are_shown_and_missing_ones_tolerated():
    settings = StudySettings(max_epochs=4, target_accuracy=0.98)
    extra = {
        "params": 5000,
        "macs": 1_234_567,
        "activation_int8_bytes": 40_960,
        "activation_fp32_bytes": 163_840,
        "model_int8_bytes": 20_000,
        "engine": "cuda-graph",
        "duplicate_of": 3,
        "retry_of": 2,
        "val_accs": [0.981, 0.985],
        "curve": [0.9, 0.95, 0.97, 0.983],
        "flops_ratio": 0.5,
    }
    t = optuna.trial.create_trial(values=[0.983, 5000], user_attrs=extra)
    note = trial_note(t, settings)
    for text in (
        "MACs | 1,234,567",
        "peak int8 activations | 40,960 B (163,840 B at fp32)",
        "int8 model size | 20,000 B",
        "cuda-graph",
        "trial 3",
        "re-run of | trial 2",
        "98.10 %, 98.50 %",
        "`flops_ratio` | 0.5",
    ):
        assert text in note, text
    bare = optuna.trial.create_trial(state=TrialState.FAIL)
    assert "no reason recorded" in trial_note(bare, settings)
    unreadable = optuna.trial.create_trial(
        state=TrialState.PRUNED, user_attrs={"arch": "{not json", "prune_reason": "budget"}
    )
    assert "not readable" in trial_note(unreadable, settings)


def test_notes_are_saved_where_the_dashboard_reads_them(synthetic_study):
    study = synthetic_study
    finished = study.trials[0]
    notes.save_trial_note(study, finished)  # after the trial ended: notes live in study attributes
    saved = stored_note(study, finished._trial_id)
    assert saved == {"version": 1, "body": trial_note(finished, study_settings(study))}
    notes.save_trial_note(study, finished)
    assert stored_note(study, finished._trial_id)["version"] == 1  # unchanged: no new version
    big = make_study(name="big", n=60)  # a longer front: a note over several chunks
    notes.save_study_note(big)
    body = stored_note(big)["body"]
    assert len(body) > 2045  # spans several of optuna-dashboard's chunks and reads back whole
    assert body == study_note(big)
    front = [line for line in body.splitlines() if line.startswith("| ") and "`c" in line]
    assert front and "seed_9274" in body and "### Pareto front" in body and "### Search space `mnist_fcn`" in body


def test_arch_artifact_on_a_running_trial_and_on_the_study_after(synthetic_study, tmp_path):
    study = synthetic_study
    store = notes.open_artifact_store(tmp_path / "artifacts")
    finished = next(t for t in study.trials if "arch" in t.user_attrs)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # why a finished trial's file goes to the study
        study._storage.set_trial_system_attr(finished._trial_id, "x", 1)
    notes.upload_arch(study, finished, store)
    [meta] = optuna.artifacts.get_all_artifact_meta(study)
    assert meta.filename == f"trial_{finished.number}.toml"
    running = study.ask()
    for key in ("arch", "train_config", "params"):
        running.set_user_attr(key, finished.user_attrs[key])
    notes.upload_arch(study, running, store)
    [own] = optuna.artifacts.get_all_artifact_meta(running)
    path = tmp_path / own.filename
    optuna.artifacts.download_artifact(artifact_store=store, artifact_id=own.artifact_id, file_path=str(path))
    arch = arch_from_dict(read_toml(path, "toml"), str(path))
    assert param_count(arch) == finished.user_attrs["params"] and arch.train == finished.user_attrs["train_config"]
    invalid = by_label(study, "invalid")[0]
    assert notes.upload_arch(study, invalid, store) is None


def test_export_is_recorded_with_its_files(synthetic_study, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    metrics = {
        "trial": 4,
        "params": 6726,
        "test_acc": 0.9912,
        "test_acc_mean": 0.99,
        "test_acc_min": 0.988,
        "test_acc_max": 0.9912,
        "seeds": [{}, {}],
        "epochs": 4,
        "train_images": 60000,
        "device": "cpu",
    }
    (out / "README.md").write_text("# card")
    (out / "metrics.json").write_text(json.dumps(metrics))
    store = notes.open_artifact_store(tmp_path / "artifacts")
    notes.record_export(synthetic_study, metrics, out, store)
    [entry] = synthetic_study.user_attrs["exports"]
    assert entry["test_acc"] == 0.9912 and entry["seeds"] == 2 and entry["out"] == str(out.resolve())
    names = {m.filename for m in optuna.artifacts.get_all_artifact_meta(synthetic_study)}
    assert names == {"trial_4.model-card.md", "trial_4.metrics.json"} == set(entry["artifacts"])
    assert "**Exported:** trial 4, 99.12 % test accuracy" in study_note(synthetic_study)


def test_artifact_folder_defaults_next_to_sqlite():
    assert str(notes.artifact_dir_for("sqlite:///studies/nas.sqlite3")) == "studies/artifacts"
    assert str(notes.artifact_dir_for("sqlite:////abs/x.db")) == "/abs/artifacts"
    assert notes.artifact_dir_for("postgresql+psycopg://u@h/db") is None


def test_arch_line_and_sparkline():
    arch = arch_from_dict(read_toml(ROOT / "search_spaces" / "seeds" / "seed_9274.toml", "toml"))
    assert arch_line(arch) == "c4 c4 c8 max c12 c12 c16 max c20v → conv3x3v, GAP"
    small = arch_from_dict({**arch_to_dict(arch), "layers": [{"conv": 4, "stride": 2}, {"conv": 8, "padding": 0}]})
    assert arch_line(small) == "c4s2 c8v → conv3x3v, GAP"
    assert sparkline([0.9, 0.95, 0.99]) == "▁▅█" and sparkline([0.5, 0.5]) == "██"


def test_notes_and_report_do_not_import_torch():
    code = "import sys, nas.study.notes, nas.study.report; assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_study_note_of_an_empty_study():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("settings", StudySettings().to_dict())
    note = study_note(study)
    assert "no complete trial reaches 99.40 % yet" in note and "Pareto front" not in note


def test_make_study_is_realistic():
    """The synthetic study covers every ending the notes explain (else the tests above prove less)."""
    study = make_study()
    settings = study_settings(study)
    labels = {ending(t, settings)[0] for t in study.trials}
    assert labels >= {
        "converged",
        "below target",
        "pruned (budget)",
        "pruned (convergence)",
        "invalid",
        "failed",
        "failed (stale)",
    }


def test_the_note_and_the_summary_count_trials_in_one_phrase(synthetic_study):
    study = synthetic_study
    study.ask()  # a trial some worker is running
    line = analytics.counts_line(study)
    budget = sum(t.user_attrs.get("over_budget") == ["params"] for t in study.trials)
    assert f"pruned {budget} by budget (params {budget})" in line and line.endswith(", 1 running or waiting")
    assert f"**Trials:** {line};" in study_note(study)
    assert f"trials: {line}" in analytics.summary(study).splitlines()
