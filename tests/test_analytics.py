import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from nas import analytics
from nas.arch import arch_to_json, load_arch
from nas.settings import StudySettings

from conftest import SEED


def study_of(rows, **settings) -> optuna.Study:
    """A study holding complete trials (accuracy, user attributes), no training involved."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("settings", StudySettings(target_accuracy=0.985, **settings).to_dict())
    for acc, attrs in rows:
        study.add_trial(create_trial(values=[acc, attrs["params"]], params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
                                     user_attrs={"receptive_field": 30, **attrs}))
    return study


ROWS = [
    (0.99, {"params": 5_000, "macs": 900_000}),
    (0.99, {"params": 8_000, "macs": 300_000}),
    (0.98, {"params": 4_000, "macs": 1_000_000}),
    # recorded before MACs were: its MACs come from its architecture (the seed's 1,217,160)
    (0.995, {"params": 9_274, "arch": arch_to_json(load_arch(SEED))}),
]


def test_front_and_best_follow_the_minimised_resource():
    by_params, by_macs = study_of(ROWS), study_of(ROWS, minimize="macs")
    assert [t.number for t in analytics.pareto_front(by_params)] == [2, 0, 3]
    assert [t.number for t in analytics.pareto_front(by_macs)] == [1, 3]
    assert analytics.best_trial(by_params).number == 0 and analytics.best_trial(by_macs).number == 1
    text = analytics.summary(by_macs)
    assert "Pareto front (validation accuracy vs MACs)" in text and "1,217,160" in text
    assert "best: trial 1: 99.00 % with 8,000 params, MACs 300,000" in text


def test_accuracy_mode_breaks_ties_on_the_minimised_resource():
    rows = ROWS[:2]
    assert analytics.best_trial(study_of(rows, objective="accuracy")).number == 0
    assert analytics.best_trial(study_of(rows, objective="accuracy", minimize="macs")).number == 1
