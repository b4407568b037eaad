"""A trial (or any chooser) becomes an Arch and its training settings: the genome of a search space.

`sample` asks its chooser through the three methods an Optuna trial has (suggest_categorical,
suggest_int, suggest_float), so the same code samples for the search, replays a FixedTrial and
draws random architectures for the size estimates of `nas space show`. `params_for` is its
inverse: it proves the seed is a point of the space and gives the parameters to enqueue it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from nas.arch.layers import CONVS, Arch, Conv, Dropout, Head, Layer, Pool, SepConv
from nas.arch.spec import arch_to_json
from nas.errors import SpecError
from nas.space.choices import ARCHITECTURE_CHOICES, OPTIONAL_TRAINING, Space
from nas.train.config import DEFAULT_EPOCHS, TrainConfig


class Chooser(Protocol):
    """What `sample` asks its choices of: the three methods an Optuna trial has."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


def point_key(arch: Arch, cfg: TrainConfig, seeds: int, images: int) -> str:
    """Identifies what a trial trains (the architecture, its training, seeds and training images: a
    level of a ladder trains on fewer): the same key means the same result, so it is not trained twice."""
    same = json.loads(arch_to_json(replace(arch, name="")))
    return hashlib.sha256(json.dumps([same, cfg.to_dict(), seeds, images], sort_keys=True).encode()).hexdigest()[:16]


def genome(space: Space, trial: Chooser) -> dict[str, Any]:
    """Every choice of the space, asked in one fixed order whatever the other answers are: a
    fixed-length encoding, so every sampler sees the same parameters on every trial (the blocks,
    stages and learning rates an architecture does not use are asked all the same, and ignored by
    `decode`). A choice with one option is no parameter: it is not asked."""
    g: dict[str, Any] = {}

    def ask(name: str, choices: list[Any]) -> None:
        g[name] = choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

    for name in ARCHITECTURE_CHOICES:
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


def make_block(g: dict[str, Any], i: int, j: int, after_a_conv: bool) -> Conv | SepConv:
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


def make_head(g: dict[str, Any]) -> Head:
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
    layers: list[Layer] = []
    for i in range(1, g["stages"] + 1):
        if g[f"s{i}_transition"]:
            layers.append(Conv(g[f"s{i}_t"], kernel=1, padding=0, order=g["order"], bias=g["bias"]))
        for j in range(1, g[f"s{i}_blocks"] + 1):
            layers.append(make_block(g, i, j, any(isinstance(layer, CONVS) for layer in layers)))
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
    return Arch(layers=layers, head=make_head(g), input=space.input, classes=space.classes), cfg


def sample(space: Space, trial: Chooser, epochs: int = DEFAULT_EPOCHS) -> tuple[Arch, TrainConfig]:
    """Draw an architecture and its training settings (the Arch may still be invalid or too big)."""
    return decode(space, genome(space, trial), epochs)


class _Recorder:
    """A chooser that answers from known values and checks each lies in the space; a choice the
    architecture does not use (a block it lacks) gets the first option."""

    def __init__(self, values: dict[str, Any], where: str):
        self.values, self.where = values, where
        self.params: dict[str, Any] = {}

    def _take(self, name: str, ok: Callable[[Any], bool], what: str, unused: Any) -> Any:
        v = self.values.get(name, unused)
        if not ok(v):
            raise SpecError(self.where, name, f"{v!r} is not in the space ({what})")
        self.params[name] = v
        return v

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._take(name, lambda v: v in choices, f"choices {list(choices)}", choices[0])

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return self._take(name, lambda v: low <= v <= high, f"range [{low}, {high}]", low)

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._take(name, lambda v: low <= v <= high, f"range [{low}, {high}]", low)


def params_for(space: Space, arch: Arch, cfg: TrainConfig, where: str = "seed") -> dict[str, Any]:
    """The trial parameters under which `sample` yields exactly (arch, cfg); SpecError if none
    (an architecture for other images or classes than the space's is none)."""
    for key, mine, its in (("input", list(arch.input), list(space.input)), ("classes", arch.classes, space.classes)):
        if mine != its:
            raise SpecError(
                where,
                key,
                f"is {mine}, but search space {space.name} searches {its} (the data's); "
                f"give an architecture with {key} = {its}",
            )
    convs = [layer for layer in arch.layers if isinstance(layer, CONVS)]
    pools = [n for n, layer in enumerate(arch.layers) if isinstance(layer, Pool)]
    drops = [n for n, layer in enumerate(arch.layers) if isinstance(layer, Dropout)]
    first_pool = next((layer for layer in arch.layers if isinstance(layer, Pool)), None)
    first_drop = next((layer for layer in arch.layers if isinstance(layer, Dropout)), None)
    first = convs[0] if convs else Conv(1)
    square = [c.kernel for c in convs if c.kernel > 1]
    values: dict[str, Any] = {
        "stages": len(pools) + 1,
        "kernel": max(square, default=max((c.kernel for c in convs), default=3)),
        "order": first.order,
        "pool": first_pool.kind if first_pool is not None else space.pool[0],
        "dropout": first_drop.p if first_drop is not None else 0.0,
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

        def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
            return self.drawn.setdefault(name, rng.choice(list(choices)))

        def suggest_int(self, name: str, low: int, high: int) -> int:
            return self.drawn.setdefault(name, rng.randint(low, high))

        def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
            return self.drawn.setdefault(
                name, math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
            )

    return [sample(space, Draw())[0] for _ in range(n)]
