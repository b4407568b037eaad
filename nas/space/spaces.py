"""Search spaces as data: a TOML file becomes a Space; a trial (or any chooser) becomes an Arch.

`sample` asks its chooser through the three methods an Optuna trial has (suggest_categorical,
suggest_int, suggest_float), so the same code samples for the search, replays a FixedTrial and
draws random architectures for the size estimates of `nas space show`. `params_for` is its
inverse: it proves the seed is a point of the space and gives the parameters to enqueue it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nas.arch.budgets import RESOURCES
from nas.arch.spec import (
    BUILTIN,
    CONVS,
    HEADS,
    MAX_CHANNELS,
    MAX_STRIDE,
    ORDERS,
    POOLS,
    Arch,
    Conv,
    Costs,
    Dropout,
    Head,
    Pool,
    SepConv,
    arch_to_json,
    builtin_names,
    classes,
    costs,
    input_shape,
    locate,
    plan,
    read_toml,
    step_costs,
)
from nas.errors import SpecError
from nas.train.config import DEFAULT_EPOCHS, OPTIMIZERS, TrainConfig

if TYPE_CHECKING:
    from nas.data.datasets import DatasetSpec

PADDINGS = ("same", "valid")
DROPOUT_PLACES = ("block", "pool")  # after every conv block, or once after each pooling
OPTIONAL_TRAINING = ("weight_decay", "rotate", "translate", "scale")  # TrainConfig fields a space may list choices for


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
    pointwise: list[bool] = field(default_factory=lambda: [False])  # may a block after the first be a 1x1 conv
    separable: list[bool] = field(
        default_factory=lambda: [False]
    )  # kxk blocks depthwise-separable (never the network's first conv)


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
    dropout_at: list[str] = field(default_factory=lambda: ["block"])
    bias: list[bool] = field(default_factory=lambda: [True])  # of every conv and the head
    final_bn: list[bool] = field(default_factory=lambda: [True])  # BatchNorm on the last conv block
    dw_relu: list[bool] = field(default_factory=lambda: [False])  # ReLU after a separable block's depthwise conv
    # Training choices beyond the required ones; one option each unless the file lists more.
    weight_decay: list[float] = field(default_factory=lambda: [TrainConfig.weight_decay])
    rotate: list[float] = field(default_factory=lambda: [TrainConfig.rotate])
    translate: list[float] = field(default_factory=lambda: [TrainConfig.translate])
    scale: list[float] = field(default_factory=lambda: [TrainConfig.scale])


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


def space_from_dict(data: dict[str, Any], where: str) -> Space:
    _no_extra(where, data, {"name", "input", "classes", "architecture", "training"}, "")
    a, t = data.get("architecture"), data.get("training")
    for key, table in (("architecture", a), ("training", t)):
        if not isinstance(table, dict):
            raise SpecError(where, key, "missing table")
    _no_extra(
        where,
        a,
        {
            "stages",
            "kernel",
            "pool",
            "order",
            "dropout",
            "dropout_at",
            "bias",
            "final_bn",
            "dw_relu",
            "head",
            "head_kernel",
            "stage",
        },
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
                f"is {filled[key]} but the data ({dataset.name}) has {value}; drop {key} from the space file to take the data's, or set {key} = {value}",
            )
    return space_from_dict(filled, where)


def point_key(arch: Arch, cfg: TrainConfig, seeds: int) -> str:
    """Identifies what a trial trains: the same key means the same result, so it is not trained twice."""
    same = json.loads(arch_to_json(replace(arch, name="")))
    return hashlib.sha256(json.dumps([same, cfg.to_dict(), seeds], sort_keys=True).encode()).hexdigest()[:16]


def genome(space: Space, trial: Chooser) -> dict[str, Any]:
    """Every choice of the space, asked in one fixed order whatever the other answers are: a
    fixed-length encoding, so every sampler sees the same parameters on every trial (the blocks,
    stages and learning rates an architecture does not use are asked all the same, and ignored by
    `decode`). A choice with one option is no parameter: it is not asked."""
    g: dict[str, Any] = {}

    def ask(name: str, choices: list[Any]) -> None:
        g[name] = choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

    for name in (
        "stages",
        "kernel",
        "pool",
        "order",
        "dropout",
        "dropout_at",
        "bias",
        "final_bn",
        "dw_relu",
        "head",
        "head_kernel",
    ):
        ask(name, getattr(space, name))
    for i, st in enumerate(space.stage[: max(space.stages)], 1):
        ask(f"s{i}_padding", st.padding)
        ask(f"s{i}_stride", st.stride)
        ask(f"s{i}_sep", st.separable)
        ask(f"s{i}_transition", st.transition)
        if True in st.transition:
            ask(f"s{i}_t", st.channels)
        g[f"s{i}_blocks"] = (
            st.blocks[0] if st.blocks[0] == st.blocks[1] else trial.suggest_int(f"s{i}_blocks", *st.blocks)
        )
        for j in range(1, st.blocks[1] + 1):
            ask(f"s{i}_c{j}", st.channels)
            if j > 1:
                ask(f"s{i}_pw{j}", st.pointwise)
    ask("optimizer", space.optimizer)
    for opt in space.optimizer:
        g[f"lr_{opt}"] = trial.suggest_float(f"lr_{opt}", *space.lr[opt], log=True)
    for name in ("batch_size", "augment", "label_smoothing", *OPTIONAL_TRAINING):
        ask(name, getattr(space, name))
    return g


def _block(g: dict[str, Any], i: int, j: int, after_a_conv: bool) -> Conv | SepConv:
    """Block j of stage i as the genome says: a 1x1 conv, a separable or a full kxk conv (the
    network's first conv is never separable)."""
    kernel, order, bias = g["kernel"], g["order"], g["bias"]
    pad, out, stride = (
        kernel // 2 if g[f"s{i}_padding"] == "same" else 0,
        g[f"s{i}_c{j}"],
        g[f"s{i}_stride"] if j == 1 else 1,
    )
    if j > 1 and g[f"s{i}_pw{j}"]:
        return Conv(out, kernel=1, padding=0, order=order, bias=bias)
    if g[f"s{i}_sep"] and after_a_conv:
        return SepConv(out, kernel=kernel, padding=pad, order=order, bias=bias, stride=stride, dw_relu=g["dw_relu"])
    return Conv(out, kernel=kernel, padding=pad, order=order, stride=stride, bias=bias)


def _head(g: dict[str, Any]) -> Head:
    return (
        Head("conv_gap", g["head_kernel"], bias=g["bias"])
        if g["head"] == "conv_gap"
        else Head("gap_conv", bias=g["bias"])
    )


def decode(space: Space, g: dict[str, Any], epochs: int = DEFAULT_EPOCHS) -> tuple[Arch, TrainConfig]:
    """The architecture and training settings a genome stands for (the Arch may still be invalid
    or too big)."""
    dropout = g["dropout"]
    where = g["dropout_at"] if dropout > 0 else None
    layers: list[Any] = []
    for i in range(1, g["stages"] + 1):
        if g[f"s{i}_transition"]:
            layers.append(Conv(g[f"s{i}_t"], kernel=1, padding=0, order=g["order"], bias=g["bias"]))
        for j in range(1, g[f"s{i}_blocks"] + 1):
            layers.append(_block(g, i, j, any(isinstance(layer, CONVS) for layer in layers)))
            if where == "block":
                layers.append(Dropout(dropout))
        if i < g["stages"]:
            layers.append(Pool(g["pool"]))
            if where == "pool":
                layers.append(Dropout(dropout))
    last = max(n for n, layer in enumerate(layers) if isinstance(layer, CONVS))
    layers[last] = replace(layers[last], bn=g["final_bn"])
    cfg = TrainConfig(
        epochs=epochs,
        optimizer=g["optimizer"],
        lr=g[f"lr_{g['optimizer']}"],
        batch_size=g["batch_size"],
        augment=g["augment"],
        label_smoothing=g["label_smoothing"],
        **{k: g[k] for k in OPTIONAL_TRAINING},
    )
    return Arch(layers=layers, head=_head(g), input=space.input, classes=space.classes), cfg


def sample(space: Space, trial: Chooser, epochs: int = DEFAULT_EPOCHS) -> tuple[Arch, TrainConfig]:
    """Draw an architecture and its training settings (the Arch may still be invalid or too big)."""
    return decode(space, genome(space, trial), epochs)


class _Recorder:
    """A chooser that answers from known values and checks each lies in the space; a choice the
    architecture does not use (a block it lacks) gets the first option."""

    def __init__(self, values: dict[str, Any], where: str):
        self.values, self.where, self.params = values, where, {}

    def _take(self, name: str, ok: Any, what: str, unused: Any) -> Any:
        v = self.values.get(name, unused)
        if not ok(v):
            raise SpecError(self.where, name, f"{v!r} is not in the space ({what})")
        self.params[name] = v
        return v

    def suggest_categorical(self, name, choices):
        return self._take(name, lambda v: v in choices, f"choices {list(choices)}", choices[0])

    def suggest_int(self, name, low, high):
        return self._take(name, lambda v: low <= v <= high, f"range [{low}, {high}]", low)

    def suggest_float(self, name, low, high, *, log=False):
        return self._take(name, lambda v: low <= v <= high, f"range [{low}, {high}]", low)


def params_for(space: Space, arch: Arch, cfg: TrainConfig, where: str = "seed") -> dict[str, Any]:
    """The trial parameters under which `sample` yields exactly (arch, cfg); SpecError if none
    (an architecture for other images or classes than the space's is none)."""
    for key, mine, its in (("input", list(arch.input), list(space.input)), ("classes", arch.classes, space.classes)):
        if mine != its:
            raise SpecError(
                where,
                key,
                f"is {mine}, but search space {space.name} searches {its} (the data's); give an architecture with {key} = {its}",
            )
    convs = [layer for layer in arch.layers if isinstance(layer, CONVS)]
    pools = [n for n, layer in enumerate(arch.layers) if isinstance(layer, Pool)]
    drops = [n for n, layer in enumerate(arch.layers) if isinstance(layer, Dropout)]
    first = convs[0] if convs else Conv(1)
    square = [c.kernel for c in convs if c.kernel > 1]
    values: dict[str, Any] = {
        "stages": len(pools) + 1,
        "kernel": max(square, default=max((c.kernel for c in convs), default=3)),
        "order": first.order,
        "pool": arch.layers[pools[0]].kind if pools else space.pool[0],
        "dropout": arch.layers[drops[0]].p if drops else 0.0,
        "bias": first.bias,
        "final_bn": convs[-1].bn if convs else True,
        "head": arch.head.type,
        "optimizer": cfg.optimizer,
        f"lr_{cfg.optimizer}": cfg.lr,
        "batch_size": cfg.batch_size,
        "augment": cfg.augment,
        "label_smoothing": cfg.label_smoothing,
        **{k: getattr(cfg, k) for k in OPTIONAL_TRAINING},
    }
    if drops:
        values["dropout_at"] = "pool" if drops[0] - 1 in pools else "block"
    if arch.head.type == "conv_gap":
        values["head_kernel"] = arch.head.kernel
    stage, block = 1, 0
    for layer in arch.layers:
        if isinstance(layer, Pool):
            stage, block = stage + 1, 0
        elif isinstance(layer, Conv) and layer.kernel == 1 and block == 0 and values["kernel"] != 1:
            values[f"s{stage}_transition"], values[f"s{stage}_t"] = True, layer.out
        elif isinstance(layer, CONVS):
            block += 1
            values[f"s{stage}_c{block}"], values[f"s{stage}_blocks"] = layer.out, block
            pointwise = isinstance(layer, Conv) and layer.kernel == 1 and values["kernel"] != 1
            if block > 1:
                values[f"s{stage}_pw{block}"] = pointwise
            if isinstance(layer, SepConv):
                values[f"s{stage}_sep"], values["dw_relu"] = True, layer.dw_relu
            if block == 1:
                values[f"s{stage}_stride"] = layer.stride
            if not pointwise:
                values[f"s{stage}_padding"] = "same" if layer.padding == layer.kernel // 2 else "valid"
            values.setdefault(f"s{stage}_transition", False)
            values.setdefault(f"s{stage}_sep", False)
    recorder = _Recorder(values, where)
    again, again_cfg = sample(space, recorder, cfg.epochs)
    if again.layers != arch.layers or again.head != arch.head or again_cfg != cfg:
        raise SpecError(
            where,
            "layers",
            f"is not a point of search space {space.name} (stages, paddings or per-block options differ)",
        )
    return recorder.params


def random_archs(space: Space, n: int, seed: int = 0) -> list[Arch]:
    """n architectures drawn uniformly at each choice, for estimates."""
    rng = random.Random(seed)

    class Draw:
        """Like a trial: a parameter asked twice keeps its first value."""

        def __init__(self) -> None:
            self.drawn: dict[str, Any] = {}

        def suggest_categorical(self, name, choices):
            return self.drawn.setdefault(name, rng.choice(list(choices)))

        def suggest_int(self, name, low, high):
            return self.drawn.setdefault(name, rng.randint(low, high))

        def suggest_float(self, name, low, high, *, log=False):
            return self.drawn.setdefault(
                name, math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
            )

    return [sample(space, Draw())[0] for _ in range(n)]


_Vector = tuple[int, int, int, int]  # params, MACs, int8 model bytes, peak activation elements


def _prefix(layers: list[Any], space: Space) -> tuple[tuple[int, ...], _Vector] | None:
    """The output shape and costs of the first layers of a network (None if its map collapses)."""
    arch = Arch(layers=layers, head=Head("gap_conv", bias=False), input=space.input, classes=space.classes)
    try:
        steps, per = plan(arch)[:-3], step_costs(arch)[:-3]  # the head's pool, conv and flatten left out
    except SpecError:
        return None
    return steps[-1].shape, (
        sum(x.params for x in steps),
        sum(c.macs for c in per),
        sum(c.int8_bytes for c in per),
        max(c.activation for c in per),
    )


def _undominated(
    items: list[tuple[list[Any], tuple[int, ...], _Vector]],
) -> list[tuple[list[Any], tuple[int, ...], _Vector]]:
    """Per output shape, the prefixes no other beats in every cost (what follows a prefix depends
    only on its output shape, so a dominated one can never end cheaper)."""
    kept: dict[tuple[int, ...], list[tuple[list[Any], tuple[int, ...], _Vector]]] = {}
    for item in sorted(items, key=lambda x: x[2]):
        same = kept.setdefault(item[1], [])
        if not any(all(a <= b for a, b in zip(other[2], item[2])) for other in same):
            same.append(item)
    return [x for group in kept.values() for x in group]


def cheapest(space: Space) -> list[Costs]:
    """The costs of the cheapest valid architectures of the space: for any valid architecture of
    it, one of these costs no more in every resource (parameters, MACs, activations, model bytes).

    Channels are taken at their smallest and bias and last-conv BatchNorm left out where the space
    allows (none of them ever lowers a cost; a ReLU between depthwise and pointwise can, as it
    changes where the depthwise BatchNorm folds, so both are walked), and a padded stage has its fewest blocks, 1x1 where
    it can (more padded blocks only add). Every other choice (stages, kernel, BN/ReLU order,
    paddings, strides, separable stages, transitions, the number of unpadded blocks and which are
    1x1, the head) is walked block by block, keeping per output shape only the prefixes no other
    one beats in every cost: what follows depends only on that shape, so the result is exact."""
    found: list[Costs] = []
    prefer = lambda options: [False] if False in options else options[:1]  # noqa: E731
    for kernel, order, bias, final_bn, dw_relu in itertools.product(
        space.kernel, space.order, prefer(space.bias), prefer(space.final_bn), set(space.dw_relu)
    ):
        g: dict[str, Any] = {"kernel": kernel, "order": order, "bias": bias, "dw_relu": dw_relu}
        frontier: list[tuple[list[Any], tuple[int, ...], _Vector]] = [([], space.input, (0, 0, 0, 0))]
        for i, st in enumerate(space.stage[: max(space.stages)], 1):
            grown = []
            for layers, _, _ in frontier:
                start = layers + [Pool(space.pool[0])] if layers else []
                for padding, stride, sep, transition in itertools.product(
                    st.padding, st.stride, set(st.separable), set(st.transition)
                ):
                    g.update({f"s{i}_padding": padding, f"s{i}_stride": stride, f"s{i}_sep": sep})
                    g.update({f"s{i}_c{j}": min(st.channels) for j in range(1, st.blocks[1] + 1)})
                    opened = start + (
                        [Conv(min(st.channels), kernel=1, padding=0, order=order, bias=bias)] if transition else []
                    )
                    level = [(opened, None, None)]
                    padded = padding == "same"
                    for j in range(1, (st.blocks[0] if padded else st.blocks[1]) + 1):
                        kinds = (
                            [False]
                            if j == 1
                            else ([True] if padded and True in st.pointwise else sorted(set(st.pointwise)))
                        )
                        nxt = []
                        for prefix, _, _ in level:
                            for pointwise in kinds:
                                g[f"s{i}_pw{j}"] = pointwise
                                layers_j = prefix + [_block(g, i, j, any(isinstance(x, CONVS) for x in prefix))]
                                measured = _prefix(layers_j, space)
                                if measured is not None:
                                    nxt.append((layers_j, *measured))
                        level = _undominated(nxt)
                        if j >= st.blocks[0]:
                            grown.extend(level)
            frontier = _undominated(grown)
            if i in space.stages:
                for layers, _, _ in frontier:
                    last = max(n for n, layer in enumerate(layers) if isinstance(layer, CONVS))
                    ending = layers[:last] + [replace(layers[last], bn=final_bn)] + layers[last + 1 :]
                    for head in set(space.head):
                        for k in space.head_kernel if head == "conv_gap" else [1]:
                            try:
                                found.append(
                                    costs(
                                        Arch(
                                            ending,
                                            _head({"head": head, "head_kernel": k, "bias": bias}),
                                            space.input,
                                            space.classes,
                                        )
                                    )
                                )
                            except SpecError:
                                pass  # collapsed feature maps: not an architecture the search trains
    vectors = {(c.params, c.macs, c.activation_int8, c.model_int8): c for c in found}
    return [c for v, c in vectors.items() if not any(o != v and all(a <= b for a, b in zip(o, v)) for o in vectors)]


def architecture_count(space: Space) -> int:
    """Number of distinct combinations of architecture choices (training choices excluded). It is
    exact for spaces without the separable, dropout-placement and depthwise-ReLU choices, and an
    upper bound where such a choice can change nothing (a separable stage with no kxk block after
    the first conv, say)."""
    total = 0
    heads = (len(space.head_kernel) if "conv_gap" in space.head else 0) + (1 if "gap_conv" in space.head else 0)
    for n in space.stages:
        per = 1
        for st in space.stage[:n]:
            c, kinds = len(st.channels), len(set(st.pointwise))
            blocks = sum(c**b * kinds ** (b - 1) for b in range(st.blocks[0], st.blocks[1] + 1))
            trans = sum(c if t else 1 for t in st.transition)
            per *= blocks * trans * len(st.padding) * len(st.stride) * len(set(st.separable))
        total += per * (len(space.pool) if n > 1 else 1)
    dropouts = sum(len(space.dropout_at) if p > 0 else 1 for p in space.dropout)
    flags = len(set(space.bias)) * len(set(space.final_bn)) * len(set(space.dw_relu))
    return total * heads * len(space.kernel) * len(space.order) * dropouts * flags


def describe(space: Space, samples: int = 4000, **limits: float | None) -> str:
    """Human-readable summary of a space: its size and, from random draws, the range of each
    resource (nas.arch.budgets) and the share of draws within the limits given, by their
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
    lines = [
        f"search space {space.name}  (input {'x'.join(map(str, space.input))}, {space.classes} classes)",
        f"  stages: {space.stages}   kernel: {space.kernel}   pool: {space.pool}   order: {space.order}",
        f"  dropout: {space.dropout} after each {' or '.join(space.dropout_at)}   head: {space.head}   head kernel: {space.head_kernel}",
        f"  conv bias: {space.bias}   BatchNorm on the last conv: {space.final_bn}   ReLU after depthwise: {space.dw_relu}",
    ]
    for i, st in enumerate(space.stage, 1):
        lines.append(
            f"  stage {i}: blocks {st.blocks[0]}-{st.blocks[1]}  channels {st.channels}  padding {st.padding}  "
            f"transition {st.transition}  first stride {st.stride}  1x1 blocks {st.pointwise}  separable {st.separable}"
        )
    lines.append(
        f"  training: optimizer {space.optimizer}  lr {space.lr}  batch {space.batch_size}  augment {space.augment}  label smoothing {space.label_smoothing}"
    )
    lines.append(
        f"            weight decay {space.weight_decay}  rotate {space.rotate}  translate {space.translate}  scale {space.scale}"
    )
    lines.append(f"  size: {architecture_count(space):.3e} architectures (times the training choices)")
    given = [(r, limits[r.setting]) for r in RESOURCES if limits.get(r.setting) is not None]
    if found:
        lines.append(f"  estimates from {samples} random draws ({len(found)} valid):")
        for r in RESOURCES:
            values = sorted(r.read(c) for c in found)
            lines.append(
                f"    {r.label}: min {r.format(values[0])}  median {r.format(values[len(values) // 2])}  max {r.format(values[-1])}"
            )
        for r, limit in given:
            inside = sum(r.read(c) <= limit * r.scale for c in found) / len(found)
            lines.append(f"  within {r.flag} {limit:,}: {100 * inside:.1f} % of valid draws")
        if len(given) > 1:
            inside = sum(all(r.read(c) <= limit * r.scale for r, limit in given) for c in found) / len(found)
            lines.append(f"  within all these limits: {100 * inside:.1f} % of valid draws")
    lines.append(f"  invalid (feature map collapses): {100 * invalid / samples:.1f} % of draws")
    return "\n".join(lines)
