"""Search spaces as data: a TOML file becomes a Space; a trial (or any chooser) becomes an Arch.

`sample` asks its chooser through the three methods an Optuna trial has (suggest_categorical,
suggest_int, suggest_float), so the same code samples for the search, replays a FixedTrial and
draws random architectures for the size estimates of `nas space show`. `params_for` is its
inverse: it proves the seed is a point of the space and gives the parameters to enqueue it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from nas.arch import BUILTIN, HEADS, MAX_CHANNELS, MAX_STRIDE, ORDERS, POOLS, Arch, Conv, Costs, Dropout, Head, Pool, builtin_names, classes, costs, input_shape, locate, read_toml
from nas.config import DEFAULT_EPOCHS, OPTIMIZERS, TrainConfig
from nas.errors import SpecError
from nas.resources import RESOURCES

PADDINGS = ("same", "valid")


class Chooser(Protocol):
    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclass
class Stage:
    blocks: tuple[int, int]
    channels: list[int]
    padding: list[str] = field(default_factory=lambda: ["same"])
    transition: list[bool] = field(default_factory=lambda: [False])
    stride: list[int] = field(default_factory=lambda: [1])  # of the stage's first kxk conv


@dataclass
class Space:
    name: str
    stages: list[int]
    stage: list[Stage]
    kernel: list[int]
    pool: list[str]
    order: list[str]
    dropout: list[float]
    head: list[str]
    head_kernel: list[int]
    optimizer: list[str]
    lr: dict[str, tuple[float, float]]
    batch_size: list[int]
    augment: list[bool]
    label_smoothing: list[float]
    input: tuple[int, int, int] = (1, 28, 28)
    classes: int = 10


def _choices(where: str, table: dict[str, Any], key: str, kind: type, allowed: Sequence[Any] | None = None, prefix: str = "") -> list[Any]:
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
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise SpecError(where, f"{prefix}{key}", f"expected [low, high], got {value!r}")
    low, high = (kind(v) for v in value)
    if not 0 < low <= high or (kind is int and low < 1):
        raise SpecError(where, f"{prefix}{key}", f"need 0 < low <= high (got {value!r})")
    return low, high


def _no_extra(where: str, table: dict[str, Any], allowed: set[str], prefix: str) -> None:
    for k in table:
        if k not in allowed:
            raise SpecError(where, f"{prefix}{k}", f"unknown key; expected one of {', '.join(sorted(allowed))}")


def space_from_dict(data: dict[str, Any], where: str) -> Space:
    _no_extra(where, data, {"name", "input", "classes", "architecture", "training"}, "")
    a, t = data.get("architecture"), data.get("training")
    for key, table in (("architecture", a), ("training", t)):
        if not isinstance(table, dict):
            raise SpecError(where, key, "missing table")
    _no_extra(where, a, {"stages", "kernel", "pool", "order", "dropout", "head", "head_kernel", "stage"}, "architecture.")
    _no_extra(where, t, {"optimizer", "batch_size", "augment", "label_smoothing", *(f"lr_{o}" for o in OPTIMIZERS)}, "training.")
    raw_stages = a.get("stage")
    if not isinstance(raw_stages, list) or not raw_stages:
        raise SpecError(where, "architecture.stage", "missing; add [[architecture.stage]] tables, one per stage")
    stages = []
    for n, s in enumerate(raw_stages):
        p = f"architecture.stage[{n}]."
        _no_extra(where, s, {"blocks", "channels", "padding", "transition", "stride"}, p)
        stages.append(Stage(_range(where, s, "blocks", int, p), _choices(where, s, "channels", int, prefix=p),
                            _choices(where, s, "padding", str, PADDINGS, p) if "padding" in s else ["same"],
                            _choices(where, s, "transition", bool, prefix=p) if "transition" in s else [False],
                            _choices(where, s, "stride", int, range(1, MAX_STRIDE + 1), p) if "stride" in s else [1]))
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
    )
    space.lr = {o: _range(where, t, f"lr_{o}", float, pt) for o in space.optimizer}
    if max(space.stages) > len(stages):
        raise SpecError(where, "architecture.stages", f"asks for up to {max(space.stages)} stages but {len(stages)} [[architecture.stage]] tables are given")
    if any(k % 2 == 0 for k in space.kernel + space.head_kernel):
        raise SpecError(where, "architecture.kernel", "kernel sizes must be odd")
    if any(not 0 <= p < 1 for p in space.dropout):
        raise SpecError(where, "architecture.dropout", "dropout choices must be in [0, 1)")
    return space


DEFAULT_SPACE = BUILTIN / "mnist_fcn.toml"


def read_space(path: str | Path) -> dict[str, Any]:
    """The raw content of a space file, or of a built-in space by name (e.g. mnist_fcn); a study
    stores this content, not the path."""
    return read_toml(locate(path, BUILTIN, "search space"), f"a search space .toml or a built-in one ({builtin_names(BUILTIN)})")


def load_space(path: str | Path) -> Space:
    return space_from_dict(read_space(path), str(path))


def sample(space: Space, trial: Chooser, epochs: int = DEFAULT_EPOCHS) -> tuple[Arch, TrainConfig]:
    """Draw an architecture and its training settings (the Arch may still be invalid or too big)."""
    cat = trial.suggest_categorical
    n_stages = cat("stages", space.stages)
    kernel, pool, order, dropout = cat("kernel", space.kernel), cat("pool", space.pool), cat("order", space.order), cat("dropout", space.dropout)
    layers: list[Any] = []
    for i, st in enumerate(space.stage[:n_stages], 1):
        pad = kernel // 2 if cat(f"s{i}_padding", st.padding) == "same" else 0
        stride = cat(f"s{i}_stride", st.stride)
        if cat(f"s{i}_transition", st.transition):
            layers.append(Conv(cat(f"s{i}_t", st.channels), kernel=1, padding=0, order=order))
        for j in range(1, trial.suggest_int(f"s{i}_blocks", *st.blocks) + 1):
            layers.append(Conv(cat(f"s{i}_c{j}", st.channels), kernel=kernel, padding=pad, order=order, stride=stride if j == 1 else 1))
            if dropout > 0:
                layers.append(Dropout(dropout))
        if i < n_stages:
            layers.append(Pool(pool))
    head_type = cat("head", space.head)
    head = Head(head_type, cat("head_kernel", space.head_kernel)) if head_type == "conv_gap" else Head("gap_conv")
    opt = cat("optimizer", space.optimizer)
    cfg = TrainConfig(
        epochs=epochs,
        optimizer=opt,
        lr=trial.suggest_float(f"lr_{opt}", *space.lr[opt], log=True),
        batch_size=cat("batch_size", space.batch_size),
        augment=cat("augment", space.augment),
        label_smoothing=cat("label_smoothing", space.label_smoothing),
    )
    return Arch(layers=layers, head=head, input=space.input, classes=space.classes), cfg


class _Recorder:
    """A chooser that answers from known values and checks each lies in the space."""

    def __init__(self, values: dict[str, Any], where: str):
        self.values, self.where, self.params = values, where, {}

    def _take(self, name: str, ok: Any, what: str) -> Any:
        if name not in self.values:
            raise SpecError(self.where, name, "the architecture has no value for this choice of the space")
        v = self.values[name]
        if not ok(v):
            raise SpecError(self.where, name, f"{v!r} is not in the space ({what})")
        self.params[name] = v
        return v

    def suggest_categorical(self, name, choices):
        return self._take(name, lambda v: v in choices, f"choices {list(choices)}")

    def suggest_int(self, name, low, high):
        return self._take(name, lambda v: low <= v <= high, f"range [{low}, {high}]")

    def suggest_float(self, name, low, high, *, log=False):
        return self._take(name, lambda v: low <= v <= high, f"range [{low}, {high}]")


def params_for(space: Space, arch: Arch, cfg: TrainConfig, where: str = "seed") -> dict[str, Any]:
    """The trial parameters under which `sample` yields exactly (arch, cfg); SpecError if none."""
    convs = [layer for layer in arch.layers if isinstance(layer, Conv)]
    pools = [layer for layer in arch.layers if isinstance(layer, Pool)]
    drops = [layer for layer in arch.layers if isinstance(layer, Dropout)]
    first = convs[0] if convs else Conv(1)
    values: dict[str, Any] = {
        "stages": len(pools) + 1, "kernel": max((c.kernel for c in convs), default=3), "order": first.order,
        "pool": pools[0].kind if pools else space.pool[0], "dropout": drops[0].p if drops else 0.0,
        "head": arch.head.type, "optimizer": cfg.optimizer, f"lr_{cfg.optimizer}": cfg.lr, "batch_size": cfg.batch_size,
        "augment": cfg.augment, "label_smoothing": cfg.label_smoothing,
    }
    if arch.head.type == "conv_gap":
        values["head_kernel"] = arch.head.kernel
    stage, block = 1, 0
    for layer in arch.layers:
        if isinstance(layer, Pool):
            stage, block = stage + 1, 0
        elif isinstance(layer, Conv) and layer.kernel == 1 and block == 0 and values["kernel"] != 1:
            values[f"s{stage}_transition"], values[f"s{stage}_t"] = True, layer.out
        elif isinstance(layer, Conv):
            block += 1
            values[f"s{stage}_c{block}"], values[f"s{stage}_blocks"] = layer.out, block
            if block == 1:
                values[f"s{stage}_stride"] = layer.stride
            values[f"s{stage}_padding"] = "same" if layer.padding == layer.kernel // 2 else "valid"
            values.setdefault(f"s{stage}_transition", False)
    recorder = _Recorder(values, where)
    again, again_cfg = sample(space, recorder, cfg.epochs)
    if again.layers != arch.layers or again.head != arch.head or again_cfg != cfg:
        raise SpecError(where, "layers", f"is not a point of search space {space.name} (stages, paddings or per-block options differ)")
    return recorder.params


def random_archs(space: Space, n: int, seed: int = 0) -> list[Arch]:
    """n architectures drawn uniformly at each choice, for estimates."""
    rng = random.Random(seed)

    class Draw:
        def suggest_categorical(self, name, choices):
            return rng.choice(list(choices))

        def suggest_int(self, name, low, high):
            return rng.randint(low, high)

        def suggest_float(self, name, low, high, *, log=False):
            return math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)

    return [sample(space, Draw())[0] for _ in range(n)]


class _Corners:
    """A chooser that walks every branch of the choices that shape an architecture's costs, taking
    only the smallest of the rest (see `cheapest`). `prefix` fixes the first decisions; later
    ones take their first option, and `options` records what each could have been."""

    def __init__(self, prefix: list[Any]):
        self.prefix, self.taken, self.options = prefix, [], []
        self.values: dict[str, Any] = {}

    def _pick(self, name: str, options: list[Any]) -> Any:
        i = len(self.taken)
        value = self.prefix[i] if i < len(self.prefix) else options[0]
        self.taken.append(value)
        self.options.append(options)
        self.values[name] = value
        return value

    def suggest_categorical(self, name, choices):
        choices = list(choices)
        if re.fullmatch(r"s\d+_(c\d+|t)", name):  # channels: fewer never cost more
            return self._pick(name, [min(choices)])
        if name in ("pool", "dropout", "optimizer", "batch_size", "augment", "label_smoothing"):  # no effect on the costs
            return self._pick(name, choices[:1])
        return self._pick(name, choices)

    def suggest_int(self, name, low, high):
        stage = re.fullmatch(r"s(\d+)_blocks", name)
        if stage and self.values.get(f"s{stage[1]}_padding") == "valid":  # unpadded blocks shrink later maps: try each
            return self._pick(name, list(range(low, high + 1)))
        return self._pick(name, [low])  # padded blocks only add

    def suggest_float(self, name, low, high, *, log=False):
        return self._pick(name, [low])


def cheapest(space: Space) -> list[Costs]:
    """The costs of the cheapest valid architectures of the space: for any valid architecture of
    it, one of these costs no more in every resource (parameters, MACs, activations, model bytes).

    Every cost grows with every channel count and with padded blocks, so those are taken at their
    smallest; every other choice that shapes the costs (stages, kernel, BN/ReLU order, strides,
    paddings, transitions, unpadded blocks, head) is walked in full. About a thousand
    architectures for the default space, a fraction of a second."""
    found, stack = [], [[]]
    while stack:
        prefix = stack.pop()
        walk = _Corners(prefix)
        arch, _ = sample(space, walk)
        for i in range(len(prefix), len(walk.options)):
            stack.extend(walk.taken[:i] + [other] for other in walk.options[i][1:])
        try:
            found.append(costs(arch))
        except SpecError:
            pass  # collapsed feature maps: not an architecture the search trains
    return found


def architecture_count(space: Space) -> int:
    """Exact number of distinct architecture choices (training choices excluded)."""
    total = 0
    heads = (len(space.head_kernel) if "conv_gap" in space.head else 0) + (1 if "gap_conv" in space.head else 0)
    for n in space.stages:
        per = 1
        for st in space.stage[:n]:
            c = len(st.channels)
            blocks = sum(c**b for b in range(st.blocks[0], st.blocks[1] + 1))
            trans = sum(c if t else 1 for t in st.transition)
            per *= blocks * trans * len(st.padding) * len(st.stride)
        total += per * (len(space.pool) if n > 1 else 1)
    return total * heads * len(space.kernel) * len(space.order) * len(space.dropout)


def describe(space: Space, samples: int = 4000, **limits: float | None) -> str:
    """Human-readable summary of a space: its size and, from random draws, the range of each
    resource (nas.resources) and the share of draws within the limits given, by their
    StudySettings names (max_params=20_000, max_activation_kb=2.5, ...; None: no limit)."""
    unknown = sorted(set(limits) - {r.setting for r in RESOURCES})
    if unknown:
        raise TypeError(f"describe() got unknown limit {unknown[0]!r}")
    found, invalid = [], 0
    for arch in random_archs(space, samples):
        try:
            found.append(costs(arch))
        except SpecError:
            invalid += 1
    lines = [f"search space {space.name}  (input {'x'.join(map(str, space.input))}, {space.classes} classes)",
             f"  stages: {space.stages}   kernel: {space.kernel}   pool: {space.pool}   order: {space.order}",
             f"  dropout: {space.dropout}   head: {space.head}   head kernel: {space.head_kernel}"]
    for i, st in enumerate(space.stage, 1):
        lines.append(f"  stage {i}: blocks {st.blocks[0]}-{st.blocks[1]}  channels {st.channels}  padding {st.padding}  "
                     f"transition {st.transition}  first stride {st.stride}")
    lines.append(f"  training: optimizer {space.optimizer}  lr {space.lr}  batch {space.batch_size}  augment {space.augment}  label smoothing {space.label_smoothing}")
    lines.append(f"  size: {architecture_count(space):.3e} architectures (times the training choices)")
    given = [(r, limits[r.setting]) for r in RESOURCES if limits.get(r.setting) is not None]
    if found:
        lines.append(f"  estimates from {samples} random draws ({len(found)} valid):")
        for r in RESOURCES:
            values = sorted(r.read(c) for c in found)
            lines.append(f"    {r.label}: min {r.format(values[0])}  median {r.format(values[len(values) // 2])}  max {r.format(values[-1])}")
        for r, limit in given:
            inside = sum(r.read(c) <= limit * r.scale for c in found) / len(found)
            lines.append(f"  within {r.flag} {limit:,}: {100 * inside:.1f} % of valid draws")
        if len(given) > 1:
            inside = sum(all(r.read(c) <= limit * r.scale for r, limit in given) for c in found) / len(found)
            lines.append(f"  within all these limits: {100 * inside:.1f} % of valid draws")
    lines.append(f"  invalid (feature map collapses): {100 * invalid / samples:.1f} % of draws")
    return "\n".join(lines)
