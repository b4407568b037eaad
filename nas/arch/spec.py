"""Architectures as data, in the form a file gives them: TOML (or JSON) becomes an Arch, checked
key by key so a mistake is named by its key, and an Arch is written back as short as it goes.
Built-in architectures are found by name, from any directory and in any install.

The layer kinds live in nas.arch.layers and the plan and its costs in nas.arch.costs; the names
the rest of nas and its users import from here (listed in __all__) stay importable from here.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from nas.arch.costs import Costs, costs, param_count, plan, receptive_field
from nas.arch.layers import CONVS, HEADS, ORDERS, POOLS, Arch, Conv, Dropout, Head, Layer, Pool, SepConv
from nas.errors import SpecError

__all__ = [
    # the layer kinds (nas.arch.layers)
    "CONVS",
    "HEADS",
    "ORDERS",
    "POOLS",
    "Arch",
    "Conv",
    "Dropout",
    "Head",
    "Layer",
    "Pool",
    "SepConv",
    # the plan and its costs (nas.arch.costs)
    "Costs",
    "costs",
    "param_count",
    "plan",
    "receptive_field",
    # the file form (here)
    "BUILTIN",
    "MAX_CHANNELS",
    "MAX_INPUT",
    "MAX_KERNEL",
    "MAX_STRIDE",
    "arch_from_dict",
    "arch_to_dict",
    "arch_to_json",
    "arch_to_toml",
    "builtin_archs",
    "builtin_names",
    "classes",
    "input_shape",
    "load_arch",
    "locate",
    "read_toml",
]

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
            assert isinstance(f.type, str)  # the annotation as written (nas.arch.layers keeps them unevaluated)
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
    return tuple(shape)


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
