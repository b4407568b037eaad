"""What exported networks cost where they are deployed: for each `nas export` folder, the test
accuracy, bytes and time per image of model.onnx (fp32) and model.int8.onnx through onnxruntime,
printed as the rows of the README's deployment table.

    python3 benchmarks/deploy.py EXPORT_DIR [EXPORT_DIR ...] [--threads 1] [--repeats 5] [--data-dir DIR]

Accuracy and bytes are computed again from the files (the 10,000 test images, nas.ship.deploy.stored),
next to the analytic model bytes of architecture.toml that a --max-model-kb budget uses. Time per
image is the median of --repeats timed passes over the test images after one untimed pass: one
image a call (latency, as a device classifying one digit sees it) and 1,000 a call (throughput),
onnxruntime's CPU provider with --threads intra-op threads. The min-max spread is printed too: on a
machine other work shares, it is the noise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from nas.arch.spec import costs, load_arch
from nas.data.tensors import load_raw
from nas.ship.deploy import FP32, INPUT, INT8, stored, versions
from nas.ship.predict import pixels

BATCHES = (1, 1000)


def cpu() -> str:
    """The CPU's name and the vector extensions int8 kernels use (VNNI multiplies int8 in one step)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{name} ({', '.join(simd) or 'no AVX2'})"


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def logits(s, x: np.ndarray) -> np.ndarray:
    return np.concatenate([s.run(None, {INPUT: x[i : i + 1000]})[0] for i in range(0, len(x), 1000)])


def microseconds_per_image(s, x: np.ndarray, batch: int, repeats: int) -> list[float]:
    """Per-image time of each timed pass over x, `batch` images a call."""
    feeds = [x[i : i + batch] for i in range(0, len(x), batch)]
    times = []
    for n in range(repeats + 1):
        start = time.perf_counter()
        for feed in feeds:
            s.run(None, {INPUT: feed})
        if n:  # the first pass warms up
            times.append((time.perf_counter() - start) / len(x) * 1e6)
    return times


def measure(folder: Path, x: np.ndarray, labels: np.ndarray, threads: int, repeats: int) -> dict:
    arch = load_arch(folder / "architecture.toml")
    c = costs(arch)
    out = {"name": arch.name, "params": c.params, "analytic": {FP32: c.model_fp32, INT8: c.model_int8}}
    reference = None
    for name in (FP32, INT8):
        s = session(folder / name, threads)
        predicted = logits(s, x).argmax(1)
        reference = predicted if reference is None else reference
        out[name] = {
            **stored(folder / name),
            "test_acc": float((predicted == labels).mean()),
            "agreement": float((predicted == reference).mean()),
            "us": {batch: microseconds_per_image(s, x, batch, repeats) for batch in BATCHES},
        }
    recorded = json.loads((folder / "metrics.json").read_text()).get("onnx") or {}
    for name, key in ((FP32, "fp32"), (INT8, "int8")):
        if key in recorded and abs(recorded[key]["test_acc"] - out[name]["test_acc"]) > 1e-6:
            print(
                f"warning: {folder / name}: test accuracy {out[name]['test_acc']:.4f} here, "
                f"{recorded[key]['test_acc']:.4f} in metrics.json"
            )
    return out


def rows(m: dict) -> list[str]:
    lines = []
    for name, label in ((FP32, "fp32"), (INT8, "int8")):
        f = m[name]
        acc = f"{100 * f['test_acc']:.2f} %" + (f" ({100 * f['agreement']:.2f} % as fp32)" if name == INT8 else "")
        times = " | ".join(f"{statistics.median(f['us'][b]):,.0f}" for b in BATCHES)
        first = f"{m['name']} ({m['params']:,} params)" if name == FP32 else ""
        lines.append(
            f"| {first} | {label} `{name}` | {acc} | {f['budgeted_bytes']:,} B ({m['analytic'][name]:,} B) | "
            f"{f['tensor_bytes']:,} B | {f['file_bytes']:,} B | {times} |"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, metavar="EXPORT_DIR")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the test images (default 5)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    missing = [
        f / n for f in args.folders for n in (FP32, INT8, "architecture.toml", "metrics.json") if not (f / n).is_file()
    ]
    if missing:
        p.error(f"{missing[0]} not found: give folders `nas export` wrote with the onnx extra installed")
    images, labels = load_raw(args.data_dir, "test")
    x, y = pixels(images).numpy(), labels.numpy()
    results = [measure(f, x, y, args.threads, args.repeats) for f in args.folders]
    v = versions()
    print(
        f"{cpu()}, onnxruntime {v['onnxruntime']} CPU provider, {args.threads} thread(s); "
        f"time per image: median of {args.repeats} passes over {len(x):,} test images"
    )
    print()
    print(
        "| network | model | test accuracy | model bytes (analytic) | tensors | file | "
        "µs/image, 1 a call | µs/image, 1,000 a call |"
    )
    print("|---|---|---|---|---|---|--:|--:|")
    for m in results:
        print("\n".join(rows(m)))
    print()
    for m in results:
        for name in (FP32, INT8):
            spread = ", ".join(f"batch {b}: {min(m[name]['us'][b]):,.1f}-{max(m[name]['us'][b]):,.1f}" for b in BATCHES)
            print(
                f"{m['name']} {name}: µs/image min-max {spread}; tensors {json.dumps(m[name]['by_dtype'])}, "
                f"by role {json.dumps(m[name]['by_role'])}"
            )


if __name__ == "__main__":
    main()
