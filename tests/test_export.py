import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import QUADRANTS, SEED, quadrants
from PIL import Image
from typer.testing import CliRunner

from nas.arch.model import build
from nas.arch.spec import costs, load_arch, param_count
from nas.cli.app import app
from nas.data.datasets import MNIST
from nas.data.tensors import normalize, read_idx
from nas.search.worker import Run, search
from nas.ship.export import FILES, RawPixels
from nas.ship.predict import ModelInfo, pixels
from nas.study.settings import StudySettings


def cli(*args):
    return CliRunner().invoke(app, list(map(str, args)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_dir):
    """A tiny study, its best trial exported after one epoch on 1,000 images, two seeds."""
    tmp = tmp_path_factory.mktemp("export")
    store = f"sqlite:///{tmp}/s.db"
    search(
        "e",
        store,
        StudySettings(max_epochs=1, train_size=600, val_size=300, target_accuracy=0.05),
        2,
        None,
        Run(device="cpu", data_dir=str(mnist_dir)),
    )
    r = cli(
        "export",
        "--study",
        "e",
        "--storage",
        store,
        "--out",
        tmp / "model",
        "--train-size",
        1000,
        "--seeds",
        2,
        "--data-dir",
        mnist_dir,
    )
    assert r.exit_code == 0, r.output
    return tmp / "model", store, r.output


def test_files_and_metrics(exported):
    out, _, log = exported
    for name in ("model.pt", "model.pt2", "state_dict.pt", "architecture.toml", "metrics.json", "README.md"):
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
    assert (
        "normalisation is inside the model" in card
        and "pixels to [0, 1], light on dark as the training images are" in card
    )
    assert (
        m["input"].startswith("model.pt: float [N, 1, 28, 28] pixels in [0, 1]")
        and m["background"] == "dark"
        and m["dataset"]["sha256"] == MNIST.sha256
    )
    assert "| data | mnist, SHA-256 of its arrays 05a957b0" in card and ".reshape(-1, 1, 28, 28)" in card


def test_torchscript_round_trip_matches_eager(exported, mnist_dir):
    out, _, _ = exported
    arch = load_arch(out / "architecture.toml")
    eager = build(arch)
    eager.load_state_dict(torch.load(out / "state_dict.pt"))
    eager.eval()
    scripted = torch.jit.load(str(out / "model.pt")).eval()
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:3000]
    with torch.no_grad():
        assert torch.equal(
            scripted(pixels(raw)).argmax(1), eager(normalize(raw)).argmax(1)
        )  # model.pt normalises inside
    graph = str(scripted.inlined_graph)
    assert "linear" not in graph.lower() and ("aten::_convolution" in graph or "conv2d" in graph)


# Only torch: nas cannot be imported (an editable install would otherwise find it), -I drops
# PYTHONPATH, the script's folder and user site-packages.
_TORCH_ONLY = """
import sys
sys.modules["nas"] = None
import torch
model = torch.jit.load(sys.argv[1]).eval() if sys.argv[1].endswith(".pt") else torch.export.load(sys.argv[1]).module()
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(x).argmax(1), sys.argv[3])
assert not [m for m in sys.modules if m.startswith(("nas.", "optuna"))]
"""


@pytest.mark.parametrize("name", ["model.pt", "model.pt2"])
def test_model_pt_takes_raw_pixels_in_a_process_with_only_torch(exported, mnist_dir, tmp_path, name):
    """model.pt (TorchScript) and model.pt2 (torch.export), each in a process where only torch loads."""
    out, _, _ = exported
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz").long()
    x = pixels(raw)
    assert x.min() == 0 and x.max() == 1 and x.shape == (10000, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    r = subprocess.run(
        [sys.executable, "-I", "-c", _TORCH_ONLY, str(out / name), "x.pt", "pred.pt"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
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
    r = subprocess.run(
        [sys.executable, "-m", "nas", "export", "--study", "nope", "--storage", store, "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no such study" in r.stderr
    import optuna

    study = optuna.load_study(study_name="e", storage=store)
    settings = dict(study.user_attrs["settings"], target_accuracy=0.9999)
    study.set_user_attr("settings", settings)
    r = subprocess.run(
        [sys.executable, "-m", "nas", "export", "--study", "e", "--storage", store, "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no complete trial reaching 99.99 %" in r.stderr and len(r.stderr.splitlines()) == 1


def digit_pngs(mnist_dir, folder, n: int = 3):
    """The first n test images, and each saved as a PNG in folder."""
    test = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:n]
    paths = [folder / f"{i}.png" for i in range(n)]
    for img, path in zip(test, paths):
        Image.fromarray(img.numpy()).save(path)
    return test, paths


def predicted(output: str) -> list[int]:
    """The digits `nas predict` printed, one a line."""
    return [int(line.split(": ")[1].split()[0]) for line in output.splitlines()]


def test_predict_on_pngs_and_idx(exported, mnist_dir, tmp_path):
    out, _, _ = exported
    test, paths = digit_pngs(mnist_dir, tmp_path)
    Image.fromarray(255 - test[0].numpy()).save(tmp_path / "paper.png")  # dark ink on white paper
    r = cli("predict", out / "model.pt", *paths, tmp_path / "paper.png", mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert r.exit_code == 0, r.output
    model = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        expected = model(pixels(test)).argmax(1).tolist()
    got = predicted(r.output)
    assert got[:3] == expected and got[3] == expected[0]
    lines = r.output.splitlines()
    assert "inverted" in lines[3] and not any("inverted" in line for line in lines[:3] + lines[4:])
    assert len(got) == 4 + 10000 and got[4:7] == expected
    r2 = cli("predict", out / "model.pt2", *paths)  # torch.export's program predicts the same
    assert r2.exit_code == 0 and predicted(r2.output) == expected, r2.output


def test_predict_bad_files(exported, tmp_path):
    out, _, _ = exported
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    blank = tmp_path / "blank.png"
    Image.new("L", (28, 28)).save(blank)
    for args, text in (
        ([out / "model.pt", junk], "not a PNG/JPEG image, IDX or .npz file"),
        ([junk, blank], "is not a model written by nas export (not a TorchScript archive)"),
        ([out / "model.pt", tmp_path / "none.png"], "no such file"),
    ):
        r = subprocess.run([sys.executable, "-m", "nas", "predict", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 2 and text in r.stderr, r.stderr


def test_predict_refuses_a_model_that_does_not_normalise(tmp_path):
    old = torch.jit.script(build(load_arch(SEED)))  # what nas export wrote before normalisation moved inside
    old.save(str(tmp_path / "old.pt"))
    Image.fromarray(torch.zeros(28, 28, dtype=torch.uint8).numpy()).save(tmp_path / "d.png")
    r = subprocess.run(
        [sys.executable, "-m", "nas", "predict", str(tmp_path / "old.pt"), str(tmp_path / "d.png")],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and "expects normalised input; export it again" in r.stderr
        and len(r.stderr.splitlines()) == 1
    )


def test_seed_arch_exports_too(tmp_path, mnist_dir):
    r = cli(
        "export",
        "--arch",
        SEED,
        "--out",
        tmp_path / "seed",
        "--epochs",
        1,
        "--train-size",
        500,
        "--data-dir",
        mnist_dir,
    )
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "seed" / "metrics.json").read_text())
    assert m["params"] == 9274 and m["arch_file"].endswith("seed_9274.toml") and m["study"] is None


def test_a_failed_export_leaves_nothing_behind(tmp_path, mnist_dir, monkeypatch):
    """A relative --out once failed the check in a fresh process after the whole retraining, and
    left model.pt and friends behind, so the re-run was refused."""
    import nas.ship.export as ex

    def broken(*a, **k):
        raise ex.ExportError("the exported model could not be loaded in a fresh process: (made to fail)")

    monkeypatch.setattr(ex, "verify", broken)
    monkeypatch.chdir(tmp_path)
    r = cli(
        "export", "--arch", SEED, "--out", "runs/winner", "--epochs", 1, "--train-size", 300, "--data-dir", mnist_dir
    )
    assert r.exit_code == 1 and "made to fail" in r.output
    assert not (tmp_path / "runs" / "winner").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    r = cli("export", "--arch", SEED, "--out", "kept", "--epochs", 1, "--train-size", 300, "--data-dir", mnist_dir)
    assert r.exit_code == 1 and sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    r = cli(
        "export", "--arch", SEED, "--out", "runs/winner", "--epochs", 1, "--train-size", 300, "--data-dir", mnist_dir
    )
    assert r.exit_code == 0, r.output
    onnx = (
        () if ex.deploy.missing() else (ex.deploy.FP32, ex.deploy.INT8)
    )  # the README's install has the onnx extra; a bare one not
    assert sorted(p.name for p in (tmp_path / "runs" / "winner").iterdir()) == sorted(
        set(ex.FILES) - {ex.deploy.FP32, ex.deploy.INT8} | set(onnx)
    )


# --- ONNX: model.onnx and model.int8.onnx ---------------------------------------------------------

# Only onnxruntime and numpy: neither nas nor torch can be imported.
_ORT_ONLY = """
import sys
sys.modules["nas"] = sys.modules["torch"] = None
import numpy as np
import onnxruntime as ort
x = np.load(sys.argv[1])
for path in sys.argv[2:]:
    session = ort.InferenceSession(path)
    np.save(path + ".logits.npy", session.run(None, {"pixels": x})[0])
"""


def test_onnx_files_run_with_onnxruntime_alone_as_model_pt_does(onnx_extra, exported, mnist_dir, tmp_path):
    """Copied alone into an empty folder, model.onnx gives model.pt's class on every test image and
    its logits within the stated tolerance; model.int8.onnx scores what metrics.json says."""
    out, _, log = exported
    m = json.loads((out / "metrics.json").read_text())
    o = m["onnx"]
    for name in ("model.onnx", "model.int8.onnx"):
        shutil.copy(out / name, tmp_path / name)
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz").long()
    np.save(tmp_path / "x.npy", pixels(raw).numpy())
    r = subprocess.run(
        [sys.executable, "-I", "-c", _ORT_ONLY, "x.npy", "model.onnx", "model.int8.onnx"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    fp32 = torch.from_numpy(np.load(tmp_path / "model.onnx.logits.npy"))
    int8 = torch.from_numpy(np.load(tmp_path / "model.int8.onnx.logits.npy"))
    with torch.no_grad():
        torchscript = torch.jit.load(str(out / "model.pt")).eval()(pixels(raw))
    assert torch.equal(fp32.argmax(1), torchscript.argmax(1)) and torch.allclose(
        fp32, torchscript, atol=o["tolerance"], rtol=o["tolerance"]
    )
    assert o["tolerance"] == 1e-4 and o["fp32"]["max_logit_difference"] <= o["tolerance"]
    assert (fp32.argmax(1) == labels).float().mean().item() == o["fp32"]["test_acc"] == m["test_acc"]
    assert (int8.argmax(1) == labels).float().mean().item() == o["int8"]["test_acc"]
    assert (int8.argmax(1) == fp32.argmax(1)).float().mean().item() == o["int8"]["agreement"] > 0.9
    assert "model.int8.onnx" in log and "checked with onnxruntime alone" in log


def test_onnx_metrics_and_card_hold_the_real_bytes(onnx_extra, exported):
    out, _, _ = exported
    m = json.loads((out / "metrics.json").read_text())
    o, c = m["onnx"], costs(load_arch(out / "architecture.toml"))
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no external data file beside the models
    assert o["fp32"]["budgeted_bytes"] == c.model_fp32 and o["int8"]["budgeted_bytes"] == c.model_int8
    assert (
        4 * o["int8"]["by_role"]["conv weights"]
        == o["fp32"]["by_role"]["conv weights"]
        <= 4 * o["int8"]["by_dtype"]["int8"]
    )  # int8 for real
    assert (
        o["fp32"]["file_bytes"] == (out / "model.onnx").stat().st_size
        and o["int8"]["file_bytes"] == (out / "model.int8.onnx").stat().st_size
    )
    assert (
        o["calibration_images"] == 1000
        and "int8" in o["quantization"]
        and set(m["versions"]) >= {"onnx", "onnxruntime", "onnxscript"}
    )
    card = (out / "README.md").read_text()
    assert (
        f"{o['int8']['budgeted_bytes']:,} B (analytic {c.model_int8:,} B)" in card
        and f"{o['int8']['file_bytes']:,} B" in card
    )
    assert (
        "BatchNorm as deployed" in card
        and "training images" in card
        and 'ort.InferenceSession("model.int8.onnx")' in card
    )


def test_predict_runs_onnx_files(onnx_extra, exported, mnist_dir, tmp_path):
    out, _, _ = exported
    test, paths = digit_pngs(mnist_dir, tmp_path)
    import onnxruntime as ort

    with torch.no_grad():
        torchscript = torch.jit.load(str(out / "model.pt"))(pixels(test)).argmax(1).tolist()
    for name in ("model.onnx", "model.int8.onnx"):
        r = cli("predict", out / name, *paths)
        assert r.exit_code == 0, r.output
        expected = (
            ort.InferenceSession(str(out / name)).run(None, {"pixels": pixels(test).numpy()})[0].argmax(1).tolist()
        )
        assert predicted(r.output) == expected and (name != "model.onnx" or expected == torchscript)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    r = subprocess.run(
        [sys.executable, "-m", "nas", "predict", str(junk), str(paths[0])], capture_output=True, text=True
    )
    assert (
        r.returncode == 2 and "not an ONNX model onnxruntime can load" in r.stderr and len(r.stderr.splitlines()) == 1
    )


def test_predict_onnx_without_onnxruntime_says_how(monkeypatch, tmp_path):
    from nas.errors import UsageError
    from nas.ship.predict import load_model

    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UsageError, match=r"needs onnxruntime \(pip install 'nas\[onnx\]'\)"):
        load_model(model)


def test_export_without_the_onnx_extra_writes_torchscript_and_says_how(monkeypatch, tmp_path, mnist_dir):
    """No ONNX file (an earlier export's is removed under --force), one line saying how to get them."""
    from nas.ship import deploy

    monkeypatch.setattr(deploy, "missing", lambda: ["onnxruntime"])
    out = tmp_path / "seed"
    out.mkdir()
    (out / "model.onnx").write_text("an earlier export's")
    r = cli(
        "export", "--arch", SEED, "--out", out, "--epochs", 1, "--train-size", 300, "--data-dir", mnist_dir, "--force"
    )
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "ONNX" in line]
    assert lines == [
        "no ONNX files: onnxruntime not installed (pip install 'nas[onnx]' to get model.onnx and model.int8.onnx)"
    ]
    assert (out / "model.pt").is_file() and not (out / "model.onnx").exists() and not (out / "model.int8.onnx").exists()
    assert json.loads((out / "metrics.json").read_text())["onnx"] is None
    assert "No ONNX files: the onnx extra was not installed" in (out / "README.md").read_text()


def test_ship_onnx_refuses_a_file_that_does_not_reproduce_model_pt(onnx_extra, tmp_path, mnist_dir):
    from nas.ship.export import ExportError, ship_onnx

    net = build(load_arch(SEED)).eval()
    raw = pixels(read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")[:200])
    labels = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")[:200].long()
    with torch.no_grad():
        expected = RawPixels(net)(raw)
    o = ship_onnx(net, MNIST, ModelInfo(), tmp_path, raw, labels, expected, raw[:50], log=lambda line: None)
    assert o["fp32"]["max_logit_difference"] < 1e-4
    off = expected.clone()
    off[:, 0] += 1e-3  # a model whose logits are off by more than the tolerance
    with pytest.raises(ExportError, match="does not reproduce model.pt's predictions"):
        ship_onnx(net, MNIST, ModelInfo(), tmp_path, raw, labels, off, raw[:50], log=lambda line: None)


def test_a_colour_dataset_exports_and_predicts_with_its_shape_names_and_normalisation(tmp_path):
    """The data's shape, normalisation and class names reach model.pt, the ONNX files, the card and
    `nas predict`; pictures and files of another size or channels are refused in one line."""
    from nas.data.datasets import read

    data = quadrants(tmp_path / "rgb.npz")
    spec = read(str(data)).spec
    arch = tmp_path / "seed_rgb.toml"
    arch.write_text(
        SEED.read_text().replace("input = [1, 28, 28]", "input = [3, 32, 32]").replace("classes = 10", "classes = 4")
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "nas",
            "export",
            "--arch",
            str(SEED),
            "--dataset",
            str(data),
            "--out",
            str(tmp_path / "no"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and "input: is [1, 28, 28] but the images are [3, 32, 32] (rgb.npz)" in r.stderr
        and len(r.stderr.splitlines()) == 1
    ), r.stderr
    assert not (tmp_path / "no").exists()
    out = tmp_path / "out"
    r = cli("export", "--arch", arch, "--dataset", data, "--out", out, "--epochs", 1, "--device", "cpu")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert (
        m["input"].startswith("model.pt: float [N, 3, 32, 32]")
        and m["dataset"]["class_names"] == list(QUADRANTS)
        and m["background"] == "dark"
    )
    card = (out / "README.md").read_text()
    assert (
        "| 3 | bottom right |" in card
        and ".permute(0, 3, 1, 2)" in card
        and f"mean {list(spec.mean)}" in card
        and "(held out of the data, seeded)" in card
    )
    model = torch.jit.load(str(out / "model.pt"))
    assert (
        torch.allclose(model.mean.flatten(), torch.tensor(spec.mean)) and len(set(spec.mean)) == 3
    )  # per channel, inside the model
    ds = read(str(data))
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(ds.x_test[i].transpose(1, 2, 0)).save(paths[-1])
    np.savez(tmp_path / "few.npz", x=ds.x_test[:5].transpose(0, 2, 3, 1))
    with torch.no_grad():
        expected = model(pixels(torch.from_numpy(ds.x_test[:5]))).argmax(1).tolist()
    models = ["model.pt"] + (["model.onnx", "model.int8.onnx"] if m["onnx"] else [])
    for name in models:
        r = cli("predict", out / name, *paths, tmp_path / "few.npz")
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert predicted(r.output)[:3] == expected[:3] and all(
            line.split(": ")[1].split("  (")[0] == f"{k} {QUADRANTS[k]}" for line, k in zip(lines, predicted(r.output))
        )
        assert len(lines) == 3 + 5 and (name == "model.int8.onnx" or predicted(r.output)[3:] == expected)
    Image.new("L", (28, 28)).save(tmp_path / "grey.png")
    np.savez(tmp_path / "grey.npz", x=ds.x_test[:2, 0])
    for picture, text in (
        ("grey.png", "the image is 28x28 pixels; the model classifies 32x32 images as rgb.npz has them"),
        ("grey.npz", "holds 1-channel images; the model takes 3 (RGB), as rgb.npz has them"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "nas", "predict", str(out / "model.pt"), str(tmp_path / picture)],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and text in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_pictures_are_inverted_only_across_grey_from_the_training_images(tmp_path):
    """A digit photographed on grey paper is inverted for MNIST's white-on-black as white paper is;
    a model trained on dark ink on light gets the opposite; pictures with mixed edges never."""
    from nas.ship.predict import load_images

    ink = np.zeros((28, 28), np.uint8)
    ink[8:20, 12:16] = 1
    cases = [
        (np.where(ink, 20, 160), "dark", True),
        (np.where(ink, 0, 255), "dark", True),
        (np.where(ink, 255, 0), "dark", False),
        (np.where(ink, 230, 60), "light", True),
        (np.where(ink, 0, 255), "light", False),
        (np.where(ink, 0, 255), "mixed", False),
    ]
    for k, (picture, trained, flipped) in enumerate(cases):
        Image.fromarray(picture.astype(np.uint8)).save(tmp_path / f"{k}.png")
        x, inverted = load_images(tmp_path / f"{k}.png", ModelInfo(background=trained))
        assert inverted == flipped and x.shape == (1, 1, 28, 28), (k, trained)
        assert torch.equal(
            x[0, 0], torch.from_numpy(255 - picture.astype(np.uint8) if flipped else picture.astype(np.uint8))
        )
