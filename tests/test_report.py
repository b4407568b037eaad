"""report.html and trials.csv from a study with the attributes a real search writes."""

import csv
import re
from dataclasses import replace

from optuna.trial import TrialState

from nas.study import notes
from nas.study.analytics import best_trial, pareto_front, rule_replays, study_settings
from nas.study.report import render, write_report
from nas.study.settings import StudySettings
from nas.study.trial_note import arch_line, trial_arch


def test_csv_has_one_flat_row_per_trial(synthetic_study, tmp_path):
    study = synthetic_study
    csv_path, _ = write_report(study, tmp_path / "rep")
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    for column in (
        "state",
        "outcome",
        "reason",
        "params",
        "receptive_field",
        "val_acc",
        "train_seconds",
        "seconds",
        "macs",
        "activation_int8_bytes",
        "model_int8_bytes",
        "model_fp32_bytes",
        "engine",
        "param_stages",
        "param_s1_blocks",
        "param_optimizer",
    ):
        assert column in rows[0], column
    assert "val_accs" not in rows[0]  # no trial has it: no empty column
    seed = rows[0]
    assert (
        seed["params"] == "9274"
        and seed["seed_arch"] == "seed_9274"
        and float(seed["val_acc"]) == study.trials[0].values[0]
    )
    assert seed["architecture"] == "c4 c4 c8 max c12 c12 c16 max c20v → conv3x3v, GAP"
    stale = next(r for r in rows if r["outcome"] == "failed (stale)")
    assert "no heartbeat from worker w1" in stale["reason"] and stale["state"] == "fail"
    budget = next(r for r in rows if r["outcome"] == "pruned (budget)")
    assert int(budget["params"]) > 9300 and budget["val_acc"] == ""


def test_page_tells_the_study(synthetic_study, tmp_path):
    study = synthetic_study
    page = render(study)
    text = re.sub(r"<[^>]+>", " ", page.split("<h2>Pareto front</h2>")[0])
    best = best_trial(study)
    for fact in (
        "parameters 9,300",
        "98.00 % validation accuracy",
        "cpu",
        f"{len(study.trials)}: ",
        "training,",
        f"trial {best.number}: {best.user_attrs['params']:,} parameters",
        "Total params:",
        "seed_9274",
    ):
        assert fact in text, fact
    for t in pareto_front(study):  # hover text carries each front point's architecture in one line
        assert arch_line(trial_arch(t)) in page
    assert page.count("plotly.js v") == 1 and "<script src=" not in page  # plotly inlined once: works offline
    assert page.count('class="plotly-graph-div"') == 4  # front, curves, importances, history
    assert "convergence threshold (on)" in page and "failed (stale)" in page and "pruned (convergence)" in page


def test_pruning_replay_is_a_table_with_the_studys_rule_marked(synthetic_study):
    page = render(synthetic_study)
    section = page.split("<h2>Convergence pruning</h2>")[1].split("<h2>")[0]
    convergence, pareto = section.split("</table>")[:2]
    replays = rule_replays(synthetic_study)
    assert convergence.count("<tr") == len(replays) + 1 == 10
    current = re.findall(r"<tr class=current>(.*?)</tr>", convergence)
    assert len(current) == 1 and "75% (epoch 3)" in current[0] and "0.06" in current[0]
    assert (
        pareto.count("<tr") == 1 + 2 * 3
    )  # of 4 epochs, the candidate rungs fall on epoch 2, or epochs 2 and 3; three etas each
    assert "<tr class=current>" not in pareto and "Pareto rule is off" in pareto  # off by default
    settings = StudySettings.from_dict(synthetic_study.user_attrs["settings"])
    synthetic_study.set_user_attr("settings", replace(settings, stop_rungs=(0.5,), stop_eta=3.0).to_dict())
    pareto = render(synthetic_study).split("<h2>Convergence pruning</h2>")[1].split("<h2>")[0].split("</table>")[1]
    current = re.findall(r"<tr class=current>(.*?)</tr>", pareto)
    assert len(current) == 1 and current[0].startswith("<td>2</td><td class=num>3</td>")


def test_failed_and_invalid_trials_listed_with_reasons(synthetic_study):
    section = render(synthetic_study).split("<h2>Failed and invalid trials</h2>")[1]
    bad = [
        t
        for t in synthetic_study.trials
        if t.state == TrialState.FAIL or t.user_attrs.get("prune_reason", "").startswith("invalid")
    ]
    assert section.count("<tr>") == len(bad) + 1
    assert "training loss became nan" in section and "failed as stale by another worker" in section


def test_export_shows_its_test_accuracy(synthetic_study, tmp_path):
    assert "exported model" not in render(synthetic_study)
    out = tmp_path / "m"
    out.mkdir()
    notes.record_export(
        synthetic_study,
        {
            "trial": 4,
            "test_acc": 0.9931,
            "test_acc_mean": 0.992,
            "test_acc_min": 0.9905,
            "test_acc_max": 0.9931,
            "seeds": [{}, {}, {}],
            "epochs": 4,
            "train_images": 60000,
        },
        out,
    )
    page = render(synthetic_study)
    assert (
        "exported model" in page
        and "trial 4: 99.31 % test accuracy (model.pt, seed 0); mean 99.20 % over 3 seeds" in page
    )


def test_report_of_an_empty_study_says_so(tmp_path):
    import optuna

    from nas.study.settings import StudySettings

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("settings", StudySettings().to_dict())
    csv_path, page = write_report(study, tmp_path)
    text = page.read_text()
    assert "no complete trial reaches 99.40 % yet" in text and "not available yet" in text
    assert csv_path.read_text().strip() == "number"
    assert study_settings(study).max_params == 20000
