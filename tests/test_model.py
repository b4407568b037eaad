import torch
from torch import nn

from nas.arch import load_arch, param_count, plan
from nas.model import build, count_params

from conftest import SEED
from test_arch import random_valid_archs

ARCHS = random_valid_archs(300, seed=7)


def test_seed_builds_to_9274_parameters():
    assert count_params(build(load_arch(SEED))) == 9274


def test_analytic_count_equals_torch_for_random_specs():
    mismatches = [(a, param_count(a), count_params(build(a))) for a in ARCHS if param_count(a) != count_params(build(a))]
    assert not mismatches


def test_no_linear_and_logits_shape_for_random_specs():
    for arch in ARCHS[:120]:
        model = build(arch).eval()
        assert not any(isinstance(m, nn.Linear) for m in model.modules())
        out = model(torch.randn(2, *arch.input))
        assert out.shape == (2, arch.classes)


def test_planned_shapes_match_real_activations():
    for arch in ARCHS[:60]:
        x = torch.randn(1, *arch.input)
        for module, step in zip(build(arch).eval(), plan(arch)):
            x = module(x)
            assert tuple(x.shape[1:]) == step.shape, (arch, step)
