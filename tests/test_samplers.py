import importlib.util
import math

import optuna
import pytest
from optuna.trial import TrialState

from nas.arch.budgets import constraints, violations
from nas.arch.spec import costs
from nas.errors import SpecError
from nas.search.samplers import EvolutionSampler, make_sampler
from nas.space.spaces import decode, genome, point_key, read_space, sample
from nas.study.analytics import pareto_front
from nas.study.settings import SAMPLERS, StudySettings

SETTINGS = StudySettings(max_params=4000, max_epochs=2, space=read_space("mnist_tiny"), train_size=2000, val_size=1000)


def fake_objective(settings):
    """What nas.search.objective.Objective does before training, and a made-up accuracy that grows with size."""

    def objective(trial):
        arch, cfg = sample(settings.parsed_space, trial, settings.max_epochs)
        try:
            c = costs(arch)
        except SpecError:
            for k, v in constraints(None, settings).items():
                trial.set_constraint(k, v)
            raise optuna.TrialPruned() from None
        for k, v in constraints(c, settings).items():
            trial.set_constraint(k, v)
        trial.set_user_attr("params", c.params)
        trial.set_user_attr(
            "config_key", point_key(arch, settings.trial_config(cfg), settings.seeds_per_trial, settings.train_images)
        )
        if violations(c, settings):
            raise optuna.TrialPruned()
        return 0.9 + 0.09 * math.tanh(c.params / 3000) - 0.001 * (trial.number % 3), c.params

    return objective


def study_with(sampler, settings=SETTINGS, n=12):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.set_user_attr("settings", settings.to_dict())
    for params in settings.seed_configs:
        study.enqueue_trial(params)
    study.optimize(fake_objective(settings), n_trials=n)
    return study


@pytest.mark.parametrize("name", [s for s in SAMPLERS if s != "gp" or importlib.util.find_spec("scipy")])
def test_every_sampler_sees_the_same_fixed_length_genome(name):
    study = study_with(make_sampler(name, 3, SETTINGS), n=8)
    shapes = {frozenset(t.params) for t in study.trials}
    assert len(shapes) == 1 and len(next(iter(shapes))) > 30, shapes


def test_genome_round_trips_through_decode():
    space = SETTINGS.parsed_space

    class First:  # answers every choice with its first option
        def suggest_categorical(self, name, choices):
            return choices[0]

        def suggest_int(self, name, low, high):
            return low

        def suggest_float(self, name, low, high, *, log=False):
            return low

    g = genome(space, First())
    assert decode(space, g) == sample(space, First())
    assert (
        g["s3_c3"] == 8 and g["stages"] == 2
    )  # a block of a stage the network lacks is part of the genome all the same


def test_evolution_proposes_new_admissible_one_step_mutations_of_the_front():
    evo = EvolutionSampler(SETTINGS, seed=7, explore=0.0, startup=0)
    study = study_with(optuna.samplers.RandomSampler(seed=1), n=15)
    front = pareto_front(study)
    assert front, "the random start must leave a front to mutate"
    seen = {t.user_attrs["config_key"] for t in study.trials if "config_key" in t.user_attrs}
    for _ in range(20):
        child = evo.propose(study)
        assert child is not None
        distances = [sum(child[k] != t.params[k] for k in child) for t in front]
        assert min(distances) == 1  # one choice away from a member of the front
        arch, cfg = decode(SETTINGS.parsed_space, {**evo.fixed, **child}, SETTINGS.max_epochs)
        assert not violations(costs(arch), SETTINGS)  # valid and within the budget: never pruned before training
        assert point_key(arch, SETTINGS.trial_config(cfg), 1, SETTINGS.train_images) not in seen


def test_evolution_starts_from_random_draws_that_fit():
    """Until `startup` trials are complete the parents are not trusted (one poor random start once
    left a whole search mutating a 59 % network); the random draws are tested like children."""
    evo = EvolutionSampler(SETTINGS, seed=3, explore=0.0, startup=8)
    study = study_with(optuna.samplers.RandomSampler(seed=1), n=4)
    assert 0 < len(pareto_front(study)) and len(study.get_trials(states=(TrialState.COMPLETE,))) < 8
    front = pareto_front(study)
    distances = []
    for _ in range(10):
        g = evo.propose(study)
        arch, cfg = decode(SETTINGS.parsed_space, {**evo.fixed, **g}, SETTINGS.max_epochs)
        assert not violations(costs(arch), SETTINGS)
        distances.append(min(sum(g[k] != t.params[k] for k in g) for t in front))
    assert min(distances) > 1  # drawn afresh, not one step from the front


def test_evolution_searches_a_study_end_to_end_and_only_trains_what_fits():
    study = study_with(EvolutionSampler(SETTINGS, seed=2, explore=0.0), n=25)
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert all(
        t.state == TrialState.COMPLETE for t in study.trials
    )  # random starts and children alike: none pruned by budget
    assert len({t.user_attrs["config_key"] for t in trained}) == len(trained)  # and none repeats another
