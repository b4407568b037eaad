"""The ONNX files hold what the analytic model bytes say, are self-contained, and run without torch."""

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import SEED
from test_model import trained_looking

from nas.arch.model import deployed
from nas.arch.spec import Arch, Conv, Dropout, Head, Pool, costs, load_arch, plan
from nas.data.tensors import read_idx
from nas.ship import deploy
from nas.ship.export import RawPixels
from nas.ship.predict import pixels

pytestmark = pytest.mark.usefixtures("onnx_extra")

SEED_ARCH = load_arch(SEED)
ARCHS = {
    "seed (relu_bn: every BatchNorm kept)": SEED_ARCH,
    "seed in bn_relu order (every BatchNorm folded)": replace(
        SEED_ARCH,
        layers=[replace(layer, order="bn_relu") if isinstance(layer, Conv) else layer for layer in SEED_ARCH.layers],
    ),
    "stride 2, avg pool, dropout, a bias-free conv, gap_conv head": Arch(
        layers=[
            Conv(4, stride=2),
            Conv(6, bias=False, bn=False),
            Pool("avg"),
            Dropout(0.1),
            Conv(8, padding=0, order="bn_relu", bias=False),
        ],
        head=Head("gap_conv"),
    ),
}


# The operators of a network nas builds, and nothing else (no index arithmetic, no shape computation).
NETWORK_OPS = {"Sub", "Div", "Conv", "Relu", "Mul", "Add", "MaxPool", "AveragePool", "ReduceMean", "Reshape"}


@pytest.fixture(scope="module")
def calibration(mnist_dir) -> np.ndarray:
    return pixels(read_idx(mnist_dir / "train-images-idx3-ubyte.gz")[:200]).numpy()


@pytest.fixture(scope="module")
def test_pixels(mnist_dir) -> np.ndarray:
    return pixels(read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:500]).numpy()


@pytest.mark.parametrize("name", ARCHS)
def test_stored_tensors_are_the_analytic_model_bytes(name, calibration, tmp_path):
    """Of each file's tensors, the conv weights, their scales, biases and kept BatchNorms are
    byte for byte nas.arch.spec's model bytes; the rest is named, none is left unclassified."""
    arch = ARCHS[name]
    fp32, int8 = tmp_path / deploy.FP32, tmp_path / deploy.INT8
    trained = trained_looking(arch).to(memory_format=torch.channels_last)  # as the CPU trains at batch 1024
    deploy.write_fp32(RawPixels(deployed(trained)), torch.rand(2, *arch.input), fp32)
    deploy.quantize(fp32, int8, calibration)
    c, f, q = costs(arch), deploy.stored(fp32), deploy.stored(int8)
    assert f["budgeted_bytes"] == c.model_fp32 and q["budgeted_bytes"] == c.model_int8, (f["by_role"], q["by_role"])
    assert set(f["by_dtype"]) == {"float32", "int64"} and set(q["by_dtype"]) >= {"int8", "float32"}
    assert sum(f["by_role"].values()) == f["tensor_bytes"] == sum(f["by_dtype"].values()) < f["file_bytes"]
    assert sum(q["by_role"].values()) == q["tensor_bytes"] and set(q["by_role"]) <= set(deploy.ROLES)
    steps = plan(arch)
    kept = any(p.module == "BatchNorm2d" and not s.folded for p, s in zip(steps, c.steps))
    assert ("kept BatchNorm" in q["by_role"]) == ("kept BatchNorm" in f["by_role"]) == kept
    weights = sum(p.params - (p.args["out_channels"] if p.args["bias"] else 0) for p in steps if p.module == "Conv2d")
    assert q["by_role"]["conv weights"] == weights and f["by_role"]["conv weights"] == 4 * weights
    assert sorted(p.name for p in tmp_path.iterdir()) == [deploy.INT8, deploy.FP32]  # no external data file
    assert set(f["ops"]) <= NETWORK_OPS and set(q["ops"]) <= NETWORK_OPS | {"QuantizeLinear", "DequantizeLinear"}, (
        f["ops"],
        q["ops"],
    )


def test_files_run_alone_with_onnxruntime(calibration, test_pixels, tmp_path):
    """A copy of model.onnx alone in an empty folder runs in a process without torch, as the
    network does in torch; the file names no path of the machine that wrote it."""
    arch = SEED_ARCH
    model = RawPixels(trained_looking(arch)).eval()
    made = tmp_path / "made"
    made.mkdir()
    deploy.write_fp32(RawPixels(deployed(trained_looking(arch))), torch.rand(2, *arch.input), made / deploy.FP32)
    deploy.quantize(made / deploy.FP32, made / deploy.INT8, calibration)
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in (deploy.FP32, deploy.INT8):
        shutil.copy(made / name, alone / name)
        assert (
            b"stack_trace" not in (alone / name).read_bytes()
            and str(tmp_path).encode() not in (alone / name).read_bytes()
        )
    fp32, int8 = deploy.run_isolated([alone / deploy.FP32, alone / deploy.INT8], test_pixels)
    with torch.no_grad():
        expected = model(torch.from_numpy(test_pixels)).numpy()
    assert fp32.shape == int8.shape == (500, 10)
    assert np.abs(fp32 - expected).max() < 1e-4 and (fp32.argmax(1) == expected.argmax(1)).all()
    assert (int8.argmax(1) == fp32.argmax(1)).mean() > 0.9  # quantised, so close but not equal
    assert not np.array_equal(int8, fp32)


def test_run_isolated_reports_a_broken_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match=r"\S"):
        deploy.run_isolated([junk], np.zeros((1, 1, 28, 28), np.float32))
