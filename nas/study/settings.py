"""What defines a search, in one torch-free place.

A study stores its settings when it is created, the search space's content and the seed
networks included, and every later run (a resume, more workers, another machine) reads them
from the study. What belongs to one machine (device, data folder, worker count, artifact
folder) is not here: it is an option of each run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

from nas.arch.budgets import NAMES as RESOURCE_NAMES
from nas.arch.budgets import RESOURCES, flag
from nas.data.datasets import MNIST, DatasetSpec
from nas.errors import SpecError
from nas.space.spaces import DEFAULT_SPACE, Space, cheapest, read_space, space_for
from nas.study import seeds
from nas.train.config import DEFAULT_EPOCHS, TrainConfig

PRUNING_MODES = ("on", "observe", "off")
SAMPLERS = ("tpe", "nsga2", "gp", "random", "evolution")  # made by nas.search.samplers.make_sampler
OBJECTIVES = ("pareto", "accuracy")
DEFAULT_SEED_ARCH = "seed_9274"
# The screening level below the mission's 20 epochs x 50,000 images: benchmarks/protocol.py's level A
# ranked 12 networks with Spearman 0.95 against the full protocol, kept its top 3 in its top 5, and
# costs 35 CPU s a trial against 392 (docs/search.md). It is the default wherever the top level is
# at least as long and as large and at least 4 times its cost; below that a search has one level.
DEFAULT_SCREEN = (4, 20_000)


class SettingsMismatch(SpecError):
    """A flag disagrees with what the study was created with."""


def _default_space() -> dict[str, Any]:
    return read_space(DEFAULT_SPACE)


@dataclass(frozen=True)
class StudySettings:
    """One search's definition; every field is a `nas search` flag of the same name."""

    max_params: int = 20_000
    # Further budgets (nas.arch.budgets; None: no limit): MACs per image, peak int8 activation
    # memory and int8 model size in KB of 1,000 bytes, and the resource the Pareto front minimises.
    max_macs: int | None = None
    max_activation_kb: float | None = None
    max_model_kb: float | None = None
    minimize: str = "params"
    max_epochs: int = DEFAULT_EPOCHS
    target_accuracy: float = 0.994
    objective: str = "pareto"
    pruning: str = "on"
    # The convergence rule: judged from this fraction of the epochs on, with this slack
    # (nas.study.analytics.ConvergenceRule says how they were chosen).
    prune_start: float = 0.75
    prune_slack: float = 0.06
    # Pareto-aware early stopping (nas.study.analytics.ParetoRule): rungs as fractions of the
    # epochs (after OneCycle's warm-up), and eta: a trial stops at a rung when it is not in the top
    # 1/eta of the trials that reached it at no larger cost. () turns the rule off, as it is by
    # default: replayed on 216 curves its safe candidates saved 1-6 %, and on a held-out study the
    # chosen one stopped 2 front members (README).
    stop_rungs: tuple[float, ...] = ()
    stop_eta: float = 3.0
    # Fidelity levels below the top (nas.study.levels): (epochs, training images) each, lowest
    # first; the top is always (max_epochs, train_images). None: DEFAULT_SCREEN where it fits.
    # promote_eta: a level promotes the top 1/eta of what trained there. 2: replayed on 12 networks
    # measured at both levels (benchmarks/promotion.py), the promoted half reached 87 % of the full
    # front's hypervolume at 59 % of the CPU time of training all 12 fully; eta 3 reached 58 %.
    levels: tuple[tuple[int, int], ...] | None = None
    promote_eta: float = 2.0
    train_size: int | None = None
    val_size: int | None = None  # None: the data's default (DatasetSpec.default_val_size, 10,000 for MNIST)
    seeds_per_trial: int = 1
    seed: int = 0
    sampler: str = "tpe"  # nas.search.samplers.SAMPLERS
    space: dict[str, Any] = field(default_factory=_default_space)  # the space file's content
    # Architectures (not paths) enqueued as a new study's first trials. None: every built-in
    # architecture that is a point of the space and within the budgets (builtin_seeds).
    seed_archs: tuple[dict[str, Any], ...] | None = None
    # The data (nas.data.datasets): what it is, not where it lies, so every machine checks its
    # copy against it.
    dataset: DatasetSpec = MNIST

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_rungs", tuple(self.stop_rungs))  # a list when read back from a study
        if self.levels is not None:  # lists when read back from a study
            object.__setattr__(self, "levels", tuple((int(e), int(n)) for e, n in self.levels))
        if isinstance(self.dataset, dict):
            object.__setattr__(self, "dataset", DatasetSpec.from_dict(self.dataset))
        if self.val_size is None:
            object.__setattr__(self, "val_size", self.dataset.default_val_size)
        images, val_size = self.dataset.train, self.val_size
        assert val_size is not None  # filled in just above
        for key, ok, what in (
            ("max_params", self.max_params >= 1, "must be at least 1"),
            ("max_epochs", self.max_epochs >= 1, "must be at least 1"),
            ("target_accuracy", 0 < self.target_accuracy <= 1, "is a fraction in (0, 1], e.g. 0.994"),
            ("objective", self.objective in OBJECTIVES, f"must be one of {', '.join(OBJECTIVES)}"),
            ("pruning", self.pruning in PRUNING_MODES, f"must be one of {', '.join(PRUNING_MODES)}"),
            ("prune_start", 0 <= self.prune_start <= 1, "must be in [0, 1]"),
            ("prune_slack", 0 <= self.prune_slack < 1, "must be in [0, 1)"),
            ("stop_rungs", all(0 < f < 1 for f in self.stop_rungs), "are fractions of the epochs in (0, 1)"),
            ("stop_eta", self.stop_eta > 1, "must be above 1"),
            ("promote_eta", self.promote_eta > 1, "must be above 1"),
            (
                "val_size",
                1 <= val_size < images,
                f"must be between 1 and {images - 1:,} (the search judges on it; "
                f"{self.dataset.name} has {images:,} training images)",
            ),
            (
                "train_size",
                self.train_size is None or 1 <= self.train_size <= images - val_size,
                f"must be between 1 and {images - val_size:,} "
                f"({self.dataset.name}'s {images:,} training images minus --val-size)",
            ),
            ("seeds_per_trial", 1 <= self.seeds_per_trial <= 16, "must be between 1 and 16"),
            ("seed", self.seed >= 0, "must be >= 0"),
            ("sampler", self.sampler in SAMPLERS, f"must be one of {', '.join(SAMPLERS)}"),
            ("minimize", self.minimize in RESOURCE_NAMES, f"must be one of {', '.join(RESOURCE_NAMES)}"),
            *(
                (
                    r.setting,
                    getattr(self, r.setting) is None or getattr(self, r.setting) > 0,
                    "must be positive (leave it out for no limit)",
                )
                for r in RESOURCES
            ),
        ):
            if not ok:
                raise SpecError("settings", flag(key), f"{what} (got {getattr(self, key)!r})")
        if self.levels is None:
            object.__setattr__(self, "levels", default_levels(self.max_epochs, self.train_images))
        self._check_levels()
        self.parsed_space  # noqa: B018 - a bad space or seed fails here, before any study exists
        object.__setattr__(
            self, "seed_archs", tuple(self.builtin_seeds() if self.seed_archs is None else self.seed_archs)
        )
        self.seed_configs  # noqa: B018

    def _check_levels(self) -> None:
        assert self.levels is not None  # filled in on construction
        previous = 0
        for epochs, images in self.levels:
            cost = epochs * images
            if not (1 <= epochs <= self.max_epochs and 1 <= images <= self.train_images and previous < cost):
                raise SpecError(
                    "settings",
                    "--levels",
                    f"each level below the top must train at most the top's {self.max_epochs} epochs on at most "
                    f"its {self.train_images:,} images, each costing more than the one below (got {epochs}x{images})",
                )
            previous = cost
        if self.levels and previous >= self.max_epochs * self.train_images:
            raise SpecError(
                "settings",
                "--levels",
                f"the highest level below the top must cost less than the top ({self.max_epochs} epochs x "
                f"{self.train_images:,} images); give cheaper levels or --levels none",
            )

    @property
    def ladder(self) -> tuple[tuple[int, int], ...]:
        """Every level as (epochs, training images), lowest first; the last is the top: the study itself."""
        assert self.levels is not None  # filled in on construction
        return (*self.levels, (self.max_epochs, self.train_images))

    def at_level(self, level: int) -> StudySettings:
        """The settings a level's trials run under: its epochs and images, one seed (the top level
        alone trains --seeds-per-trial), no Pareto rule, no levels of its own. The top is self."""
        if level == len(self.ladder) - 1:
            return self
        epochs, images = self.ladder[level]
        return replace(
            self,
            max_epochs=epochs,
            train_size=images,
            levels=(),
            seeds_per_trial=1,
            stop_rungs=(),
            seed_archs=self.seed_archs,
        )

    def stop_epochs(self) -> tuple[int, ...]:
        """The epochs at which the Pareto rule compares trials."""
        return rung_epochs(self.stop_rungs, self.max_epochs)

    @property
    def train_images(self) -> int:
        """Images each trial trains on (the training split less the validation images, or --train-size)."""
        assert self.val_size is not None  # filled in on construction
        return self.train_size or self.dataset.train - self.val_size

    def trial_config(self, drawn: TrainConfig) -> TrainConfig:
        """What a trial trains with: the drawn settings under the study's seed, the batch fitted
        to the training set (TrainConfig.fitted)."""
        return replace(drawn, seed=self.seed).fitted(self.train_images)

    def builtin_seeds(self) -> list[dict[str, Any]]:
        """The built-in architectures this study starts from: those that are points of its space
        (input and classes included: the data's) and within all its budgets, seed_9274 first."""
        return seeds.builtin_seeds(self.parsed_space, self.max_epochs, self)

    def unfit_builtins(self) -> str | None:
        """One line naming the built-in architectures left out because they take other images or
        classes than the data's (None when all fit)."""
        return seeds.unfit_builtins(self.dataset)

    @cached_property
    def parsed_space(self) -> Space:
        """The space as this study searches it, on its data (nas.space.spaces.space_for)."""
        return space_for(self.space, self.dataset, f"search space {self.space.get('name', '')}".strip())

    @cached_property
    def seed_configs(self) -> list[dict[str, Any]]:
        """The trial parameters that replay each seed network in the space (SpecError if one
        is not a point of it)."""
        assert self.seed_archs is not None  # filled in on construction
        return seeds.seed_configs(self.parsed_space, self.seed_archs, self.max_epochs)

    def check_reachable(self) -> None:
        """Refuse budgets that no architecture of the space meets: every trial would be pruned
        before training, and the search would end saying "search longer" (nas.space.spaces.cheapest
        finds the space's cheapest architectures exactly, in a fraction of a second)."""
        limits = [(r, limit) for r in RESOURCES if (limit := r.limit(self)) is not None]
        corners = cheapest(self.parsed_space)
        if any(all(r.read(c) <= limit for r, limit in limits) for c in corners):
            return
        name = self.parsed_space.name
        if not corners:
            raise SpecError(
                f"search space {name}",
                "architecture",
                "every architecture of it collapses the feature map; give it more padding or fewer stages",
            )
        least = {r.name: min(r.read(c) for c in corners) for r, _ in limits}
        alone = [(r, limit) for r, limit in limits if least[r.name] > limit]  # none meets even by itself
        named = alone or limits
        given = " and ".join(f"{r.flag} {getattr(self, r.setting):g}" for r, _ in named)
        smallest = "; ".join(f"{r.label} {r.format(least[r.name])}" for r, _ in named)
        within = "this limit" if len(named) == 1 else "these limits" if alone else "these limits at once"
        raise SpecError(
            "settings",
            given,
            f"no architecture of search space {name} is within {within} (its smallest: {smallest}); "
            f"raise {'it' if len(named) == 1 else 'them'}, or search a space with smaller choices "
            "(nas space show prints its ranges)",
        )

    def to_dict(self) -> dict[str, Any]:
        assert self.seed_archs is not None  # filled in on construction
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["seed_archs"] = list(self.seed_archs)
        out["dataset"] = self.dataset.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "study") -> StudySettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(
                where,
                "settings",
                f"made by another version of nas (unknown setting {unknown[0]!r}); start a new study with --study-name",
            )
        return cls(**{"levels": (), **data})  # a study made before levels had one

    def reconcile(self, given: dict[str, Any], study: str) -> None:
        """Refuse flags that disagree with these (stored) settings, naming every one with both values."""
        were, now = [], []
        for key, value in given.items():
            stored = getattr(self, key)
            if stored == value:
                continue
            if key == "space":
                were.append(f"search space {stored.get('name')!r}")
                now.append(f"a search space whose content differs ({value.get('name')!r})")
            elif key == "seed_archs":
                were.append(f"seed architectures {[a.get('name') for a in stored]}")
                now.append(f"seed architectures {[a.get('name') for a in value]}")
            elif key == "levels":
                were.append(f"--levels {_levels_flag(stored)}")
                now.append(f"--levels {_levels_flag(value)}")
            elif key == "dataset":
                were.append(f"--dataset {stored.short()}")
                now.append(f"--dataset {value.short()}")
            else:
                were.append(f"{flag(key)} {stored}")
                now.append(f"{flag(key)} {value}")
        if not were:
            return
        keys = [flag(k) for k, v in given.items() if getattr(self, k) != v]
        raise SettingsMismatch(
            f"study {study!r}",
            ", ".join(keys),
            f"the study was created with {', '.join(were)}; this run asks for {', '.join(now)}. "
            f"Drop {' and '.join(keys)} to resume with the stored settings, or start a new study with --study-name NEW",
        )


def default_levels(max_epochs: int, train_images: int) -> tuple[tuple[int, int], ...]:
    """DEFAULT_SCREEN below a top level at least as long and large and at least 4 times its cost; else none."""
    epochs, images = DEFAULT_SCREEN
    fits = max_epochs >= epochs and train_images >= images and max_epochs * train_images >= 4 * epochs * images
    return (DEFAULT_SCREEN,) if fits else ()


def rung_epochs(fractions: tuple[float, ...], max_epochs: int) -> tuple[int, ...]:
    """The epochs of rungs given as fractions of the training (none at or after the last epoch)."""
    return tuple(sorted({e for f in fractions if 1 <= (e := max(1, math.ceil(f * max_epochs))) < max_epochs}))


def _levels_flag(levels: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{e}x{n}" for e, n in levels) or "none"
