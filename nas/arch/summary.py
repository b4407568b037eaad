"""The torchsummary-style layer table, computed from the plan (no model is built), with what
each layer costs when deployed: MACs, the activation memory it holds while it runs, and its
stored weights at int8."""

from __future__ import annotations

import textwrap

from nas.arch.costs import DEFINITIONS, FP32, INT8, KB, costs, plan
from nas.arch.layers import Arch

WIDTH = 108


def _kb(n: int) -> str:
    return f"{n:,} B ({n / KB:.2f} KB)"


def batchnorm_line(arch: Arch) -> str:
    """What the deployed model holds of the BatchNorms: the layer order decides (DEFINITIONS)."""
    steps, c = plan(arch), costs(arch)
    norms = [sc for s, sc in zip(steps, c.steps) if s.module == "BatchNorm2d"]
    folded = sum(sc.folded for sc in norms)
    if not norms:
        return "BatchNorm as deployed: none"
    return (
        f"BatchNorm as deployed: {folded} of {len(norms)} directly after a conv, folded into it (order bn_relu); "
        f"{len(norms) - folded} after a ReLU, kept as a scale and shift (relu_bn)"
    )


def summary_table(arch: Arch) -> str:
    steps, c = plan(arch), costs(arch)
    rule = "-" * WIDTH
    lines = [
        rule,
        f"{'Layer (type)':>24}  {'Output Shape':>22}  {'Param #':>9}  {'MACs':>11}  "
        f"{'Act. int8':>10}  {'Int8 bytes':>10}  {'RF':>8}",
        "=" * WIDTH,
    ]
    for n, (s, sc) in enumerate(zip(steps, c.steps), 1):
        shape = "[" + ", ".join(["-1", *map(str, s.shape)]) + "]"
        act = f"{sc.activation * INT8:,}" + ("*" if n - 1 == c.peak_step else " ") if sc.activation else "in place "
        stored = "folded" if sc.folded else f"{sc.int8_bytes:,}"
        lines.append(
            f"{s.module + '-' + str(n):>24}  {shape:>22}  {s.params:>9,}  {sc.macs:>11,}  "
            f"{act:>10}  {stored:>10}  {s.rf:>8}"
        )
    lines += [
        "=" * WIDTH,
        f"Total params: {c.params:,}",
        f"Trainable params: {c.params:,}",
        "Non-trainable params: 0",
        f"Receptive field: {max(s.rf for s in steps)} px (input {'x'.join(map(str, arch.input))})",
        f"MACs per image: {c.macs:,}",
        f"Peak activation memory: int8 {_kb(c.activation_int8)}, fp32 {_kb(c.activation_fp32)} "
        f"(at layer {c.peak_step + 1}, marked *)",
        f"Model bytes: int8 {_kb(c.model_int8)}, fp32 {_kb(c.model_fp32)} ({c.model_fp32 // FP32:,} numbers stored)",
        *textwrap.wrap(batchnorm_line(arch), WIDTH, subsequent_indent="  "),
        rule,
        *(
            textwrap.fill(text, WIDTH, subsequent_indent="  ")
            for text in (
                *DEFINITIONS,
                "Act. int8: bytes of input + output held while the layer runs; "
                "Int8 bytes: its stored weights, scales and biases.",
            )
        ),
        rule,
    ]
    return "\n".join(lines)
