"""Search spaces as data: a TOML file becomes a Space, checked key by key so a mistake is named
by its key, and a space is fitted to the data it is searched on.

What follows from a Space lives beside this module: sampling an architecture from it (genome.py),
its exact cheapest networks (cheapest.py) and the description `nas space show` prints
(describe.py). The names the rest of nas and its users import from here (listed in __all__) stay
importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.arch.spec import (
    BUILTIN,
    HEADS,
    MAX_CHANNELS,
    MAX_STRIDE,
    ORDERS,
    POOLS,
    builtin_names,
    classes,
    input_shape,
    locate,
    read_toml,
)
from nas.errors import SpecError
from nas.space.cheapest import cheapest
from nas.space.choices import ARCHITECTURE_CHOICES, DROPOUT_PLACES, OPTIONAL_TRAINING, PADDINGS, Space, Stage
from nas.space.describe import architecture_count, describe
from nas.space.genome import Chooser, decode, genome, params_for, point_key, random_archs, sample
from nas.train.config import OPTIMIZERS, TrainConfig

if TYPE_CHECKING:
    from nas.data.datasets import DatasetSpec

__all__ = [
    # what a space offers (nas.space.choices)
    "Space",
    "Stage",
    # reading a space (here)
    "DEFAULT_SPACE",
    "load_space",
    "read_space",
    "space_for",
    "space_from_dict",
    # sampling it (nas.space.genome)
    "Chooser",
    "decode",
    "genome",
    "params_for",
    "point_key",
    "random_archs",
    "sample",
    # measuring it (nas.space.cheapest, nas.space.describe)
    "architecture_count",
    "cheapest",
    "describe",
]


def _choices(
    where: str, table: dict[str, Any], key: str, kind: type, allowed: Sequence[Any] | None = None, prefix: str = ""
) -> list[Any]:
    full = f"{prefix}{key}"
    if key not in table:
        raise SpecError(where, full, "missing")
    value = table[key]
    if not isinstance(value, list) or not value:
        raise SpecError(where, full, f"expected a non-empty list of choices, got {value!r}")
    for v in value:
        ok = isinstance(v, kind) and not (kind is not bool and isinstance(v, bool))
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok or (allowed is not None and v not in allowed):
            expect = f"one of {', '.join(map(str, allowed))}" if allowed else kind.__name__
            raise SpecError(where, full, f"choice {v!r} is not {expect}")
    if kind is int and any(not 1 <= v <= MAX_CHANNELS for v in value):
        raise SpecError(where, full, f"choices must be between 1 and {MAX_CHANNELS:,}")
    return [float(v) for v in value] if kind is float else list(value)


def _range(where: str, table: dict[str, Any], key: str, kind: type, prefix: str) -> tuple[Any, Any]:
    value = table.get(key)
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise SpecError(where, f"{prefix}{key}", f"expected [low, high], got {value!r}")
    low, high = (kind(v) for v in value)
    if not 0 < low <= high or (kind is int and low < 1):
        raise SpecError(where, f"{prefix}{key}", f"need 0 < low <= high (got {value!r})")
    return low, high


def _no_extra(where: str, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for k in table:
        if k not in allowed:
            raise SpecError(where, f"{prefix}{k}", f"unknown key; expected one of {', '.join(sorted(allowed))}")


def _table(where: str, data: dict[str, Any], key: str) -> dict[str, Any]:
    table = data.get(key)
    if not isinstance(table, dict):
        raise SpecError(where, key, "missing table")
    return table


def space_from_dict(data: dict[str, Any], where: str) -> Space:
    _no_extra(where, data, {"name", "input", "classes", "architecture", "training"}, "")
    a, t = _table(where, data, "architecture"), _table(where, data, "training")
    _no_extra(
        where,
        a,
        {*ARCHITECTURE_CHOICES, "stage"},
        "architecture.",
    )
    _no_extra(
        where,
        t,
        {"optimizer", "batch_size", "augment", "label_smoothing", *OPTIONAL_TRAINING, *(f"lr_{o}" for o in OPTIMIZERS)},
        "training.",
    )
    raw_stages = a.get("stage")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise SpecError(where, "architecture.stage", "missing; add [[architecture.stage]] tables, one per stage")
    stages = []
    for n, s in enumerate(raw_stages):
        p = f"architecture.stage[{n}]."
        _no_extra(where, s, {"blocks", "channels", "padding", "transition", "stride", "pointwise", "separable"}, p)
        stages.append(
            Stage(
                _range(where, s, "blocks", int, p),
                _choices(where, s, "channels", int, prefix=p),
                _choices(where, s, "padding", str, PADDINGS, p) if "padding" in s else ["same"],
                _choices(where, s, "transition", bool, prefix=p) if "transition" in s else [False],
                _choices(where, s, "stride", int, range(1, MAX_STRIDE + 1), p) if "stride" in s else [1],
                _choices(where, s, "pointwise", bool, prefix=p) if "pointwise" in s else [False],
                _choices(where, s, "separable", bool, prefix=p) if "separable" in s else [False],
            )
        )
    pa, pt = "architecture.", "training."
    space = Space(
        name=data.get("name", Path(where).stem),
        stages=_choices(where, a, "stages", int, prefix=pa),
        stage=stages,
        kernel=_choices(where, a, "kernel", int, prefix=pa),
        pool=_choices(where, a, "pool", str, POOLS, pa),
        order=_choices(where, a, "order", str, ORDERS, pa),
        dropout=_choices(where, a, "dropout", float, prefix=pa),
        head=_choices(where, a, "head", str, HEADS, pa),
        head_kernel=_choices(where, a, "head_kernel", int, prefix=pa) if "head_kernel" in a else [1],
        optimizer=_choices(where, t, "optimizer", str, OPTIMIZERS, pt),
        lr={},
        batch_size=_choices(where, t, "batch_size", int, prefix=pt),
        augment=_choices(where, t, "augment", bool, prefix=pt) if "augment" in t else [False],
        label_smoothing=_choices(where, t, "label_smoothing", float, prefix=pt) if "label_smoothing" in t else [0.0],
        input=input_shape(data, where),
        classes=classes(data, where),
        dropout_at=_choices(where, a, "dropout_at", str, DROPOUT_PLACES, pa) if "dropout_at" in a else ["block"],
        bias=_choices(where, a, "bias", bool, prefix=pa) if "bias" in a else [True],
        final_bn=_choices(where, a, "final_bn", bool, prefix=pa) if "final_bn" in a else [True],
        dw_relu=_choices(where, a, "dw_relu", bool, prefix=pa) if "dw_relu" in a else [False],
        **{k: _choices(where, t, k, float, prefix=pt) for k in OPTIONAL_TRAINING if k in t},
    )
    space.lr = {o: _range(where, t, f"lr_{o}", float, pt) for o in space.optimizer}
    if max(space.stages) > len(stages):
        raise SpecError(
            where,
            "architecture.stages",
            f"asks for up to {max(space.stages)} stages but {len(stages)} [[architecture.stage]] tables are given",
        )
    if any(k % 2 == 0 for k in space.kernel + space.head_kernel):
        raise SpecError(where, "architecture.kernel", "kernel sizes must be odd")
    if any(not 0 <= p < 1 for p in space.dropout):
        raise SpecError(where, "architecture.dropout", "dropout choices must be in [0, 1)")
    for key in OPTIONAL_TRAINING:
        for v in getattr(space, key):
            try:
                TrainConfig(**{key: v})
            except SpecError as e:
                raise SpecError(where, f"training.{key}", f"choice {v!r}: {e.problem}") from None
    return space


DEFAULT_SPACE = BUILTIN / "mnist_fcn.toml"


def read_space(path: str | Path) -> dict[str, Any]:
    """The raw content of a space file, or of a built-in space by name (e.g. mnist_fcn); a study
    stores this content, not the path."""
    return read_toml(
        locate(path, BUILTIN, "search space"), f"a search space .toml or a built-in one ({builtin_names(BUILTIN)})"
    )


def load_space(path: str | Path) -> Space:
    return space_from_dict(read_space(path), str(path))


def space_for(raw: dict[str, Any], dataset: DatasetSpec, where: str) -> Space:
    """A space as searched on `dataset`: its input and classes are the data's. A file that leaves
    them out takes the data's; one that states other ones is refused."""
    filled = dict(raw)
    for key, value in (("input", list(dataset.shape)), ("classes", dataset.classes)):
        if key not in filled:
            filled[key] = value
        elif filled[key] != value:
            raise SpecError(
                where,
                key,
                f"is {filled[key]} but the data ({dataset.name}) has {value}; "
                f"drop {key} from the space file to take the data's, or set {key} = {value}",
            )
    return space_from_dict(filled, where)
