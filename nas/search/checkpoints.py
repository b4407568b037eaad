"""Where a trial's training checkpoints live, and how they are written, found and removed.

A trial offers a checkpoint at the end of an epoch once nas.train.engine.CHECKPOINT_SECONDS have passed
since its last one (so a trial of a few seconds writes none). The file is named after the trial's
config_key (nas.space.spaces.point_key: the architecture, its training configuration and the seeds), so
the retry of an interrupted trial, or of one whose worker died, finds it and trains on from there.
It lives in the study's artifact folder (`checkpoints/<study>/`), which workers on several
machines share; a server storage given no --artifacts keeps them in this machine's cache, where
only a retry on this machine finds them. A file is written whole or not at all (a temporary
file renamed over the old one) and deleted when its trial ends.

Torch-free until a checkpoint is saved or loaded: the reaper removes them too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.study.storage import parse

if TYPE_CHECKING:
    from nas.train.engine import Checkpoint

FORMAT = 1  # of the saved dictionary; a file of another format is ignored


@dataclass(frozen=True)
class Found:
    """What a look for a configuration's checkpoint found."""

    checkpoint: Checkpoint | None  # None: there is none, or it cannot be used
    trial: int | None = None  # the trial that wrote it
    problem: str = ""  # why it cannot be used


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nas" / "checkpoints"


class Checkpoints:
    """The checkpoint files of one study's trials, one per configuration key."""

    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def of(cls, storage: str, study: str, artifacts: Path | None) -> Checkpoints:
        """The study's folder: under its artifact folder, or else under this machine's cache,
        keyed by the storage's location (never its password) and the study's name."""
        safe = re.sub(r"[^\w.-]", "_", study) + "-" + hashlib.sha256(study.encode()).hexdigest()[:8]
        if artifacts is not None:
            return cls(Path(artifacts) / "checkpoints" / safe)
        where = hashlib.sha256(parse(storage).describe().encode()).hexdigest()[:12]
        return cls(cache_dir() / where / safe)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def save(self, key: str, ckpt: Checkpoint, meta: dict[str, Any]) -> Path:
        """Write atomically: a reader (a retry on another machine) sees the old file or the new one."""
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "meta": meta,
            **{k: v for k, v in vars(ckpt).items() if k != "history"},
            "history": [asdict(e) for e in ckpt.history],
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return self.path(key)

    def load(self, key: str, meta: dict[str, Any]) -> Found:
        """The checkpoint of this configuration if it was made for exactly `meta` (device kind,
        data sizes, epochs, seeds; `trial` aside), else why not."""
        import torch

        from nas.train.engine import Checkpoint, Epoch

        path = self.path(key)
        if not path.is_file():
            return Found(None)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            made = data["meta"]
            if data["format"] != FORMAT:
                return Found(None, made.get("trial"), "written by another version of nas")
            ckpt = Checkpoint(
                **{k: v for k, v in data.items() if k not in ("format", "meta", "history")},
                history=[Epoch(**e) for e in data["history"]],
            )
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file only means starting over
            return Found(None, None, f"unreadable ({type(e).__name__}: {str(e).strip()[:80]})")
        differs = [k for k in meta if k != "trial" and made.get(k) != meta[k]]
        if differs:
            return Found(
                None,
                made.get("trial"),
                f"made for another {differs[0]} ({made.get(differs[0])}; this run: {meta[differs[0]]})",
            )
        return Found(ckpt, made.get("trial"))

    def remove(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()
