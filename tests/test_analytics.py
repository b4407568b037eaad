import optuna
from conftest import SEED
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from nas.arch.spec import arch_to_json, load_arch
from nas.study import analytics
from nas.study.settings import StudySettings


def study_of(rows, **settings) -> optuna.Study:
    """A study holding complete trials (accuracy, user attributes), no training involved."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("settings", StudySettings(target_accuracy=0.985, **settings).to_dict())
    for acc, attrs in rows:
        study.add_trial(
            create_trial(
                values=[acc, attrs["params"]],
                params={"x": 0.5},
                distributions={"x": FloatDistribution(0, 1)},
                user_attrs={"receptive_field": 30, **attrs},
            )
        )
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


def test_pareto_rule_stops_what_cheaper_peers_beat_and_never_the_cheapest():
    from nas.study.analytics import ParetoRule

    rule = ParetoRule(rungs=(4,), eta=3.0)
    peers = [(0.95 + 0.005 * k, 1000 + 100 * k) for k in range(6)]  # six cheaper trials, more accurate ones cost more
    assert not rule.should_stop(3, 0.5, 5000, peers)  # not a rung
    assert rule.should_stop(4, 0.951, 5000, peers)  # 5 of 6 cheaper peers beat it: not in the top third
    assert not rule.should_stop(4, 0.972, 5000, peers)  # only 1 of 6 is better
    assert not rule.should_stop(4, 0.5, 900, peers)  # cheaper than every peer: none is comparable
    assert not rule.should_stop(4, 0.5, 5000, peers[:5])  # fewer than 2 * eta peers: no judgement yet


def test_replaying_the_pareto_rule_counts_savings_and_what_it_would_lose():
    import optuna

    from nas.study.analytics import ParetoRule, replay_pareto
    from nas.study.settings import StudySettings

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("settings", StudySettings(max_epochs=4, target_accuracy=0.98).to_dict())
    for n in range(8):  # eight equal trials of rising cost and accuracy, then a costly poor one and a costly good one
        curve = [0.9, 0.95, 0.96, 0.97 + 0.001 * n]
        study.add_trial(
            optuna.trial.create_trial(
                values=[curve[-1], 1000 + n],
                user_attrs={"curve": curve, "epoch_seconds": [1.0] * 4, "params": 1000 + n, "arch": "{}"},
            )
        )
    for curve in ([0.5, 0.6, 0.7, 0.99], [0.9, 0.97, 0.98, 0.985]):
        study.add_trial(
            optuna.trial.create_trial(
                values=[curve[-1], 9000],
                user_attrs={"curve": curve, "epoch_seconds": [1.0] * 4, "params": 9000, "arch": "{}"},
            )
        )
    got = replay_pareto(study, ParetoRule(rungs=(2,), eta=3.0))
    # At epoch 2 the first six trials have no 6 cheaper peers yet; trials 6 and 7 (0.95 among equals)
    # are not beaten by more than two thirds; trial 8 (0.6) is, and it ends at 0.99 on the front and
    # above the target: what the rule must not do. Trial 9 leads.
    assert got["trials"] == 10 and got["stopped"] == 1 and got["saved"] == 2.0
    assert got["front_lost"] == [8] and got["target_lost"] == [8]
