"""The budgets a study can limit and minimise, in one registry (torch-free).

Each resource says where its limit lives (a StudySettings field, whose flag follows from its
name), the limit's unit, how to read the value from nas.arch.costs.Costs and which trial attribute
stores it. The worker, the CLI, the analytics and the report all go through this table, so a
new resource is one entry here plus its StudySettings field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from nas.arch.costs import KB, Costs, costs
from nas.arch.spec import arch_from_dict


def flag(key: str) -> str:
    """The command-line flag of a StudySettings field (here, below settings, so both can use it)."""
    return {"seed_archs": "--seed-arch"}.get(key, "--" + key.replace("_", "-"))


@dataclass(frozen=True)
class Resource:
    name: str  # the --minimize choice and the set_constraint key
    setting: str  # the StudySettings field of its limit (None: no limit); its flag is flag(setting)
    unit: str  # of the limit as given
    scale: int  # value units (of `attr`) per limit unit, e.g. 1,000 bytes per KB
    attr: str  # the trial user attribute that stores the value
    label: str  # for tables and messages
    read: Callable[[Costs], int]
    value_unit: str  # of the value stored in `attr`, where the label does not say it

    @property
    def flag(self) -> str:
        return flag(self.setting)

    def limit(self, settings: Any) -> float | None:
        """The study's limit in value units (bytes, not KB), or None for no limit."""
        given = getattr(settings, self.setting)
        return None if given is None else given * self.scale

    def value(self, attrs: Mapping[str, Any]) -> int:
        """The value on a trial (its user attributes); computed from the stored architecture for
        trials made before this resource was recorded."""
        if self.attr in attrs:
            return attrs[self.attr]
        return self.read(costs(arch_from_dict(json.loads(attrs["arch"]), "trial architecture")))

    def format(self, value: float) -> str:
        return f"{value:,.0f} {self.value_unit}".rstrip()


RESOURCES: tuple[Resource, ...] = (
    Resource("params", "max_params", "parameters", 1, "params", "parameters", lambda c: c.params, ""),
    Resource("macs", "max_macs", "MACs", 1, "macs", "MACs", lambda c: c.macs, ""),
    Resource(
        "activation",
        "max_activation_kb",
        "KB",
        KB,
        "activation_int8_bytes",
        "peak int8 activations",
        lambda c: c.activation_int8,
        "B",
    ),
    Resource(
        "model-bytes", "max_model_kb", "KB", KB, "model_int8_bytes", "int8 model size", lambda c: c.model_int8, "B"
    ),
)
NAMES = tuple(r.name for r in RESOURCES)


def resource(name: str) -> Resource:
    return next(r for r in RESOURCES if r.name == name)


# The fp32 twin of a resource stored in int8 bytes, for review (limits apply to the int8 figures).
FP32_ATTRS = {"activation": "activation_fp32_bytes", "model-bytes": "model_fp32_bytes"}


def trial_attrs(c: Costs) -> dict[str, int]:
    """Every cost to store on a trial: each resource's attribute, and the fp32 figures for review."""
    return {
        **{r.attr: r.read(c) for r in RESOURCES},
        FP32_ATTRS["activation"]: c.activation_fp32,
        FP32_ATTRS["model-bytes"]: c.model_fp32,
    }


class Violation(NamedTuple):
    resource: Resource
    value: int
    limit: float

    def __str__(self) -> str:
        return f"{self.resource.label} {self.resource.format(self.value)} > {self.resource.format(self.limit)}"


def violations(c: Costs, settings: Any) -> list[Violation]:
    """The study's limits that these costs exceed, in registry order."""
    out = []
    for r in RESOURCES:
        limit = r.limit(settings)
        if limit is not None and r.read(c) > limit:
            out.append(Violation(r, r.read(c), limit))
    return out


def constraints(c: Costs | None, settings: Any) -> dict[str, float]:
    """Values for trial.set_constraint (feasible when <= 0): 'valid', plus each resource the study
    limits as value / limit - 1, so constraints of different units weigh alike. The keys depend
    only on the study's stored settings, so every trial of a study carries the same ones (as
    GPSampler needs); an invalid architecture (c is None) is infeasible through 'valid' alone.
    Unlimited resources get no key: a constant column would only cost GPSampler a model fit."""
    out = {"valid": 0.0 if c is not None else 1.0}
    for r in RESOURCES:
        limit = r.limit(settings)
        if limit is not None:
            out[r.name] = 0.0 if c is None else r.read(c) / limit - 1.0
    return out
