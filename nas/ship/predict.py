"""Classify pictures, IDX or .npz files with an exported model: model.pt through torch, model.onnx
or model.int8.onnx through onnxruntime. The image size, channels, class names and the polarity of
the training images come from the model itself (nas export stores them in it)."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nas.data.formats import images_chw, read_idx
from nas.data.stats import edge_level
from nas.errors import DataError, UsageError

INFO = "nas.json"  # model.pt's extra file, and the key of the ONNX files' metadata, that holds ModelInfo
IDX_MAGIC = b"\x00\x00\x08"
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # PIL's mode for a number of channels


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model takes and gives, as nas export wrote it. The defaults are MNIST's:
    what a model.pt exported before nas stored this took."""

    dataset: str = "mnist"
    input: tuple[int, int, int] = (1, 28, 28)  # channels, height, width
    class_names: tuple[str, ...] | None = None
    background: str = "dark"  # of the training images' edges (nas.data.stats.background)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes | None) -> ModelInfo:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            data["dataset"],
            tuple(data["input"]),
            tuple(data["class_names"]) if data.get("class_names") else None,
            data["background"],
        )

    @property
    def inverted(self) -> str:
        """What nas predict says of a picture it inverted."""
        picture, trained = (
            ("dark on light", "light on dark") if self.background == "dark" else ("light on dark", "dark on light")
        )
        return f"{picture}: inverted to the training images' {trained}"

    def label(self, k: int) -> str:
        return f"{k} {self.class_names[k]}" if self.class_names and k < len(self.class_names) else str(k)


def load_images(path: Path, info: ModelInfo) -> tuple[torch.Tensor, bool]:
    """(uint8 [N, C, H, W], whether it was inverted) for the model `info` describes: an IDX file
    gives all its images, an .npz its x, a picture one, read in the model's channels (grey, RGB, ...).
    A picture whose background is the opposite of the training images' (a dark digit on light paper
    for MNIST) is inverted; data files are taken as they are. Other sizes are refused, not resized:
    a squashed or blown-up picture would be classified without a word of warning."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    head = path.read_bytes()[:4]
    inverted = False
    if head[:3] == IDX_MAGIC or head[:2] == b"\x1f\x8b":
        images = read_idx(path)
        images = images[None] if images.ndim == 2 else images
    elif head[:2] == b"PK":  # a zip: an .npz
        with _npz(path) as f:
            if "x" not in f.files:
                raise DataError(f"{path}: no array 'x' of images to classify")
            images = f["x"]
    else:
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                images = np.array(im.convert(_MODES[info.input[0]]))[None]
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: not a PNG/JPEG image, IDX or .npz file ({e})") from None
        # a photo of paper is grey, not white: which side of grey counts
        level = edge_level(images_chw(images, str(path)))
        if (info.background == "dark" and level > 0.5) or (info.background == "light" and level < 0.5):
            images, inverted = 255 - images, True
    x = images_chw(images, str(path))
    c, h, w = info.input
    if x.shape[1] != c:
        raise DataError(
            f"{path}: holds {x.shape[1]}-channel images; "
            f"the model takes {c} ({_MODES.get(c, c)}), as {info.dataset} has them"
        )
    if tuple(x.shape[2:]) != (h, w):
        raise DataError(
            f"{path}: the image is {x.shape[3]}x{x.shape[2]} pixels; "
            f"the model classifies {w}x{h} images as {info.dataset} has them: "
            f"crop or scale it to {w}x{h} first"
        )
    return torch.from_numpy(x), inverted


def _npz(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None


class OnnxModel:
    """An exported model.onnx or model.int8.onnx, run by onnxruntime and called like model.pt."""

    def __init__(self, path: Path):
        from nas.ship.deploy import INPUT, INSTALL

        try:
            import onnxruntime as ort
        except ImportError:
            raise UsageError(
                f"{path}: running an ONNX model needs onnxruntime ({INSTALL}), or give the exported model.pt"
            ) from None
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types; any of them means an unusable file
            cause = (
                (str(e).splitlines() or [type(e).__name__])[0].rsplit(" : ", 1)[-1].rsplit("failed:", 1)[-1].strip()
            )  # past "[ONNXRuntimeError] : 7 : ..."
            raise not_a_model(path, f"not an ONNX model onnxruntime can load: {cause}") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != [INPUT]:
            raise UsageError(
                f"{path}: takes {', '.join(names)}, not the {INPUT!r} input of the models nas export writes; "
                "give one of those"
            )
        self.input = INPUT
        self.info = ModelInfo.from_json(self.session.get_modelmeta().custom_metadata_map.get(INFO))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.numpy()})[0])


def not_a_model(path: Path, why: str) -> UsageError:
    """The one line for a MODEL argument that is no model nas export wrote."""
    files = "model.onnx (or model.pt)" if path.suffix == ".onnx" else "model.pt (or model.onnx)"
    return UsageError(f"{path} is not a model written by nas export ({why}); give the {files} of an export")


def _members(path: Path) -> list[str] | None:
    """The files in a zip archive (torch's formats are zips), without its top folder; None for no zip."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return [n.split("/", 1)[-1] for n in z.namelist()]
    except (zipfile.BadZipFile, OSError):
        return None


def _what_it_is(path: Path, e: Exception) -> str:
    """Why torch.jit.load refused `path`, in a few words: torch's own message is a paragraph about
    corrupt checkpoints, also for a file that never was one."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "an empty file"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "a picture: the model comes first, nas predict MODEL IMAGE..."
    if not head.startswith(b"PK"):
        return "not a TorchScript archive"
    names = _members(path)
    if names is None:
        return "a damaged zip archive"
    if "data.pkl" in names and "constants.pkl" not in names:
        return "weights saved by torch.save, as in state_dict.pt, not TorchScript"
    return str(e).splitlines()[0].split(". This is an internal")[0] if str(e) else type(e).__name__


@contextlib.contextmanager
def jit_quietly() -> Iterator[None]:
    """torch 2.13-2.14 deprecate torch.jit.script/trace/load with a warning on every call; nas
    still ships TorchScript (its users asked for model.pt; model.pt2 is there beside it), so the
    warning is not the user's to read in every export and predict."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\..*deprecated"
        )  # FutureWarning in 2.14, DeprecationWarning in 2.13
        yield


def _load_program(path: Path) -> tuple[torch.nn.Module, ModelInfo]:
    """model.pt2: torch.export's program of an exported network, with its ModelInfo."""
    extra = {INFO: ""}
    try:
        with warnings.catch_warnings():  # torch 2.13 warns of its own archive layout ("No complete tensor found")
            warnings.simplefilter("ignore", UserWarning)
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # noqa: BLE001 - whatever torch.export.load raises, the file is not a program
        raise not_a_model(path, _what_it_is(path, e)) from None
    if not extra[INFO]:
        raise not_a_model(path, "a torch.export program without the model information nas export stores")
    return program.module(), ModelInfo.from_json(extra[INFO])


def load_model(path: Path) -> tuple[torch.jit.ScriptModule | torch.nn.Module | OnnxModel, ModelInfo]:
    """An exported model.pt (or model.pt2), or a .onnx file run by onnxruntime, and what it takes. A model.pt
    that does not normalise itself (exported before nas put the normalisation inside) would
    silently mispredict on pixels, so it is refused."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    if path.suffix == ".onnx":
        model = OnnxModel(path)
        return model, model.info
    if path.suffix == ".pt2":
        return _load_program(path)
    extra = {INFO: ""}
    try:
        with jit_quietly():
            scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    except (RuntimeError, ValueError, OSError) as e:
        if "archive_format" in (_members(path) or ()):  # torch.export's archive under another name
            return _load_program(path)
        raise not_a_model(path, _what_it_is(path, e)) from None
    if not (hasattr(scripted, "mean") and hasattr(scripted, "std")):
        raise UsageError(
            f"{path}: exported by an older nas whose model.pt expects normalised input; export it again (nas export)"
        )
    return scripted, ModelInfo.from_json(extra[INFO])


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] (or [N, H, W], one channel) -> float in [0, 1]: what an exported model takes."""
    x = images.float() / 255.0
    return x.unsqueeze(1) if x.dim() == 3 else x


def classify(
    model: torch.jit.ScriptModule | torch.nn.Module | OnnxModel, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, probability) per image; the model normalises (nas export puts it inside)."""
    with torch.no_grad():
        probs = torch.softmax(model(pixels(images)), 1)
    conf, digit = probs.max(1)
    return digit, conf
