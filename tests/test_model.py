import pytest
import torch
from conftest import SEED
from test_arch import random_valid_archs
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.arch.model import Affine, build, count_params, deployed
from nas.arch.spec import Arch, Conv, Dropout, Head, Pool, SepConv, costs, load_arch, param_count, plan

ARCHS = random_valid_archs(300, seed=7)


def test_seed_builds_to_9274_parameters():
    assert count_params(build(load_arch(SEED))) == 9274


def test_analytic_count_equals_torch_for_random_specs():
    mismatches = [
        (a, param_count(a), count_params(build(a))) for a in ARCHS if param_count(a) != count_params(build(a))
    ]
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


# --- costs, checked on real torch modules -----------------------------------------------------


def trained_looking(arch, seed: int = 0) -> nn.Sequential:
    """The built model in eval mode, with BatchNorm statistics away from identity so folding matters."""
    torch.manual_seed(seed)
    model = build(arch).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    return model


def measured_peak(model: nn.Sequential, arch) -> int:
    """Largest number of elements held by one module's input and output, from the real tensors
    (an output sharing its input's storage, in place or a view, is no second buffer)."""
    held: list[int] = []

    def hook(module, inputs, output):
        x = inputs[0]
        same = output.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        held.append(x.numel() + (0 if same else output.numel()))

    handles = [m.register_forward_hook(hook) for m in model]
    with torch.no_grad():
        model(torch.randn(1, *arch.input))
    for h in handles:
        h.remove()
    return max(held)


def measured_bytes(model: nn.Sequential) -> tuple[int, int]:
    """(int8, fp32) bytes of a deployed model's stored tensors; int8 quantises each conv's weights
    per output channel for real, with an fp32 scale and an int32 bias (where it has one) per channel,
    and a kept BatchNorm's scale and shift to int8 with one scale per tensor (excluded, as
    per-tensor scales are). tests/test_deploy.py checks the same against a real int8 ONNX file."""
    int8 = fp32 = 0
    for m in model:
        tensors = [t for t in (*m.parameters(), *m.buffers()) if t is not None]
        fp32 += sum(t.numel() * t.element_size() for t in tensors)
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach()
            scales = (w.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12)
            q = torch.round(w / scales.view(-1, 1, 1, 1)).clamp(-127, 127).to(torch.int8)
            kept = [q, scales.float()] + (
                [(m.bias.detach() / scales).round().to(torch.int32)] if m.bias is not None else []
            )
            int8 += sum(t.numel() * t.element_size() for t in kept)
        elif isinstance(m, Affine):
            int8 += sum(
                torch.round(t / t.abs().max().clamp_min(1e-12) * 127).to(torch.int8).numel() for t in (m.scale, m.shift)
            )
        else:
            int8 += sum(t.numel() * t.element_size() for t in tensors)
    return int8, fp32


def test_macs_are_half_of_torchs_flop_count():
    for arch in ARCHS[:200]:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            build(arch).eval()(torch.randn(1, *arch.input))
        assert counter.get_total_flops() == 2 * costs(arch).macs, arch


def test_seed_macs_measured_by_torch():
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        build(load_arch(SEED)).eval()(torch.randn(1, 1, 28, 28))
    assert counter.get_total_flops() == 2 * 1_217_160


def test_peak_activation_and_model_bytes_match_a_deployed_torch_copy():
    folded = 0
    for n, arch in enumerate([load_arch(SEED), *ARCHS[:100]]):
        model = trained_looking(arch, n)
        deployed_copy = deployed(model)
        x = torch.randn(2, *arch.input)
        with torch.no_grad():
            assert torch.allclose(deployed_copy(x.clone()), model(x), atol=1e-4, rtol=1e-4), (
                arch
            )  # the deployed copy is the same network
        c = costs(arch)
        assert measured_peak(deployed_copy, arch) == c.activation_int8 == c.activation_fp32 // 4, arch
        assert measured_bytes(deployed_copy) == (c.model_int8, c.model_fp32), arch
        folded += sum(s.folded for s in c.steps)
    assert folded > 30  # both BatchNorm orders were exercised


def test_packed_network_is_k_separate_networks_forward_and_gradients():
    """Grouped convs and K x C BatchNorm channels: copy k depends on copy k's weights and input only."""
    from nas.arch.model import copies_of, pack

    no_dropout = [
        a for a in ARCHS if not any(isinstance(layer, Dropout) for layer in a.layers)
    ]  # dropout draws random masks
    separable = Arch(
        layers=[Conv(4), SepConv(8, dw_relu=True), Pool("max"), SepConv(12, order="bn_relu", stride=2)],
        head=Head("gap_conv"),
    )
    for arch in [load_arch(SEED), separable] + no_dropout[:4]:
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
                assert torch.allclose(p.grad.chunk(3)[k], q.grad, atol=1e-5, rtol=1e-4), (
                    arch,
                    k,
                    name,
                    (p.grad.chunk(3)[k] - q.grad).abs().max(),
                )  # sums of thousands of terms in another order
            for name, buf in packed.named_buffers():  # running statistics moved per copy
                if buf.dim():
                    assert torch.allclose(buf.chunk(3)[k], dict(net.named_buffers())[name], atol=1e-6), name


def test_unpack_gives_back_each_plain_network():
    from nas.arch.model import pack, unpack

    arch = load_arch(SEED)
    nets = [build(arch) for _ in range(2)]
    packed = pack(nets, arch)
    for k, net in enumerate(nets):
        plain = unpack(packed, arch, k)
        assert [type(m) for m in plain] == [type(m) for m in build(arch)] and plain[0].groups == 1
        assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), net.state_dict().values()))
    with pytest.raises(IndexError):
        unpack(packed, arch, 2)
