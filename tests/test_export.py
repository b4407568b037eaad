import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nas.arch import load_arch, param_count
from nas.cli import app
from nas.data import normalize, read_idx
from nas.predict import pixels
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
    card = (out / "README.md").read_text()
    assert "Total params" in card and "verified in a fresh process" in log
    assert "normalisation is inside the model" in card and "pixels in [0, 1], white digit on black" in card and "pixels in [0, 1]" in m["input"]


def test_torchscript_round_trip_matches_eager(exported, mnist_dir):
    out, _, _ = exported
    arch = load_arch(out / "architecture.toml")
    eager = build(arch)
    eager.load_state_dict(torch.load(out / "state_dict.pt"))
    eager.eval()
    scripted = torch.jit.load(str(out / "model.pt")).eval()
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:3000]
    with torch.no_grad():
        assert torch.equal(scripted(pixels(raw)).argmax(1), eager(normalize(raw)).argmax(1))  # model.pt normalises inside
    graph = str(scripted.inlined_graph)
    assert "linear" not in graph.lower() and ("aten::_convolution" in graph or "conv2d" in graph)


# Only torch: nas cannot be imported (an editable install would otherwise find it), -I drops
# PYTHONPATH, the script's folder and user site-packages.
_TORCH_ONLY = """
import sys
sys.modules["nas"] = None
import torch
model = torch.jit.load(sys.argv[1]).eval()
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(x).argmax(1), sys.argv[3])
assert not [m for m in sys.modules if m.startswith(("nas.", "optuna"))]
"""


def test_model_pt_takes_raw_pixels_in_a_process_with_only_torch(exported, mnist_dir, tmp_path):
    out, _, _ = exported
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz").long()
    x = pixels(raw)
    assert x.min() == 0 and x.max() == 1 and x.shape == (10000, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    r = subprocess.run([sys.executable, "-I", "-c", _TORCH_ONLY, str(out / "model.pt"), "x.pt", "pred.pt"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "pred.pt")
    eager = build(load_arch(out / "architecture.toml"))
    eager.load_state_dict(torch.load(out / "state_dict.pt"))
    with torch.no_grad():
        expected = eager.eval()(normalize(raw)).argmax(1)
    assert torch.equal(got, expected)
    m = json.loads((out / "metrics.json").read_text())
    assert (got == labels).float().mean().item() == m["test_acc"]  # the accuracy the model card states, on raw pixels


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
        expected = model(pixels(test)).argmax(1).tolist()
    lines = r.output.splitlines()
    got = [int(line.split(": ")[1].split()[0]) for line in lines]
    assert got[:3] == expected and got[3] == expected[0]
    assert "inverted" in lines[3] and not any("inverted" in line for line in lines[:3] + lines[4:])
    assert len(lines) == 4 + 10000 and got[4:7] == expected


def test_predict_bad_files(exported, tmp_path):
    out, _, _ = exported
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    blank = tmp_path / "blank.png"
    Image.new("L", (28, 28)).save(blank)
    for args, text in (([out / "model.pt", junk], "not a PNG/JPEG image or IDX"), ([junk, blank], "not a TorchScript model"), ([out / "model.pt", tmp_path / "none.png"], "no such file")):
        r = subprocess.run([sys.executable, "-m", "nas", "predict", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 2 and text in r.stderr, r.stderr


def test_predict_refuses_a_model_that_does_not_normalise(tmp_path):
    old = torch.jit.script(build(load_arch(SEED)))  # what nas export wrote before normalisation moved inside
    old.save(str(tmp_path / "old.pt"))
    Image.fromarray(torch.zeros(28, 28, dtype=torch.uint8).numpy()).save(tmp_path / "d.png")
    r = subprocess.run([sys.executable, "-m", "nas", "predict", str(tmp_path / "old.pt"), str(tmp_path / "d.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "expects normalised input; export it again" in r.stderr and len(r.stderr.splitlines()) == 1


def test_seed_arch_exports_too(tmp_path, mnist_dir):
    r = cli("export", "--arch", SEED, "--out", tmp_path / "seed", "--epochs", 1, "--train-size", 500, "--data-dir", mnist_dir)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "seed" / "metrics.json").read_text())
    assert m["params"] == 9274 and m["arch_file"].endswith("seed_9274.toml") and m["study"] is None


def test_a_failed_export_leaves_nothing_behind(tmp_path, mnist_dir, monkeypatch):
    """A relative --out once failed the check in a fresh process after the whole retraining, and
    left model.pt and friends behind, so the re-run was refused."""
    import nas.export as ex

    def broken(*a, **k):
        raise ex.ExportError("the exported model could not be loaded in a fresh process: (made to fail)")

    monkeypatch.setattr(ex, "verify", broken)
    monkeypatch.chdir(tmp_path)
    r = cli("export", "--arch", SEED, "--out", "runs/winner", "--epochs", 1, "--train-size", 300, "--data-dir", mnist_dir)
    assert r.exit_code == 1 and "made to fail" in r.output
    assert not (tmp_path / "runs" / "winner").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    r = cli("export", "--arch", SEED, "--out", "kept", "--epochs", 1, "--train-size", 300, "--data-dir", mnist_dir)
    assert r.exit_code == 1 and sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    r = cli("export", "--arch", SEED, "--out", "runs/winner", "--epochs", 1, "--train-size", 300, "--data-dir", mnist_dir)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "runs" / "winner").iterdir()) == sorted(ex.FILES)
