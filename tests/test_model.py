import pytest
import torch
from torch import nn

from nas.arch import Dropout, load_arch, param_count, plan
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


def test_packed_network_is_k_separate_networks_forward_and_gradients():
    """Grouped convs and K x C BatchNorm channels: copy k depends on copy k's weights and input only."""
    from nas.model import copies_of, pack

    no_dropout = [a for a in ARCHS if not any(isinstance(layer, Dropout) for layer in a.layers)]  # dropout draws random masks
    for arch in [load_arch(SEED)] + no_dropout[:4]:
        nets = []
        for s in range(3):
            torch.manual_seed(s)
            nets.append(build(arch))
        packed = pack(nets, arch)
        assert copies_of(packed) == 3 and count_params(packed) == 3 * param_count(arch)
        xs = [torch.randn(6, *arch.input) for _ in range(3)]
        ys = [torch.randint(0, arch.classes, (6,)) for _ in range(3)]
        out = packed(torch.cat(xs, 1)).view(6, 3, arch.classes)  # train mode: batch statistics per copy
        sum(nn.functional.cross_entropy(out[:, k], ys[k]) for k in range(3)).backward()
        for k, net in enumerate(nets):
            alone = net(xs[k])
            nn.functional.cross_entropy(alone, ys[k]).backward()
            assert torch.allclose(out[:, k], alone, atol=1e-5), (arch, k)
            for (name, p), q in zip(packed.named_parameters(), net.parameters()):
                assert torch.allclose(p.grad.chunk(3)[k], q.grad, atol=1e-5), (arch, k, name)
            for name, buf in packed.named_buffers():  # running statistics moved per copy
                if buf.dim():
                    assert torch.allclose(buf.chunk(3)[k], dict(net.named_buffers())[name], atol=1e-6), name


def test_unpack_gives_back_each_plain_network():
    from nas.model import pack, unpack

    arch = load_arch(SEED)
    nets = [build(arch) for _ in range(2)]
    packed = pack(nets, arch)
    for k, net in enumerate(nets):
        plain = unpack(packed, arch, k)
        assert [type(m) for m in plain] == [type(m) for m in build(arch)] and plain[0].groups == 1
        assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.state_dict().values()))
    with pytest.raises(IndexError):
        unpack(packed, arch, 2)
