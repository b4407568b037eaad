"""The exact cheapest networks of a search space: those no other network of it beats in every
resource (parameters, MACs, activations, model bytes), found without building or sampling one.

A study refuses limits that no architecture of its space meets before it trains anything: every
trial would be pruned and the search would end saying "search longer". Random draws cannot prove
that none meets them, so the choices are walked, keeping only what can still end cheapest.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from nas.arch.costs import Costs, costs, plan, step_costs
from nas.arch.layers import CONVS, Arch, Conv, Head, Layer, Pool
from nas.errors import SpecError
from nas.space.choices import Space
from nas.space.genome import make_block, make_head

_Vector = tuple[int, int, int, int]  # params, MACs, int8 model bytes, peak activation elements
_Prefix = tuple[list[Layer], tuple[int, ...], _Vector]  # the first layers, their output shape and costs


def _prefix(layers: list[Layer], space: Space) -> tuple[tuple[int, ...], _Vector] | None:
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


def _undominated(items: list[_Prefix]) -> list[_Prefix]:
    """Per output shape, the prefixes no other beats in every cost (what follows a prefix depends
    only on its output shape, so a dominated one can never end cheaper)."""
    kept: dict[tuple[int, ...], list[_Prefix]] = {}
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
    changes where the depthwise BatchNorm folds, so both are walked), and a padded stage has its
    fewest blocks, 1x1 where it can (more padded blocks only add). Every other choice (stages, kernel, BN/ReLU order,
    paddings, strides, separable stages, transitions, the number of unpadded blocks and which are
    1x1, the head) is walked block by block, keeping per output shape only the prefixes no other
    one beats in every cost: what follows depends only on that shape, so the result is exact."""
    found: list[Costs] = []
    prefer = lambda options: [False] if False in options else options[:1]  # noqa: E731
    for kernel, order, bias, final_bn, dw_relu in itertools.product(
        space.kernel, space.order, prefer(space.bias), prefer(space.final_bn), set(space.dw_relu)
    ):
        g: dict[str, Any] = {"kernel": kernel, "order": order, "bias": bias, "dw_relu": dw_relu}
        frontier: list[_Prefix] = [([], space.input, (0, 0, 0, 0))]
        for i, st in enumerate(space.stage[: max(space.stages)], 1):
            grown: list[_Prefix] = []
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
                    level: list[list[Layer]] = [opened]  # the prefixes kept after block j - 1
                    padded = padding == "same"
                    for j in range(1, (st.blocks[0] if padded else st.blocks[1]) + 1):
                        kinds = (
                            [False]
                            if j == 1
                            else ([True] if padded and True in st.pointwise else sorted(set(st.pointwise)))
                        )
                        nxt: list[_Prefix] = []
                        for prefix in level:
                            for pointwise in kinds:
                                g[f"s{i}_pw{j}"] = pointwise
                                layers_j = prefix + [make_block(g, i, j, any(isinstance(x, CONVS) for x in prefix))]
                                measured = _prefix(layers_j, space)
                                if measured is not None:
                                    nxt.append((layers_j, *measured))
                        kept = _undominated(nxt)
                        level = [item[0] for item in kept]
                        if j >= st.blocks[0]:
                            grown.extend(kept)
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
                                            make_head({"head": head, "head_kernel": k, "bias": bias}),
                                            space.input,
                                            space.classes,
                                        )
                                    )
                                )
                            except SpecError:
                                pass  # collapsed feature maps: not an architecture the search trains
    vectors = {(c.params, c.macs, c.activation_int8, c.model_int8): c for c in found}
    return [c for v, c in vectors.items() if not any(o != v and all(a <= b for a, b in zip(o, v)) for o in vectors)]
