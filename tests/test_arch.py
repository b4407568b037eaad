import random
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT, SEED

from nas.arch.spec import (
    Arch,
    Conv,
    Dropout,
    Head,
    Pool,
    SepConv,
    arch_from_dict,
    arch_to_toml,
    costs,
    load_arch,
    param_count,
    plan,
    receptive_field,
)
from nas.errors import SpecError

SEED_COUNTS = [40, 8, 148, 8, 296, 16, 876, 24, 1308, 24, 1744, 32, 2900, 40, 1810]


def random_arch(rng: random.Random) -> Arch:
    """A random valid-or-not architecture covering every layer kind and option."""
    layers = []
    for _ in range(rng.randint(1, 10)):
        kind = rng.random()
        if kind < 0.15:
            layers.append(
                SepConv(
                    out=rng.randint(1, 24),
                    kernel=rng.choice([1, 3, 5]),
                    padding=rng.choice([0, 1, 2]),
                    stride=rng.choice([1, 1, 2]),
                    dw_bn=rng.random() < 0.7,
                    dw_relu=rng.random() < 0.5,
                    bn=rng.random() < 0.7,
                    relu=rng.random() < 0.8,
                    order=rng.choice(["relu_bn", "bn_relu"]),
                    bias=rng.random() < 0.8,
                )
            )
        elif kind < 0.7:
            layers.append(
                Conv(
                    out=rng.randint(1, 24),
                    kernel=rng.choice([1, 3, 5]),
                    padding=rng.choice([0, 1, 2]),
                    bn=rng.random() < 0.7,
                    relu=rng.random() < 0.8,
                    order=rng.choice(["relu_bn", "bn_relu"]),
                    bias=rng.random() < 0.8,
                    stride=rng.choice([1, 1, 1, 2]),
                )
            )
        elif kind < 0.9:
            layers.append(Pool(kind=rng.choice(["max", "avg"])))
        else:
            layers.append(Dropout(p=rng.choice([0.0, 0.05, 0.1])))
    head = rng.choice(
        [
            Head("conv_gap", rng.choice([1, 3]), rng.choice([0, 1]), rng.random() < 0.8),
            Head("gap_conv", bias=rng.random() < 0.8),
        ]
    )
    return Arch(
        layers=layers, head=head, input=(rng.choice([1, 3]), rng.choice([16, 28, 32]), 28), classes=rng.choice([10, 7])
    )


def random_valid_archs(n: int, seed: int = 0) -> list[Arch]:
    rng, out = random.Random(seed), []
    while len(out) < n:
        arch = random_arch(rng)
        try:
            plan(arch)
        except SpecError:
            continue
        if not any(isinstance(layer, Conv) for layer in arch.layers):
            continue  # a file needs at least one conv layer
        out.append(arch)
    return out


def test_seed_counts_and_total():
    arch = load_arch(SEED)
    steps = plan(arch)
    assert [s.params for s in steps if s.params] == SEED_COUNTS
    assert param_count(arch) == 9274
    assert steps[-1].shape == (10,)
    assert receptive_field(arch) == 38


def test_seed_variant_has_same_total():
    assert param_count(load_arch(Path(__file__).parent / "seed_9274_summary.toml")) == 9274


def test_stride_halves_the_map_and_doubles_the_jump():
    arch = Arch(layers=[Conv(4, stride=2), Conv(4)], head=Head("gap_conv"))
    convs = [s for s in plan(arch) if s.module == "Conv2d"]
    assert convs[0].shape == (4, 14, 14) and convs[0].args["stride"] == 2
    assert convs[1].rf == 3 + 2 * 2  # the second 3x3 conv steps 2 input pixels at a time
    valid = Arch(layers=[Conv(4, padding=0, stride=2)], head=Head("gap_conv"))
    assert plan(valid)[0].shape == (4, 13, 13)  # floor((28 - 3) / 2) + 1


def test_separable_conv_is_a_depthwise_then_a_pointwise_conv():
    arch = Arch(layers=[Conv(4), SepConv(16, dw_relu=True, order="bn_relu")], head=Head("gap_conv", bias=False))
    steps = plan(arch)
    assert [s.module for s in steps] == [
        "Conv2d",
        "ReLU",
        "BatchNorm2d",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "AdaptiveAvgPool2d",
        "Conv2d",
        "Flatten",
    ]
    depthwise, pointwise = steps[3], steps[6]
    assert depthwise.args["groups"] == 4 and depthwise.params == 4 * 9 + 4 and pointwise.params == 16 * 4 + 16
    assert steps[-2].params == 16 * 10  # no head bias
    assert depthwise.rf == 5 and pointwise.rf == 5
    c = costs(arch)
    assert c.macs == 28 * 28 * (4 * 9 + 4 * 9 + 4 * 16) + 16 * 10


def test_seed_costs():
    c = costs(load_arch(SEED))
    assert c.macs == 1_217_160  # the figure; tests/test_model.py checks every count against torch
    # The peak is the third conv at 28x28: its 4-channel input plus its 8-channel output.
    assert c.peak_step == 6 and c.activation_int8 == 28 * 28 * (4 + 8) and c.activation_fp32 == 4 * c.activation_int8
    # Every BatchNorm of the seed follows a ReLU, so none folds: fp32 stores exactly the parameters.
    assert not any(s.folded for s in c.steps) and c.model_fp32 == 4 * 9274
    weights, conv_channels, bn_channels = 9036, 86, 76
    # int8: per conv channel a 4-byte scale and a 4-byte bias; a kept scale and shift at 1 byte a number.
    assert c.model_int8 == weights + 8 * conv_channels + 2 * bn_channels


def test_batchnorm_right_after_a_conv_folds_away():
    seed = load_arch(SEED)
    folded = replace(
        seed, layers=[replace(layer, order="bn_relu") if isinstance(layer, Conv) else layer for layer in seed.layers]
    )
    c, bn_numbers = costs(folded), 2 * 76
    assert param_count(folded) == 9274 and sum(s.folded for s in c.steps) == 7
    assert c.model_fp32 == 4 * (9274 - bn_numbers) and c.model_int8 == 9036 + 8 * 86
    assert (c.macs, c.activation_int8) == (costs(seed).macs, costs(seed).activation_int8)
    # A bias-free conv gains the folded bias: deployed numbers stay below the trained ones.
    nobias = Arch(layers=[Conv(8, bias=False, order="bn_relu")], head=Head("gap_conv"))
    assert costs(nobias).model_fp32 == 4 * (param_count(nobias) - 8)
    # Without a bias or a BatchNorm to fold, a conv stores no int32 bias, only its per-channel scales.
    bare = Arch(layers=[Conv(8, bias=False, bn=False)], head=Head("gap_conv"))
    assert costs(bare).steps[0].int8_bytes == 8 * 9 + 8 * 4


@pytest.mark.parametrize("arch", random_valid_archs(60, seed=1), ids=lambda a: f"{len(a.layers)}layers")
def test_toml_round_trip(arch):
    assert arch_from_dict(tomllib.loads(arch_to_toml(arch)), "roundtrip") == arch


def test_seed_file_round_trip():
    arch = load_arch(SEED)
    again = arch_from_dict(tomllib.loads(arch_to_toml(arch)), "x")
    assert again == arch


@pytest.mark.parametrize(
    "text, key, problem",
    [
        ("layers = [{ conv = 4 }, { conv = 0 }]", "layers[1].out", "between 1 and 4,096"),
        ("layers = [{ conv = 1000000000 }]", "layers[0].out", "between 1 and 4,096"),
        ("layers = [{ conv = 4, kernel = 2 }]", "layers[0].kernel", "odd"),
        ("layers = [{ conv = 4, stride = 0 }]", "layers[0].stride", "between 1 and 8"),
        ("layers = []", "layers", "at least one conv layer"),
        ('layers = [{ pool = "max" }]', "layers", "at least one conv layer"),
        ("layers = [{ conv = 4 }]\ninput = [1, 0, 28]", "input", "integers from 1"),
        ('layers = [{ conv = "8" }]', "layers[0].out", "expected int"),
        ('layers = [{ conv = 4, pool = "max" }]', "layers[0]", "exactly one"),
        ("layers = [{ sep = 4, kernel = 4 }]", "layers[0].kernel", "odd"),
        ("layers = [{ sep = 4, dw_relu = 1 }]", "layers[0].dw_relu", "expected bool"),
        ('layers = [{ pool = "median" }]', "layers[0].kind", "max, avg"),
        ("layers = [{ conv = 4, colour = 1 }]", "layers[0].colour", "unknown key"),
        ('layers = [{ conv = 4 }]\nhead = { type = "linear" }', "head.type", "conv_gap"),
        ("layers = [{ conv = 4 }]\nwidth = 3", "width", "unknown key"),
        ('name = "x"', "layers", "missing"),
        ("layers = [{ conv = 4, padding = 0 }] \ninput = [1, 3, 3]\nhead = { kernel = 3 }", "head", "shrinks"),
        ("layers = [", "toml", "not valid TOML"),
    ],
)
def test_bad_files_name_file_key_and_problem(tmp_path, text, key, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_arch(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: ") and problem in message and "\n" not in message


def test_missing_file():
    with pytest.raises(SpecError, match="no such file"):
        load_arch(ROOT / "nope.toml")
