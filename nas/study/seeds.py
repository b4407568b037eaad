"""The seed networks a study starts from: architectures enqueued as its first trials, so the
search begins at known points and the report can set every trial beside them. Torch-free.

Unless --seed-arch names others, they are the built-in architectures that are points of the
study's space, on its data, and within all its budgets. Each is replayed as the trial parameters
that draw it in the space, so the sampler learns from it like from any trial. StudySettings
(nas.study.settings) offers these as its builtin_seeds, unfit_builtins and seed_configs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nas.arch.budgets import violations
from nas.arch.spec import arch_from_dict, arch_to_dict, builtin_archs, costs
from nas.data.datasets import DatasetSpec
from nas.errors import SpecError
from nas.space.spaces import Space, params_for
from nas.train.config import TrainConfig


def builtin_seeds(space: Space, max_epochs: int, budgets: Any) -> list[dict[str, Any]]:
    """The built-in architectures a study starts from: those that are points of its space
    (input and classes included: the data's) and within all its budgets (`budgets`: the study's
    settings, as nas.arch.budgets reads them), seed_9274 first."""
    out = []
    for arch in builtin_archs():
        cfg = TrainConfig.from_dict({**arch.train, "epochs": max_epochs}, arch.name)
        try:
            params_for(space, arch, cfg, arch.name)
        except SpecError:
            continue
        if not violations(costs(arch), budgets):
            out.append(arch_to_dict(arch))
    return out


def unfit_builtins(d: DatasetSpec) -> str | None:
    """One line naming the built-in architectures left out because they take other images or
    classes than the data's (None when all fit)."""
    unfit = [a for a in builtin_archs() if (tuple(a.input), a.classes) != (d.shape, d.classes)]
    if not unfit:
        return None
    takes = sorted({f"{'x'.join(map(str, a.input))} images in {a.classes} classes" for a in unfit})
    return (
        f"the built-in seed networks {', '.join(a.name for a in unfit)} take {' or '.join(takes)}, "
        f"not {d.name}'s {'x'.join(map(str, d.shape))} in {d.classes}: the study starts without them "
        "(--seed-arch FILE gives it one of yours)"
    )


def seed_configs(space: Space, seed_archs: Iterable[dict[str, Any]], max_epochs: int) -> list[dict[str, Any]]:
    """The trial parameters that replay each seed network in the space (SpecError if one
    is not a point of it)."""
    out = []
    for data in seed_archs:
        where = f"seed architecture {data.get('name', '')}".strip()
        arch = arch_from_dict(data, where)
        cfg = TrainConfig.from_dict({**arch.train, "epochs": max_epochs}, where)
        out.append(params_for(space, arch, cfg, where))
    return out
