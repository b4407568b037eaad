"""What `nas space show` says of a search space: its choices, how many architectures it holds, and
from random draws the range of each resource and the share of draws within the limits given, so
a user sees before searching whether the space and the budget fit each other.
"""

from __future__ import annotations

from nas.arch.budgets import RESOURCES
from nas.arch.costs import Costs, costs
from nas.errors import SpecError
from nas.space.choices import Space
from nas.space.genome import random_archs


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
    found: list[Costs] = []
    invalid = 0
    for arch in random_archs(space, samples):
        try:
            found.append(costs(arch))
        except SpecError:
            invalid += 1
    lines = [
        f"search space {space.name}  (input {'x'.join(map(str, space.input))}, {space.classes} classes)",
        f"  stages: {space.stages}   kernel: {space.kernel}   pool: {space.pool}   order: {space.order}",
        f"  dropout: {space.dropout} after each {' or '.join(space.dropout_at)}   "
        f"head: {space.head}   head kernel: {space.head_kernel}",
        f"  conv bias: {space.bias}   BatchNorm on the last conv: {space.final_bn}   "
        f"ReLU after depthwise: {space.dw_relu}",
    ]
    for i, st in enumerate(space.stage, 1):
        lines.append(
            f"  stage {i}: blocks {st.blocks[0]}-{st.blocks[1]}  channels {st.channels}  padding {st.padding}  "
            f"transition {st.transition}  first stride {st.stride}  1x1 blocks {st.pointwise}  "
            f"separable {st.separable}"
        )
    lines.append(
        f"  training: optimizer {space.optimizer}  lr {space.lr}  batch {space.batch_size}  "
        f"augment {space.augment}  label smoothing {space.label_smoothing}"
    )
    lines.append(
        f"            weight decay {space.weight_decay}  rotate {space.rotate}  "
        f"translate {space.translate}  scale {space.scale}"
    )
    lines.append(f"  size: {architecture_count(space):.3e} architectures (times the training choices)")
    given = [(r, limit) for r in RESOURCES if (limit := limits.get(r.setting)) is not None]
    if found:
        lines.append(f"  estimates from {samples} random draws ({len(found)} valid):")
        for r in RESOURCES:
            values = sorted(r.read(c) for c in found)
            lines.append(
                f"    {r.label}: min {r.format(values[0])}  median {r.format(values[len(values) // 2])}  "
                f"max {r.format(values[-1])}"
            )
        for r, limit in given:
            inside = sum(r.read(c) <= limit * r.scale for c in found) / len(found)
            lines.append(f"  within {r.flag} {limit:,}: {100 * inside:.1f} % of valid draws")
        if len(given) > 1:
            inside = sum(all(r.read(c) <= limit * r.scale for r, limit in given) for c in found) / len(found)
            lines.append(f"  within all these limits: {100 * inside:.1f} % of valid draws")
    lines.append(f"  invalid (feature map collapses): {100 * invalid / samples:.1f} % of draws")
    return "\n".join(lines)
