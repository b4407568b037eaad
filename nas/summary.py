"""The torchsummary-style layer table, computed from the plan (no model is built)."""

from __future__ import annotations

from nas.arch import Arch, plan


def summary_table(arch: Arch) -> str:
    steps = plan(arch)
    rule = "-" * 78
    lines = [rule, f"{'Layer (type)':>24}  {'Output Shape':>22}  {'Param #':>12}  {'RF':>10}", "=" * 78]
    for n, s in enumerate(steps, 1):
        shape = "[" + ", ".join(["-1", *map(str, s.shape)]) + "]"
        lines.append(f"{s.module + '-' + str(n):>24}  {shape:>22}  {s.params:>12,}  {s.rf:>10}")
    total = sum(s.params for s in steps)
    lines += [
        "=" * 78,
        f"Total params: {total:,}",
        f"Trainable params: {total:,}",
        "Non-trainable params: 0",
        f"Receptive field: {max(s.rf for s in steps)} px (input {'x'.join(map(str, arch.input))})",
        rule,
    ]
    return "\n".join(lines)
