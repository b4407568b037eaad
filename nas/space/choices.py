"""What a search space offers: a Space lists, for every choice an architecture or its training
makes, the options to choose from (a [low, high] range for block counts and learning rates); a
Stage does the same for one stage of blocks. Plain data, below everything that uses it: spaces.py
reads it from a file, genome.py samples it, cheapest.py and describe.py measure it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nas.train.config import TrainConfig

PADDINGS = ("same", "valid")
DROPOUT_PLACES = ("block", "pool")  # after every conv block, or once after each pooling
# TrainConfig fields a space may list choices for
OPTIONAL_TRAINING = ("weight_decay", "rotate", "translate", "scale")
# The [architecture] choices shared by every stage, in the order the genome asks for them; a
# space file's [architecture] table holds these and its per-stage `stage` list.
ARCHITECTURE_CHOICES = (
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
)


@dataclass
class Stage:
    blocks: tuple[int, int]
    channels: list[int]
    padding: list[str] = field(default_factory=lambda: ["same"])
    transition: list[bool] = field(default_factory=lambda: [False])
    stride: list[int] = field(default_factory=lambda: [1])  # of the stage's first kxk conv
    pointwise: list[bool] = field(default_factory=lambda: [False])  # may a block after the first be a 1x1 conv
    # kxk blocks depthwise-separable (never the network's first conv)
    separable: list[bool] = field(default_factory=lambda: [False])


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
