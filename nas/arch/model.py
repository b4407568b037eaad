"""The one builder: an Arch becomes an nn.Sequential, module for module as nas.arch.costs.plan says.

`build(arch, copies=K)` lays out K independent copies of the network as one: every conv is grouped
(groups=K, a depthwise conv's groups=K x C) and every BatchNorm has K x C channels, so copy k owns
channel block k of every layer and no weight, gradient or batch statistic crosses between copies.
Copy k reads input channels k*C_in..(k+1)*C_in and writes logits k*classes..(k+1)*classes: K
different batches stacked along the channel dimension train K networks in one launch per layer.
`pack` and `unpack` move weights between K plain networks and the packed one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nas.arch.costs import plan
from nas.arch.layers import Arch

# Arguments that count channels, widened K times in a packed network.
_CHANNELS = {"Conv2d": ("in_channels", "out_channels"), "BatchNorm2d": ("num_features",)}


def build(arch: Arch, copies: int = 1) -> nn.Sequential:
    """The network of `arch`; copies > 1 packs that many independent networks into one
    (output [N, copies * classes])."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1 (got {copies})")
    modules = []
    for step in plan(arch):
        args = dict(step.args)
        for key in _CHANNELS.get(step.module, ()):
            args[key] *= copies
        if step.module == "Conv2d" and copies > 1:
            args["groups"] = args.get("groups", 1) * copies
        modules.append(getattr(nn, step.module)(**args))
    model = nn.Sequential(*modules)
    # A plain attribute, stored as nn.Module's __setattr__ stores any value that is no tensor or module
    # (its annotation admits only those).
    vars(model)["copies"] = copies
    return model


def copies_of(model: nn.Module) -> int:
    """How many networks a (possibly packed) network holds."""
    return getattr(model, "copies", 1)


@torch.no_grad()
def pack(models: list[nn.Module], arch: Arch) -> nn.Sequential:
    """One packed network holding `models` (plain networks of `arch`) as its copies, in order."""
    packed = build(arch, len(models)).to(next(models[0].parameters()).device)
    states = [m.state_dict() for m in models]
    for name, tensor in packed.state_dict().items():
        parts = [s[name] for s in states]
        tensor.copy_(
            torch.cat(parts) if tensor.dim() else parts[0]
        )  # scalars: BatchNorm's step count, equal in every copy
    return packed


@torch.no_grad()
def unpack(packed: nn.Module, arch: Arch, k: int) -> nn.Sequential:
    """Copy k of a packed network as a plain network of `arch`, on the packed network's device."""
    n = copies_of(packed)
    if not 0 <= k < n:
        raise IndexError(f"copy {k} of a network packing {n}")
    plain = build(arch).to(next(packed.parameters()).device)
    plain.load_state_dict({name: t.chunk(n)[k] if t.dim() else t for name, t in packed.state_dict().items()})
    return plain


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Affine(nn.Module):
    """A BatchNorm that cannot fold (it follows a ReLU) as deployed: a per-channel scale and shift,
    in place."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        # Its two buffers, declared for the type checker only: a class annotation would be a string
        # here (postponed annotations), which torch.jit.script cannot read.
        self.scale: torch.Tensor
        self.shift: torch.Tensor
        assert bn.running_mean is not None and bn.running_var is not None  # built with running statistics
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.register_buffer("scale", scale.detach().view(-1, 1, 1))
        self.register_buffer("shift", (bn.bias - bn.running_mean * scale).detach().view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.scale).add_(self.shift)


@torch.no_grad()
def deployed(model: nn.Sequential) -> nn.Sequential:
    """A copy of the network as a deployment holds it, which is what nas.arch.costs.step_costs counts: a
    BatchNorm right after a conv folded into it (order bn_relu), any other one an in-place Affine
    (relu_bn), ReLU in place, Dropout dropped; same outputs as `model` in eval mode. Its weights are
    in the default memory layout: one trained in channels_last would otherwise export its layout
    as index arithmetic in the graph."""
    out: list[nn.Module] = []
    # Module.to takes memory_format (its documentation says so), but its typed overloads leave it out.
    plain = copy.deepcopy(model)
    plain = plain.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # stubs lack memory_format
    for m in plain:
        if isinstance(m, nn.BatchNorm2d) and out and isinstance(out[-1], nn.Conv2d):
            out[-1] = fuse_conv_bn_eval(out[-1], m)
        elif isinstance(m, nn.BatchNorm2d):
            out.append(Affine(m))
        elif isinstance(m, nn.ReLU):
            out.append(nn.ReLU(inplace=True))
        elif not isinstance(m, nn.Dropout):
            out.append(m)
    return nn.Sequential(*out).eval()
