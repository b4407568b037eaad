"""Deploy without PyTorch: the exported network as one self-contained ONNX file and a statically
quantised int8 one, run with onnxruntime alone, and what each file really stores.

Needs the `nas[onnx]` extra (onnx, onnxscript, onnxruntime), imported only inside the functions
that use it: `missing()` says what is absent, so `nas export` still writes TorchScript without it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL = "pip install 'nas[onnx]'"
FP32, INT8 = "model.onnx", "model.int8.onnx"
INPUT, OUTPUT = "pixels", "logits"
# The first training images calibrate the int8 activation ranges; the test set never does.
CALIBRATION_IMAGES = 1000
QUANTIZATION = (
    "static quantisation in the QDQ format: symmetric int8 weights with a scale per output channel, "
    "int8 activations with a scale per tensor (min-max ranges)"
)

# What each stored tensor is for. The first four are what nas.arch.spec's model bytes count; the rest
# is the format's (zero points, the bias scales QDQ stores though they are input x weight scales),
# per-tensor quantisation parameters, and the graph's own constants.
BUDGETED = ("conv weights", "weight scales", "biases", "kept BatchNorm")
ROLES = (*BUDGETED, "zero points and bias scales", "per-tensor scales", "normalisation and shapes")


def missing() -> list[str]:
    """The packages of the onnx extra that cannot be imported here."""
    return [name for name in PACKAGES if importlib.util.find_spec(name) is None]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantiser's advice (torchvision absent, pre-processing, deprecations),
    logged as warnings through Python's logging (onnxruntime's on the root logger) or warned: nas
    export prints its own lines. Errors still show."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def write_fp32(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Export `model` (eval mode; input [N, ...] like `example`, any N) as one ONNX file with its
    weights inside, and `metadata` as the model's metadata_props (quantize carries them over).
    torch's exporter notes each node's Python stack (paths on this machine) in the graph; that is
    dropped, so the file holds the network and nothing about where it was made."""
    import onnx

    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            model.eval(),
            (example,),
            dynamo=True,
            external_data=False,
            verbose=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    assert program is not None  # dynamo=True always gives the program
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.helper.set_model_props(proto, metadata or {})
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def quantize(fp32: Path, int8: Path, calibration: np.ndarray) -> None:
    """Static int8 quantisation of the fp32 file (see QUANTIZATION), activation ranges from
    `calibration` (float32 pixels, training images only)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 100)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    with _quiet():
        quantize_static(
            str(fp32),
            str(int8),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )


def stored(path: Path) -> dict[str, Any]:
    """What an ONNX file holds: its bytes on disk, its tensors' bytes by dtype and by role (ROLES),
    and the operators of its graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            arrays[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    uses: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, slot))

    def target(name: str) -> tuple[str, int]:
        """The op and input slot that consume a tensor, looking through a DequantizeLinear."""
        node, slot = uses[name][0]
        return target(node.output[0]) if node.op_type == "DequantizeLinear" and slot == 0 else (node.op_type, slot)

    def role(name: str) -> str:
        node, slot = uses[name][0]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and slot > 0:  # a scale or zero point
            of = target(node.input[0]) if node.input[0] in arrays else None
            if of == ("Conv", 1):
                return "weight scales" if slot == 1 else "zero points and bias scales"
            return "zero points and bias scales" if of == ("Conv", 2) else "per-tensor scales"
        used_by = target(name)
        if used_by[0] == "Conv":
            return "conv weights" if used_by[1] == 1 else "biases"
        numbers = (
            arrays[name].dtype.kind == "f" or node.op_type == "DequantizeLinear"
        )  # fp32, or int8 behind its dequantisation: not an index
        return "kept BatchNorm" if used_by[0] in ("Mul", "Add") and numbers else "normalisation and shapes"

    by_dtype: Counter[str] = Counter()
    by_role: Counter[str] = Counter()
    for name, array in arrays.items():
        if name in uses:  # an unused initializer is dead weight; none is expected
            by_dtype[str(array.dtype)] += array.nbytes
            by_role[role(name)] += array.nbytes
    return {
        "file_bytes": path.stat().st_size,
        "tensor_bytes": sum(by_dtype.values()),
        "by_dtype": dict(by_dtype.most_common()),
        "by_role": {r: by_role[r] for r in ROLES if by_role[r]},
        "budgeted_bytes": sum(by_role[r] for r in BUDGETED),
        "ops": sorted({node.op_type for node in graph.node}),
    }


# Runs in a fresh, isolated interpreter (-I) where neither nas nor torch can be imported:
# onnxruntime and numpy are all a deployment of the files needs.
_RUN = """
import sys
sys.modules["nas"] = sys.modules["torch"] = None
import numpy as np
import onnxruntime as ort
x = np.load(sys.argv[1])
logits = []
for path in sys.argv[3:]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits.append(np.concatenate([session.run(None, {name: x[i:i + 1000]})[0] for i in range(0, len(x), 1000)]))
np.savez(sys.argv[2], *logits)
"""


def run_isolated(paths: list[Path], x: np.ndarray) -> list[np.ndarray]:
    """Logits of each ONNX file on `x` (float32 pixels), computed in a fresh process that has only
    onnxruntime. RuntimeError with the process's last line if one cannot be loaded or run."""
    with tempfile.TemporaryDirectory(prefix="nas-onnx-") as tmp:
        inputs, outputs = Path(tmp) / "x.npy", Path(tmp) / "logits.npz"
        np.save(inputs, x)
        run = subprocess.run(
            [sys.executable, "-I", "-c", _RUN, str(inputs), str(outputs), *(str(p.resolve()) for p in paths)],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if run.returncode != 0:
            raise RuntimeError((run.stderr.strip().splitlines() or ["no output"])[-1])
        with np.load(outputs) as saved:
            return [saved[f"arr_{i}"] for i in range(len(paths))]


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}
