"""The model card: the README.md that nas export writes next to the files, from what
metrics.json holds. It says what the model scores on the test set and costs, what it takes and how
to call it from torch or onnxruntime, in words a reader of the folder needs and nothing from nas.
"""

from __future__ import annotations

from typing import Any

from nas.arch.spec import Arch, costs
from nas.arch.summary import batchnorm_line, summary_table
from nas.data.datasets import DatasetSpec
from nas.ship import deploy
from nas.study.analytics import count


def _bytes(f: dict[str, Any]) -> str:
    return f"{f['tensor_bytes']:,} B (" + ", ".join(f"{dtype} {n:,}" for dtype, n in f["by_dtype"].items()) + ")"


def onnx_card(o: dict[str, Any] | None, model_int8: int, model_fp32: int, batchnorm: str) -> str:
    """The model card's section on the ONNX files: what they score, hold and weigh against the budget."""
    if o is None:
        return f"No ONNX files: the onnx extra was not installed at export (`{deploy.INSTALL}`, then export again)."
    fp32, int8 = o["fp32"], o["int8"]
    extra = ", ".join(f"{role} {n:,} B" for role, n in int8["by_role"].items() if role not in deploy.BUDGETED)
    fp32_row = (
        f"| `model.onnx`, fp32 | {100 * fp32['test_acc']:.2f} % (the class of `model.pt` on every test image, "
        f"logits within {o['tolerance']:.0e}) | {_bytes(fp32)} | "
        f"{fp32['budgeted_bytes']:,} B (analytic {model_fp32:,} B) | {fp32['file_bytes']:,} B |"
    )
    int8_row = (
        f"| `model.int8.onnx` | {100 * int8['test_acc']:.2f} % (agrees with fp32 on {100 * int8['agreement']:.2f} %) | "
        f"{_bytes(int8)} | {int8['budgeted_bytes']:,} B (analytic {model_int8:,} B) | {int8['file_bytes']:,} B |"
    )
    return f"""## Without PyTorch: `model.onnx` and `model.int8.onnx`

| file | test accuracy | tensors stored | of which model bytes | file |
|---|---|---|---|---|
{fp32_row}
{int8_row}

Both are single files (weights inside), checked in a fresh process with onnxruntime alone, and
take the same input as `model.pt`. {batchnorm}. `model.int8.onnx` is
{o["quantization"]}, the ranges calibrated on the first {o["calibration_images"]:,} training images
(never the test set). Model bytes are its conv weights, their scales, biases and kept BatchNorm
(definitions below the layer table); its other tensors: {extra}. The files hold their graphs besides.

    import onnxruntime as ort
    session = ort.InferenceSession("model.int8.onnx")  # or model.onnx
    classes = session.run(None, {{"{deploy.INPUT}": x.numpy()}})[0].argmax(1)  # x as above, float32"""


def model_card(arch: Arch, m: dict[str, Any]) -> str:
    """The README.md of an exported model, from `m`, what metrics.json holds."""
    d = DatasetSpec.from_dict(m["dataset"])
    origin = f"study `{m['study']}`, trial {m['trial']}" if m.get("study") else "an architecture file"
    seeds = ", ".join(f"{100 * r['test_acc']:.2f} %" for r in m["seeds"])
    n = m["train_images"]
    images = (
        f"all {n:,} training images"
        if n == d.train
        else f"the first {n:,} of the {d.train:,} training images (a smoke run)"
    )
    c = costs(arch)
    channels, h, w = d.shape
    polarity = {
        "dark": ", light on dark as the training images are (invert dark-on-light scans)",
        "light": ", dark on light as the training images are (invert light-on-dark scans)",
    }.get(m["background"], "")
    names = (
        ("\n\n| class | name |\n|---|---|\n" + "\n".join(f"| {k} | {name} |" for k, name in enumerate(d.class_names)))
        if d.class_names
        else ""
    )
    shape = (
        f"    x = x.reshape(-1, 1, {h}, {w})\n"
        if channels == 1
        else f"    x = x.permute(0, 3, 1, 2)  # images [N, {h}, {w}, {channels}] as PIL and numpy hold them, "
        f"to [N, {channels}, {h}, {w}]\n"
    )
    held_out = " (held out of the data, seeded)" if d.held_out else ""
    test_row = (
        f"| test accuracy of `model.pt` (seed 0) | {100 * m['test_acc']:.2f} % on {d.test:,} test images{held_out} |"
    )
    seeds_row = (
        f"| over {count(len(m['seeds']), 'seed')} | mean {100 * m['test_acc_mean']:.2f} %, "
        f"range {100 * m['test_acc_min']:.2f}-{100 * m['test_acc_max']:.2f} % ({seeds}) |"
    )
    return f"""# {arch.name}

A fully convolutional classifier of {d.name} ({"x".join(map(str, d.shape))} images, {d.classes} classes) found by nas
({origin}): {m["params"]:,} parameters, receptive field {m["receptive_field"]} px, no fully connected layer.

| | |
|---|---|
{test_row}
{seeds_row}
| training | {count(m["epochs"], "epoch")} on {images}, {m["train_seconds"]:.0f} s on {m["device"]} |
| search validation accuracy | {"n/a" if m.get("search_val_acc") is None else f"{100 * m['search_val_acc']:.2f} %"} |
| data | {d.name}, SHA-256 of its arrays {d.sha256} |
| MACs per image | {c.macs:,} |
| peak activation memory | {c.activation_int8:,} B at int8, {c.activation_fp32:,} B at fp32 |
| model bytes (deployed) | {c.model_int8:,} B at int8, {c.model_fp32:,} B at fp32 |{names}

The test set was used only for the figures above, after the architecture was chosen.
The costs are computed from the architecture (definitions below the layer table).

`model.pt` is TorchScript ({m["torchscript"]}); it needs only torch, and takes images as people
have them: the data's normalisation is inside the model, so do not normalise again.

    import torch
    model = torch.jit.load("model.pt").eval()
    x = images.float().div(255)  # uint8 pixels to [0, 1]{polarity}
{shape}    classes = model(x).argmax(1)

`model.pt2` is the same network as a `torch.export` program (TorchScript's successor, which
torch 2.14 recommends), checked in a fresh process like `model.pt`:

    model = torch.export.load("model.pt2").module()

`state_dict.pt` holds the bare network's weights (for `nas.arch.model.build` of `architecture.toml`),
which expects normalised input, `(x - mean) / std` per channel with mean {list(d.mean)} and std {list(d.std)}.

{onnx_card(m.get("onnx"), c.model_int8, c.model_fp32, batchnorm_line(arch))}

```
{summary_table(arch)}
```
"""
