"""Getting the datasets nas knows by name (nas.data.datasets.NAMED): where each is published, the
download of its missing files with pooch from the first mirror that serves them with the
published checksum, and the check of files already on disk against those checksums, so that a
tampered or damaged copy is refused instead of trained on. Torch-free; pooch and rich are
imported only when something is downloaded.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.data.formats import idx_files
from nas.errors import DataError


@dataclass(frozen=True)
class Named:
    """A dataset nas knows by name: where it is published and the checksums of its files."""

    name: str
    title: str
    mirrors: tuple[str, ...]  # base URLs, tried in order
    files: dict[str, str]  # file name -> "sha256:..." or "md5:..." of the published .gz file
    checksums: str  # where the checksums come from
    class_names: tuple[str, ...] | None = None
    # DatasetSpec.sha256 of the published data, where known: checks uncompressed copies too
    arrays_sha256: str | None = None


def published(named: Named, folder: Path) -> None:
    """Refuse a named dataset's .gz file whose checksum is not the published one (an
    uncompressed copy is checked through the decoded arrays where their hash is known)."""
    for path in idx_files(folder).values():
        known = named.files.get(path.name)
        if known is not None and not _matches(path, known):
            algorithm = {"sha256": "SHA-256", "md5": "MD5"}[known.split(":")[0]]
            raise DataError(
                f"{path}: {algorithm} does not match the published {named.title} file; "
                "delete it and run again to download it again"
            )


def _matches(path: Path, known: str) -> bool:
    algorithm, digest_ = known.split(":")
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest() == digest_


class _Bar:
    """A download's progress bar, drawn by rich on the terminal, driven by pooch through the
    interface it gives a custom bar (total, update, reset, close)."""

    def __init__(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn(label),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task: Any = None

    @property
    def total(self) -> float | None:
        return None if self.task is None else self.progress.tasks[0].total

    @total.setter
    def total(self, value: float) -> None:
        self.progress.start()
        self.task = self.progress.add_task("", total=value or None)

    def update(self, n: int) -> None:
        self.progress.update(self.task, advance=n)

    def reset(self) -> None:
        self.progress.reset(self.task)

    def close(self) -> None:
        self.progress.stop()


def download(named: Named, folder: Path, log: Callable[[str], None] = print) -> None:
    """Fetch the files of a named dataset missing from `folder`, each from the first mirror that
    serves it with the published checksum (pooch: a temporary file, checked, then moved into place,
    so a failed or tampered download leaves nothing behind). A progress bar shows on a terminal."""
    try:
        import pooch
    except ImportError:
        raise DataError(
            f"downloading {named.title} needs pooch (pip install pooch), or put its four IDX files in {folder}"
        ) from None
    pooch.get_logger().setLevel("WARNING")  # nas says what it downloads, once
    have = {p.name.removesuffix(".gz") for p in idx_files(folder).values()}
    for fname, known in named.files.items():
        if fname.removesuffix(".gz") in have:
            continue
        errors = []
        for base in named.mirrors:
            log(f"downloading {named.title} {fname} from {base} into {folder}/")
            bar = _Bar(fname) if sys.stderr.isatty() else None
            try:
                pooch.retrieve(
                    base + fname,
                    known_hash=known,
                    fname=fname,
                    path=folder,
                    downloader=pooch.HTTPDownloader(
                        progressbar=bar if bar is not None else False, timeout=30, chunk_size=1 << 16
                    ),
                )
                break
            # requests and pooch fail in many types; each is a reason to try the next mirror
            except Exception as e:  # noqa: BLE001
                if bar is not None:
                    bar.close()
                errors.append(
                    f"{base}: {'checksum mismatch' if 'does not match the known hash' in str(e) else _reason(e)}"
                )
        else:
            raise DataError(
                f"{named.title} file {fname} is not in {folder} and could not be downloaded ({'; '.join(errors)}); "
                f"put the four IDX files there, or pass --data-dir / set NAS_DATA_DIR to where they are"
            )


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."
