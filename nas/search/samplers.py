"""The samplers a study can use (`--sampler`, stored with the study), made alike by every worker.

Every sampler sees the same parameters on every trial (nas.space.spaces.genome: a fixed-length encoding),
and every trial carries the study's constraints (nas.arch.budgets.constraints), which Optuna's TPE,
NSGA-II and GP samplers read. `evolution` is nas's own: it mutates one choice of a parent drawn from
the study's current Pareto front and proposes only children that are valid, within the budgets and
not tried before, since it can build the architecture a genome stands for.
"""

from __future__ import annotations

import importlib.util
import math
import random
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from nas.errors import UsageError
from nas.space.spaces import decode, genome, point_key
from nas.study.settings import SAMPLERS

if TYPE_CHECKING:
    from nas.study.settings import StudySettings

NSGA2_POPULATION = 16


def make_sampler(name: str, seed: int, settings: StudySettings) -> BaseSampler:
    """The sampler `name` for one worker, seeded with `seed`."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=NSGA2_POPULATION, seed=seed)
    if name == "gp":
        if importlib.util.find_spec("scipy") is None:
            raise UsageError("--sampler gp needs scipy: pip install 'nas[gp]'")
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return RandomSampler(seed=seed)
    if name == "evolution":
        return EvolutionSampler(settings, seed)
    raise ValueError(f"unknown sampler {name!r}; one of {', '.join(SAMPLERS)}")


class _Distributions:
    """A chooser that records each parameter's distribution (the genome's shape)."""

    def __init__(self) -> None:
        self.found: dict[str, BaseDistribution] = {}

    def suggest_categorical(self, name, choices):
        self.found[name] = CategoricalDistribution(list(choices))
        return choices[0]

    def suggest_int(self, name, low, high):
        self.found[name] = IntDistribution(low, high)
        return low

    def suggest_float(self, name, low, high, *, log=False):
        self.found[name] = FloatDistribution(low, high, log=log)
        return low


class EvolutionSampler(BaseSampler):
    """Local search from the Pareto front, in the spirit of regularized evolution and of the local
    search that beat TPE on NAS-Bench-101 (White et al., BANANAS): a parent is drawn from the
    current front of complete trials (the most accurate five in an accuracy-only study), one of its
    choices is changed, and the child is kept only if it is a valid architecture within the study's
    budgets that no trial has had. While the study has fewer than `startup` complete trials (a
    single random start can leave the whole search mutating one poor network), and with
    probability `explore` afterwards, a genome is drawn at random instead, under the same test, so
    no trial is spent on an invalid or over-budget draw. The population is read from the study at
    every trial, so workers in other processes and on other machines share it."""

    def __init__(
        self, settings: StudySettings, seed: int | None = None, explore: float = 0.1, startup: int = 8, tries: int = 200
    ):
        self.settings, self.explore, self.startup, self.tries = settings, explore, startup, tries
        self.space = settings.parsed_space
        self.rng = random.Random(seed)
        self.random = RandomSampler(seed=seed)
        shape = _Distributions()
        self.fixed = genome(
            self.space, shape
        )  # the choices with one option are no trial parameter: they come from here
        self.distributions = shape.found
        self._plans: dict[int, dict[str, Any] | None] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
    ) -> Any:
        if trial._trial_id not in self._plans:
            self._plans[trial._trial_id] = self.propose(study)
        plan = self._plans[trial._trial_id]
        if plan is not None and name in plan and distribution._contains(distribution.to_internal_repr(plan[name])):
            return plan[name]
        return self.random.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._plans.pop(trial._trial_id, None)

    def parents(self, study: optuna.Study) -> list[FrozenTrial]:
        from nas.study.analytics import pareto_front

        if self.settings.objective == "accuracy":
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            return sorted(done, key=lambda t: -t.values[0])[:5]
        return pareto_front(study)

    def propose(self, study: optuna.Study) -> dict[str, Any] | None:
        """A child genome (or a random admissible one), or None to leave the draw to random search."""
        parents = [t for t in self.parents(study) if set(self.distributions) <= set(t.params)]
        known = {t.user_attrs["config_key"] for t in study.get_trials(deepcopy=False) if "config_key" in t.user_attrs}
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        at_random = not parents or complete < self.startup or self.rng.random() < self.explore
        for _ in range(self.tries):
            child = (
                {**self.fixed, **self.draw()}
                if at_random
                else self.mutate({**self.fixed, **self.rng.choice(parents).params})
            )
            if child is not None and self.admissible(child, known):
                return {k: v for k, v in child.items() if k in self.distributions}
        return None

    def draw(self) -> dict[str, Any]:
        """A genome drawn uniformly (learning rates log-uniformly), as random search would."""
        g: dict[str, Any] = {}
        for name, d in self.distributions.items():
            if isinstance(d, CategoricalDistribution):
                g[name] = self.rng.choice(d.choices)
            elif isinstance(d, IntDistribution):
                g[name] = self.rng.randint(d.low, d.high)
            else:
                assert isinstance(d, FloatDistribution)  # the genome's only other kind: a learning rate
                g[name] = (
                    math.exp(self.rng.uniform(math.log(d.low), math.log(d.high)))
                    if d.log
                    else self.rng.uniform(d.low, d.high)
                )
        return g

    def mutate(self, g: dict[str, Any]) -> dict[str, Any] | None:
        """g with one choice changed so that the network or its training changes, or None."""
        before = decode(self.space, g, self.settings.max_epochs)
        name = self.rng.choice(sorted(self.distributions))
        d, child = self.distributions[name], dict(g)
        if isinstance(d, CategoricalDistribution):
            others = [c for c in d.choices if c != g[name]]
            child[name] = self.rng.choice(others)
        elif isinstance(d, IntDistribution):
            child[name] = min(d.high, max(d.low, g[name] + self.rng.choice((-1, 1))))
        else:  # a learning rate: a log-normal step, kept in range
            assert isinstance(d, FloatDistribution)
            child[name] = min(d.high, max(d.low, g[name] * math.exp(self.rng.gauss(0, 0.5))))
        return None if decode(self.space, child, self.settings.max_epochs) == before else child

    def admissible(self, g: dict[str, Any], known: set[str]) -> bool:
        """Valid, within every budget of the study, and not trained or drawn before."""
        from nas.arch.budgets import violations
        from nas.arch.spec import costs
        from nas.errors import SpecError

        arch, cfg = decode(self.space, g, self.settings.max_epochs)
        cfg = self.settings.trial_config(cfg)
        try:
            c = costs(arch)
        except SpecError:
            return False
        return (
            not violations(c, self.settings)
            and point_key(arch, cfg, self.settings.seeds_per_trial, self.settings.train_images) not in known
        )
