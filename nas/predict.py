"""Read digits to classify from PNG/JPEG files or IDX files, the way MNIST draws them, and run an
exported model on them: model.pt through torch, model.onnx or model.int8.onnx through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import torch

from nas.data import read_idx
from nas.errors import DataError, UsageError

IDX_MAGIC = b"\x00\x00\x08"


def load_images(path: Path, size: int = 28) -> tuple[torch.Tensor, bool]:
    """(uint8 [N, size, size], whether it was inverted): an IDX file gives all its images, a
    picture gives one, turned into a white digit on black (MNIST's polarity) when it is mostly
    light. Other sizes are refused, not resized: a squashed or blown-up picture would be
    classified without a word of warning."""
    inverted = False
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    head = path.read_bytes()[:4]
    if head[:3] == IDX_MAGIC or head[:2] == b"\x1f\x8b":
        images = read_idx(path)
        if images.dim() == 2:
            images = images.unsqueeze(0)
        if images.dim() != 3:
            raise DataError(f"{path}: IDX file holds {images.dim()}-d data, expected images [N, H, W]")
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = im.convert("L")
                images = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(1, im.height, im.width)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: not a PNG/JPEG image or IDX file ({e})") from None
        if images.float().mean() > 127:  # dark digit on light paper: invert
            images, inverted = 255 - images, True
    if images.shape[1:] != (size, size):
        h, w = images.shape[1:]
        raise DataError(f"{path}: the image is {w}x{h} pixels; the model classifies {size}x{size} digits as MNIST draws them: crop or scale it to {size}x{size} first")
    return images, inverted


class OnnxModel:
    """An exported model.onnx or model.int8.onnx, run by onnxruntime and called like model.pt."""

    def __init__(self, path: Path):
        from nas.deploy import INPUT, INSTALL

        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError(f"{path}: running an ONNX model needs onnxruntime ({INSTALL}), or give the exported model.pt") from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types; any of them means an unusable file
            raise UsageError(f"{path}: not an ONNX model onnxruntime can load ({str(e).splitlines()[0]})") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != [INPUT]:
            raise UsageError(f"{path}: takes {', '.join(names)}, not the {INPUT!r} input of the models nas export writes; give one of those")
        self.input = INPUT

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.numpy()})[0])


def load_model(path: Path) -> torch.jit.ScriptModule | OnnxModel:
    """An exported model.pt, or a .onnx file run by onnxruntime. A model.pt that does not
    normalise itself (exported before nas put the normalisation inside) would silently mispredict
    on pixels, so it is refused."""
    if path.suffix == ".onnx":
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
        return OnnxModel(path)
    try:
        model = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as e:
        raise UsageError(f"{path}: not a TorchScript model saved by nas export ({str(e).splitlines()[0]})") from None
    if not (hasattr(model, "mean") and hasattr(model, "std")):
        raise UsageError(f"{path}: exported by an older nas whose model.pt expects normalised input; export it again (nas export)")
    return model


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] -> float [N, 1, H, W] in [0, 1]: what an exported model.pt takes."""
    return (images.float() / 255.0).unsqueeze(1)


def classify(model: torch.jit.ScriptModule | OnnxModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(digit, probability) per image; the model normalises (nas export puts it inside)."""
    with torch.no_grad():
        probs = torch.softmax(model(pixels(images)), 1)
    conf, digit = probs.max(1)
    return digit, conf
