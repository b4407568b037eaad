"""Architectures as data: dataclasses, their TOML form, and a per-module plan.

The plan (one step per torch module) is the single source of truth for the builder, the
analytic parameter count, the output shapes and the receptive field, so the search can prune
an architecture on its size without building it, and the summary always matches the model.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

from nas.errors import SpecError

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


Layer = Union[Conv, SepConv, Pool, Dropout]
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
        "feature maps, ReLU, BatchNorm and Dropout running in place (no buffer); int8 1 byte, fp32 4 bytes an element; "
        "kernel scratch buffers excluded."
    ),
    (
        "Model bytes: the deployed weights. A BatchNorm directly after a conv (order bn_relu) is folded into it "
        "(weights scaled, one bias); one after a ReLU (relu_bn) cannot be folded and is kept as a per-channel scale and "
        "shift (2 numbers a channel). fp32: 4 bytes a number. int8, as nas export's model.int8.onnx holds them: 1 byte a "
        "conv weight, per output channel a 4-byte fp32 scale and, where the conv has a bias or a folded BatchNorm, a "
        "4-byte int32 bias; 1 byte a number for a kept scale and shift. File format, zero points and per-tensor "
        "scales excluded."
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
    previous = arch.input
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
        else:  # a kept BatchNorm stores its scale and shift (s.params numbers), int8 like the weights; the rest store nothing
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


# --- TOML / dict form -------------------------------------------------------------------------

_LAYER_KEYS = {"conv": Conv, "sep": SepConv, "pool": Pool, "dropout": Dropout}
_PRIMARY = {Conv: "out", SepConv: "out", Pool: "kind", Dropout: "p"}


def _check(where: str, key: str, value: Any, kind: type, ok: Any = None, what: str = "") -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SpecError(where, key, f"expected {kind.__name__}, got {value!r}")
    if ok is not None and not ok(value):
        raise SpecError(where, key, f"{what} (got {value!r})")
    return value


def _dataclass_from(cls: type, data: dict[str, Any], where: str, key: str, skip: tuple[str, ...] = ()) -> Any:
    known = {f.name: f for f in fields(cls)}
    for k in data:
        if k not in known or k in skip:
            raise SpecError(
                where, f"{key}.{k}", f"unknown key; expected one of {', '.join(n for n in known if n not in skip)}"
            )
    values = {}
    for name, f in known.items():
        if name in data:
            kind = {"int": int, "float": float, "bool": bool, "str": str}[f.type]
            values[name] = _check(where, f"{key}.{name}", data[name], kind)
    return cls(**values)


# Far above any small network, low enough that a typo (conv = 1000000000) is refused, not allocated.
MAX_CHANNELS = 4096
MAX_KERNEL = 15
MAX_INPUT = 4096
MAX_STRIDE = 8

_RULES: list[tuple[type | tuple[type, ...], str, Any, str]] = [
    (CONVS, "out", lambda v: 1 <= v <= MAX_CHANNELS, f"must be between 1 and {MAX_CHANNELS:,}"),
    (CONVS, "kernel", lambda v: 1 <= v <= MAX_KERNEL and v % 2 == 1, f"must be an odd integer from 1 to {MAX_KERNEL}"),
    (CONVS, "padding", lambda v: v >= 0, "must be >= 0"),
    (CONVS, "stride", lambda v: 1 <= v <= MAX_STRIDE, f"must be between 1 and {MAX_STRIDE}"),
    (CONVS, "order", lambda v: v in ORDERS, f"must be one of {', '.join(ORDERS)}"),
    (Pool, "kind", lambda v: v in POOLS, f"must be one of {', '.join(POOLS)}"),
    (Pool, "size", lambda v: v >= 2, "must be at least 2"),
    (Dropout, "p", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    (Head, "type", lambda v: v in HEADS, f"must be one of {', '.join(HEADS)}"),
    (Head, "kernel", lambda v: 1 <= v <= MAX_KERNEL and v % 2 == 1, f"must be an odd integer from 1 to {MAX_KERNEL}"),
    (Head, "padding", lambda v: v >= 0, "must be >= 0"),
]


def _validate(obj: Any, where: str, key: str) -> Any:
    for cls, name, ok, what in _RULES:
        if isinstance(obj, cls) and not ok(getattr(obj, name)):
            raise SpecError(where, f"{key}.{name}", f"{what} (got {getattr(obj, name)!r})")
    return obj


def input_shape(data: dict[str, Any], where: str) -> tuple[int, int, int]:
    """The `input` key of an architecture or space file: [channels, height, width]."""
    shape = data.get("input", [1, 28, 28])
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INPUT for v in shape)
    ):
        raise SpecError(
            where, "input", f"expected [channels, height, width] of integers from 1 to {MAX_INPUT} (got {shape!r})"
        )
    return tuple(shape)  # type: ignore[return-value]


def classes(data: dict[str, Any], where: str) -> int:
    """The `classes` key of an architecture or space file."""
    return _check(
        where,
        "classes",
        data.get("classes", 10),
        int,
        lambda v: 2 <= v <= MAX_CHANNELS,
        f"must be between 2 and {MAX_CHANNELS:,}",
    )


def arch_from_dict(data: dict[str, Any], where: str = "architecture") -> Arch:
    """Build an Arch from its TOML/JSON form, naming the key of the first problem found."""
    allowed = {"name", "input", "classes", "layers", "head", "train"}
    for k in data:
        if k not in allowed:
            raise SpecError(where, k, f"unknown key; expected one of {', '.join(sorted(allowed))}")
    if "layers" not in data:
        raise SpecError(where, "layers", 'missing; list the layers, e.g. layers = [{ conv = 8 }, { pool = "max" }]')
    layers: list[Layer] = []
    for n, raw in enumerate(_check(where, "layers", data["layers"], list)):
        key = f"layers[{n}]"
        raw = _check(where, key, raw, dict)
        kinds = [k for k in raw if k in _LAYER_KEYS]
        if len(kinds) != 1:
            raise SpecError(
                where,
                key,
                'needs exactly one of conv = <channels>, sep = <channels>, pool = "max"|"avg", dropout = <p>',
            )
        cls = _LAYER_KEYS[kinds[0]]
        rest = {k: v for k, v in raw.items() if k != kinds[0]}
        rest[_PRIMARY[cls]] = raw[kinds[0]]
        layers.append(_validate(_dataclass_from(cls, rest, where, key), where, key))
    if not any(isinstance(layer, CONVS) for layer in layers):
        raise SpecError(where, "layers", "needs at least one conv layer, e.g. layers = [{ conv = 8 }]")
    head = _validate(
        _dataclass_from(Head, _check(where, "head", data.get("head", {}), dict), where, "head"), where, "head"
    )
    if head.type == "gap_conv" and (head.kernel, head.padding) != (1, 0):
        raise SpecError(
            where,
            "head.kernel",
            'a gap_conv head is a 1x1 conv after pooling; drop kernel/padding or use type = "conv_gap"',
        )
    arch = Arch(
        layers=layers,
        head=head,
        input=input_shape(data, where),
        classes=classes(data, where),
        name=_check(where, "name", data.get("name", Path(where).stem), str),
        train=_check(where, "train", data.get("train", {}), dict),
    )
    try:
        plan(arch)
    except SpecError as e:  # shape errors name the file, not the architecture
        raise SpecError(where, e.key, e.problem) from None
    return arch


def arch_to_dict(arch: Arch) -> dict[str, Any]:
    """Inverse of arch_from_dict; only non-default fields are written, so files stay short."""

    def short(obj: Any, primary: str | None = None) -> dict[str, Any]:
        default = type(obj)(**{primary: getattr(obj, primary)}) if primary else type(obj)()
        out = {primary: getattr(obj, primary)} if primary else {}
        out.update({k: v for k, v in asdict(obj).items() if k != primary and v != getattr(default, k)})
        return out

    layers = []
    for layer in arch.layers:
        d = short(layer, _PRIMARY[type(layer)])
        tag = next(k for k, c in _LAYER_KEYS.items() if c is type(layer))
        layers.append({tag: d.pop(_PRIMARY[type(layer)]), **d})
    out: dict[str, Any] = {
        "name": arch.name,
        "input": list(arch.input),
        "classes": arch.classes,
        "layers": layers,
        "head": asdict(arch.head),
    }
    if arch.train:
        out["train"] = dict(arch.train)
    return out


BUILTIN = Path(__file__).resolve().parent.parent / "search_spaces"  # shipped as package data


def locate(name: str | Path, folder: Path, what: str) -> Path:
    """A file path as given, or else the built-in file of that name in `folder` (so `seed_9274`
    or `mnist_fcn` work from any directory and in a non-editable install); a bare name that is
    neither is refused naming the built-in ones (`what`: "architecture", "search space")."""
    path = Path(name)
    if path.exists() or path.suffix or path.parent != Path("."):
        return path
    builtin = folder / f"{name}.toml"
    if not builtin.is_file():
        raise SpecError(
            str(name),
            "file",
            f"no such file, and no built-in {what} of that name ({builtin_names(folder)}); give a .toml file",
        )
    return builtin


def builtin_names(folder: Path) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.toml")))


def read_toml(path: Path, hint: str) -> dict[str, Any]:
    """A TOML file's contents; a missing or malformed file is a SpecError (hint: what to give)."""
    if path.is_dir():
        raise SpecError(str(path), "file", f"is a folder; give {hint}")
    if not path.is_file():
        raise SpecError(str(path), "file", f"no such file; give {hint}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(str(path), "toml", f"not valid TOML ({e})") from None


def builtin_archs() -> list[Arch]:
    """The architectures shipped with nas: the hand-made seed first, then the others by size."""
    archs = [load_arch(p) for p in (BUILTIN / "seeds").glob("*.toml")]
    return sorted(archs, key=lambda a: (a.name != "seed_9274", param_count(a), a.name))


def load_arch(path: str | Path) -> Arch:
    """An architecture file, or a built-in seed by name (e.g. seed_9274)."""
    found = locate(path, BUILTIN / "seeds", "architecture")
    return arch_from_dict(
        read_toml(found, f"an architecture .toml or a built-in one ({builtin_names(BUILTIN / 'seeds')})"), str(path)
    )


def _toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)  # bool, int, float and str render the same in TOML and JSON


def arch_to_toml(arch: Arch) -> str:
    d = arch_to_dict(arch)
    lines = [f"{k} = {_toml_value(d[k])}" for k in ("name", "input", "classes")]
    lines.append("layers = [")
    lines += [f"  {_toml_value(layer)}," for layer in d["layers"]]
    lines += ["]", f"head = {_toml_value(d['head'])}"]
    if "train" in d:
        lines.append(f"train = {_toml_value(d['train'])}")
    return "\n".join(lines) + "\n"


def arch_to_json(arch: Arch) -> str:
    return json.dumps(arch_to_dict(arch), sort_keys=True)
