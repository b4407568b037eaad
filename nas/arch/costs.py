"""An architecture's per-module plan, and every count and cost derived from it.

The plan (one step per torch module) is the single source of truth for the builder, the
analytic parameter count, the output shapes and the receptive field, so the search can prune
an architecture on its size without building it, and the summary always matches the model.
The deployment costs (MACs, peak activation memory, model bytes; DEFINITIONS says what each
counts) are read off the same steps, so they too need no model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nas.arch.layers import Arch, Conv, Pool, SepConv
from nas.errors import SpecError


@dataclass(frozen=True)
class Step:
    """One torch module of the built network, with what it does to shape and size."""

    module: str  # a class name in torch.nn
    args: dict[str, Any]
    shape: tuple[int, ...]  # output shape without the batch dimension
    params: int
    rf: int  # receptive field (pixels of the input seen by one output position)


def plan(arch: Arch) -> list[Step]:
    """Lay out the modules of `arch`; raise SpecError if the spatial size collapses."""
    c, h, w = arch.input
    rf, jump = 1, 1
    steps: list[Step] = []

    def add(module: str, args: dict[str, Any], params: int = 0) -> None:
        steps.append(Step(module, args, (c, h, w) if module != "Flatten" else (c,), params, rf))

    def conv(out: int, k: int, pad: int, bias: bool, key: str, stride: int = 1, groups: int = 1) -> None:
        nonlocal c, h, w, rf, jump
        if h + 2 * pad < k or w + 2 * pad < k:
            raise SpecError(
                arch.name or "architecture", key, f"feature map shrinks below 1x1 (kernel {k}, padding {pad})"
            )
        h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        rf += (k - 1) * jump
        jump *= stride
        params = out * (c // groups) * k * k + (out if bias else 0)
        args = dict(in_channels=c, out_channels=out, kernel_size=k, stride=stride, padding=pad, bias=bias)
        c = out
        add("Conv2d", args | (dict(groups=groups) if groups > 1 else {}), params)

    def after(relu: bool, bn: bool, order: str) -> None:
        post = [("relu", relu), ("bn", bn)]
        for what, on in post if order == "relu_bn" else post[::-1]:
            if on and what == "relu":
                add("ReLU", {})
            elif on:
                add("BatchNorm2d", dict(num_features=c), 2 * c)

    for n, layer in enumerate(arch.layers):
        key = f"layers[{n}]"
        if isinstance(layer, Conv):
            conv(layer.out, layer.kernel, layer.padding, layer.bias, key, layer.stride)
            after(layer.relu, layer.bn, layer.order)
        elif isinstance(layer, SepConv):
            conv(c, layer.kernel, layer.padding, layer.bias, key, layer.stride, groups=c)
            after(layer.dw_relu, layer.dw_bn, layer.order)
            conv(layer.out, 1, 0, layer.bias, key)
            after(layer.relu, layer.bn, layer.order)
        elif isinstance(layer, Pool):
            if h < layer.size or w < layer.size:
                raise SpecError(arch.name or "architecture", key, f"pooling a {h}x{w} map by {layer.size}")
            h, w = h // layer.size, w // layer.size
            rf += (layer.size - 1) * jump
            jump *= layer.size
            add("MaxPool2d" if layer.kind == "max" else "AvgPool2d", dict(kernel_size=layer.size))
        else:
            add("Dropout", dict(p=layer.p))
    if arch.head.type == "conv_gap":
        conv(arch.classes, arch.head.kernel, arch.head.padding, arch.head.bias, "head")
    h = w = 1
    add("AdaptiveAvgPool2d", dict(output_size=1))
    if arch.head.type == "gap_conv":
        conv(arch.classes, 1, 0, arch.head.bias, "head")
    add("Flatten", {})
    return steps


def param_count(arch: Arch) -> int:
    return sum(s.params for s in plan(arch))


def receptive_field(arch: Arch) -> int:
    """Receptive field of one position of the last feature map before global pooling."""
    return max(s.rf for s in plan(arch))


# --- Deployment costs ---------------------------------------------------------------------------

INT8, INT32, FP32 = 1, 4, 4  # bytes per element / per stored number
KB = 1000  # bytes; the --max-activation-kb and --max-model-kb limits use it
# Steps that need no buffer of their own when deployed: ReLU and BatchNorm (folded or kept as a
# per-channel affine) run in place, Dropout is the identity at inference, Flatten is a view.
IN_PLACE = frozenset({"ReLU", "BatchNorm2d", "Dropout", "Flatten"})

DEFINITIONS = (
    "MACs: multiply-accumulates of the convolutions for one image (bias, BatchNorm, ReLU and pooling excluded).",
    (
        "Activations: peak memory of one inference as deployed: the largest sum of one layer's input and output "
        "feature maps, ReLU, BatchNorm and Dropout running in place (no buffer); int8 1 byte, fp32 4 bytes an "
        "element; kernel scratch buffers excluded."
    ),
    (
        "Model bytes: the deployed weights. A BatchNorm directly after a conv (order bn_relu) is folded into it "
        "(weights scaled, one bias); one after a ReLU (relu_bn) cannot be folded and is kept as a per-channel "
        "scale and shift (2 numbers a channel). fp32: 4 bytes a number. int8, as nas export's model.int8.onnx "
        "holds them: 1 byte a conv weight, per output channel a 4-byte fp32 scale and, where the conv has a bias "
        "or a folded BatchNorm, a 4-byte int32 bias; 1 byte a number for a kept scale and shift. File format, "
        "zero points and per-tensor scales excluded."
    ),
    "KB = 1,000 bytes.",
)


@dataclass(frozen=True)
class StepCost:
    """What one plan step costs when the network is deployed."""

    macs: int
    activation: int  # elements held while the step runs (input + output); 0 for a step run in place
    numbers: int  # deployed stored numbers (weights, biases, kept BN scale and shift); 0 if folded away
    int8_bytes: int  # those numbers stored as int8, with per-channel scales for conv weights
    folded: bool = False  # a BatchNorm folded into the conv before it


@dataclass(frozen=True)
class Costs:
    """An architecture's budgets, all derived from its plan (see DEFINITIONS)."""

    params: int  # trainable parameters
    macs: int
    activation_int8: int  # peak activation memory, bytes
    activation_fp32: int
    model_int8: int  # deployed weights, bytes
    model_fp32: int
    peak_step: int  # index of the step that sets the peak activation memory
    steps: tuple[StepCost, ...]


def step_costs(arch: Arch) -> list[StepCost]:
    """Per-step costs of `arch`, step for step with plan(arch)."""
    steps = plan(arch)
    out: list[StepCost] = []
    previous: tuple[int, ...] = arch.input
    for n, s in enumerate(steps):
        size_in, size_out = math.prod(previous), math.prod(s.shape)
        activation = 0 if s.module in IN_PLACE else size_in + size_out
        if s.module == "Conv2d":
            channels = s.args["out_channels"]
            weights = s.params - (channels if s.args["bias"] else 0)
            folds = n + 1 < len(steps) and steps[n + 1].module == "BatchNorm2d"
            biases = channels if s.args["bias"] or folds else 0
            # Each weight is used once per output position (so grouped convolutions count right too).
            out.append(
                StepCost(
                    weights * math.prod(s.shape[1:]),
                    activation,
                    weights + biases,
                    weights * INT8 + channels * FP32 + biases * INT32,
                )
            )  # + a scale per output channel
        elif s.module == "BatchNorm2d" and n > 0 and steps[n - 1].module == "Conv2d":
            out.append(StepCost(0, activation, 0, 0, folded=True))
        else:
            # A kept BatchNorm stores its scale and shift (s.params numbers), int8 like the weights;
            # the rest store nothing.
            out.append(StepCost(0, activation, s.params, s.params * INT8))
        previous = s.shape
    return out


def costs(arch: Arch) -> Costs:
    """MACs, peak activation memory and model bytes of `arch` (SpecError if it is invalid)."""
    per = step_costs(arch)
    peak = max(range(len(per)), key=lambda n: per[n].activation)
    return Costs(
        params=param_count(arch),
        macs=sum(c.macs for c in per),
        activation_int8=per[peak].activation * INT8,
        activation_fp32=per[peak].activation * FP32,
        model_int8=sum(c.int8_bytes for c in per),
        model_fp32=sum(c.numbers for c in per) * FP32,
        peak_step=peak,
        steps=tuple(per),
    )
