"""The layer kinds an architecture is made of, and the Arch that lists them: plain dataclasses.

What they build and cost is nas.arch.costs.plan; how they are written in a file, and the limits a
file is checked against, is nas.arch.spec. Here they are only data, so both can use them.
The module keeps `from __future__ import annotations`: nas.arch.spec reads a field's type from
its annotation as written ("int", "bool", ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ORDERS = ("relu_bn", "bn_relu")
POOLS = ("max", "avg")
HEADS = ("conv_gap", "gap_conv")


@dataclass
class Conv:
    """kxk convolution, optionally followed by ReLU and BatchNorm in either order. A stride of 2
    on the first convolution is how tiny-ML networks keep the largest feature map small."""

    out: int
    kernel: int = 3
    padding: int = 1
    bn: bool = True
    relu: bool = True
    order: str = "relu_bn"
    bias: bool = True
    stride: int = 1


@dataclass
class SepConv:
    """Depthwise-separable convolution: a depthwise kxk conv (one filter per input channel, the
    `dw_bn`/`dw_relu` after it) then a pointwise 1x1 conv to `out` channels (`bn`/`relu` after
    it), both in `order`. It costs C*k*k + C*out weights where a full conv costs C*out*k*k, which
    is how the smallest public MNIST networks afford more channels."""

    out: int
    kernel: int = 3
    padding: int = 1
    stride: int = 1  # of the depthwise conv
    dw_bn: bool = True
    dw_relu: bool = False  # a linear depthwise output (MobileNetV2, Xception) unless asked
    bn: bool = True
    relu: bool = True
    order: str = "relu_bn"
    bias: bool = True


@dataclass
class Pool:
    kind: str = "max"
    size: int = 2


@dataclass
class Dropout:
    p: float


Layer = Conv | SepConv | Pool | Dropout
CONVS = (Conv, SepConv)  # the layer kinds that convolve


@dataclass
class Head:
    """Fully convolutional classifier: conv to `classes` channels then global average pool
    ("conv_gap"), or global average pool then a 1x1 conv ("gap_conv")."""

    type: str = "conv_gap"
    kernel: int = 1
    padding: int = 0
    bias: bool = True


@dataclass
class Arch:
    layers: list[Layer]
    head: Head = field(default_factory=Head)
    input: tuple[int, int, int] = (1, 28, 28)
    classes: int = 10
    name: str = ""
    # Optional training settings that travel with the architecture (see nas.train.config.TrainConfig).
    train: dict[str, Any] = field(default_factory=dict)
