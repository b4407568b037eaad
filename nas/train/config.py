"""How one network is trained: a torch-free dataclass, so parsing a search space, reading a
study or printing help never imports torch. Every default is written here once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from nas.errors import SpecError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "step")
REFERENCE_BATCH = 128  # lr is stated for this batch size and scaled linearly for others
DEFAULT_EPOCHS = 20
# Large batches with their linearly scaled learning rate need enough updates to warm up: the seed
# network at batch 1024 (peak lr 0.8) diverged within 96 updates (2 epochs of 50,000 images, or 10
# of 10,000) and trained well from 192 on; 300 leaves a margin. See TrainConfig.fitted.
MIN_UPDATES = 300

_KINDS: dict[str, type[Any] | tuple[type[Any], ...]] = {"int": int, "float": (int, float), "bool": bool, "str": str}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = DEFAULT_EPOCHS
    # Large batches are the fast ones on a GPU; 1024 beat 512 on validation (README, the large-batch recipe).
    batch_size: int = 1024
    optimizer: str = "sgd"
    lr: float = 0.1  # peak learning rate at batch size REFERENCE_BATCH (0.8 at batch 1024)
    # Constant: the schedule moves the learning rate only (a CUDA graph captures momentum as a number).
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # False: BatchNorm weights and every bias (the 1-D parameters) are not decayed, only the conv
    # weights; True decays everything, as every study before this setting did.
    decay_norm_bias: bool = True
    schedule: str = "onecycle"
    warmup: float = 0.3  # onecycle: fraction of the steps over which the learning rate rises to its peak
    label_smoothing: float = 0.0
    augment: bool = False
    # With augment: each image is rotated by up to +-rotate degrees, shifted by up to +-translate of
    # its size and scaled by up to +-scale (0: not scaled), drawn uniformly per image and epoch.
    rotate: float = 10.0
    translate: float = 0.1
    scale: float = 0.0
    # An exponential moving average of the weights (and BatchNorm statistics), which validation and
    # export then use: its half-life in epochs, so it means the same at batch 32 and 1024 (0: off).
    ema_half_life: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        """Checked where a config is made, so files, flags, samplers and studies all get it."""
        for key, ok, what in (
            ("epochs", self.epochs >= 1, "must be at least 1"),
            ("batch_size", self.batch_size >= 1, "must be at least 1"),
            ("lr", self.lr > 0, "must be positive"),
            ("momentum", 0 <= self.momentum < 1, "must be in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("warmup", 0 < self.warmup < 1, "must be in (0, 1)"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "must be in [0, 1)"),
            ("rotate", 0 <= self.rotate <= 180, "must be in [0, 180] degrees"),
            ("translate", 0 <= self.translate < 0.5, "must be in [0, 0.5)"),
            ("scale", 0 <= self.scale < 0.5, "must be in [0, 0.5)"),
            ("ema_half_life", 0 <= self.ema_half_life <= self.epochs, "must be in [0, epochs] (0: off)"),
            ("seed", self.seed >= 0, "must be >= 0"),
        ):
            if not ok:
                raise SpecError("training config", f"train.{key}", f"{what} (got {getattr(self, key)!r})")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "train") -> TrainConfig:
        """A config from a [train] table or stored JSON; problems name `where` and the key."""
        # The annotations are strings here (from __future__ import annotations): "int", "float", ...
        known = {f.name: str(f.type) for f in fields(cls)}
        values: dict[str, Any] = {}
        for k, v in data.items():
            if k not in known:
                raise SpecError(where, f"train.{k}", f"unknown key; expected one of {', '.join(known)}")
            if not isinstance(v, _KINDS[known[k]]) or (known[k] != "bool" and isinstance(v, bool)):
                raise SpecError(where, f"train.{k}", f"expected {known[k]}, got {v!r}")
            values[k] = float(v) if known[k] == "float" else v
        try:
            return cls(**values)
        except SpecError as e:
            raise SpecError(where, e.key, e.problem) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fitted(self, images: int) -> TrainConfig:
        """This config for a training set of `images`: a batch too large for the run to make
        MIN_UPDATES updates is halved until it does, down to REFERENCE_BATCH (the learning rate,
        stated per REFERENCE_BATCH images, scales down with it). Short runs on few images, the
        usual CPU search, would otherwise diverge; the 20-epoch recipe on 50,000 images is kept."""
        batch = self.batch_size
        while batch > REFERENCE_BATCH and self.epochs * max(1, images // batch) < MIN_UPDATES:
            batch //= 2
        return self if batch == self.batch_size else replace(self, batch_size=max(batch, REFERENCE_BATCH))

    def peak_lr(self) -> float:
        """The learning rate at the top of the schedule for this batch size."""
        return self.lr * self.batch_size / REFERENCE_BATCH
