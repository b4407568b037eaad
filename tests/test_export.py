import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nas.arch import load_arch, param_count
from nas.cli import app
from nas.data import load_test, normalize, read_idx
from nas.model import build
from nas.search import Run, search
from nas.settings import StudySettings

from conftest import SEED


def cli(*args):
    return CliRunner().invoke(app, list(map(str, args)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_dir):
    """A tiny study, its best trial exported after one epoch on 1,000 images, two seeds."""
    tmp = tmp_path_factory.mktemp("export")
    store = f"sqlite:///{tmp}/s.db"
    search("e", store, StudySettings(max_epochs=1, train_size=600, val_size=300, target_accuracy=0.05), 2, None, Run(device="cpu", data_dir=str(mnist_dir)))
    r = cli("export", "--study", "e", "--storage", store, "--out", tmp / "model", "--train-size", 1000, "--seeds", 2, "--data-dir", mnist_dir)
    assert r.exit_code == 0, r.output
    return tmp / "model", store, r.output


def test_files_and_metrics(exported):
    out, _, log = exported
    for name in ("model.pt", "state_dict.pt", "architecture.toml", "metrics.json", "README.md"):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    arch = load_arch(out / "architecture.toml")
    assert m["params"] == param_count(arch) and m["receptive_field"] > 0
    assert m["study"] == "e" and isinstance(m["trial"], int) and m["verified"] is True
    assert len(m["seeds"]) == 2 and m["test_acc"] == m["seeds"][0]["test_acc"]
    assert m["test_acc_min"] <= m["test_acc_mean"] <= m["test_acc_max"]
    assert m["train_images"] == 1000 and m["torchscript"] == "script"
    assert set(m["versions"]) >= {"nas", "torch", "optuna"}
    assert "Total params" in (out / "README.md").read_text() and "verified in a fresh process" in log


def test_torchscript_round_trip_matches_eager(exported, mnist_dir):
    out, _, _ = exported
    arch = load_arch(out / "architecture.toml")
    eager = build(arch)
    eager.load_state_dict(torch.load(out / "state_dict.pt"))
    eager.eval()
    scripted = torch.jit.load(str(out / "model.pt")).eval()
    x = load_test(mnist_dir).x[:3000]
    with torch.no_grad():
        assert torch.equal(scripted(x).argmax(1), eager(x).argmax(1))
    graph = str(scripted.inlined_graph)
    assert "linear" not in graph.lower() and ("aten::_convolution" in graph or "conv2d" in graph)


def test_no_feasible_trial_is_a_clear_error(exported):
    _, store, _ = exported
    r = subprocess.run([sys.executable, "-m", "nas", "export", "--study", "nope", "--storage", store, "--out", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "no such study" in r.stderr
    import optuna

    study = optuna.load_study(study_name="e", storage=store)
    settings = dict(study.user_attrs["settings"], target_accuracy=0.9999)
    study.set_user_attr("settings", settings)
    r = subprocess.run([sys.executable, "-m", "nas", "export", "--study", "e", "--storage", store, "--out", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "no complete trial reaching 99.99 %" in r.stderr and len(r.stderr.splitlines()) == 1


def test_predict_on_pngs_and_idx(exported, mnist_dir, tmp_path):
    out, _, _ = exported
    test = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:3]
    paths = []
    for i, img in enumerate(test):
        Image.fromarray(img.numpy()).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    Image.fromarray(255 - test[0].numpy()).save(tmp_path / "paper.png")  # dark ink on white paper
    r = cli("predict", out / "model.pt", *paths, tmp_path / "paper.png", mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert r.exit_code == 0, r.output
    model = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        expected = model(normalize(test)).argmax(1).tolist()
    lines = r.output.splitlines()
    got = [int(line.split(": ")[1].split()[0]) for line in lines]
    assert got[:3] == expected and got[3] == expected[0]
    assert len(lines) == 4 + 10000 and got[4:7] == expected


def test_predict_bad_files(exported, tmp_path):
    out, _, _ = exported
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    for args, text in (([out / "model.pt", junk], "not a PNG/JPEG image or IDX"), ([junk, junk], "not a TorchScript model"), ([out / "model.pt", tmp_path / "none.png"], "no such file")):
        r = subprocess.run([sys.executable, "-m", "nas", "predict", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 2 and text in r.stderr, r.stderr


def test_seed_arch_exports_too(tmp_path, mnist_dir):
    r = cli("export", "--arch", SEED, "--out", tmp_path / "seed", "--epochs", 1, "--train-size", 500, "--data-dir", mnist_dir)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "seed" / "metrics.json").read_text())
    assert m["params"] == 9274 and m["arch_file"].endswith("seed_9274.toml") and m["study"] is None
