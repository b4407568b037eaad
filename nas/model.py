"""The one builder: an Arch becomes an nn.Sequential, module for module as nas.arch.plan says."""

from __future__ import annotations

from torch import nn

from nas.arch import Arch, plan


def build(arch: Arch) -> nn.Sequential:
    return nn.Sequential(*(getattr(nn, step.module)(**step.args) for step in plan(arch)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
