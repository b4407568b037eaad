"""Each trial and the study explain themselves in optuna-dashboard: Markdown notes, and the
architecture (and, after `nas export`, the model card and metrics) as downloadable artifacts.

Torch-free, so the dashboard, the report and a reaper process can all use it. When to call what
(from the search's worker loop):

- `upload_arch(study, trial, store)` while the trial runs, once its `arch` and `train_config`
  attributes are set: Optuna refuses artifacts on a finished trial, so afterwards the file goes
  to the study instead, named after the trial.
- `save_trial_note(study, frozen_trial)` when the trial has ended (an optimize callback), and for
  a trial another worker failed as stale after setting its `fail_reason`: trial notes live in
  study system attributes keyed by trial id, so any process can write them at any time.
- `save_study_note(study)` after each trial, by one writer at a time: optuna-dashboard stores a
  note as a read-modify-write of 2,045-character chunks, so two concurrent writers can interleave
  chunks. Call it under the study lock (or only from the process that started the search).

What the notes say is written in nas.study.trial_note and nas.study.study_note.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

from nas.arch.spec import arch_to_toml
from nas.study.analytics import study_settings
from nas.study.storage import parse
from nas.study.study_note import study_note
from nas.study.trial_note import trial_arch, trial_note


def _save(study: optuna.Study, trial_id: int | None, body: str) -> None:
    """Write a note through optuna-dashboard's versioned storage (a new version only if it changed)."""
    storage, study_id = study._storage, study._study_id
    old = get_note_from_system_attrs(storage.get_study_system_attrs(study_id), trial_id)
    if old["body"] != body:
        save_note_with_version(storage, study_id, trial_id, old["version"] + 1, body)


def save_trial_note(study: optuna.Study, trial: FrozenTrial) -> None:
    """Write the trial's note; any process may call it, also after the trial ended (see the module doc)."""
    _save(study, trial._trial_id, trial_note(trial, study_settings(study)))


def save_study_note(study: optuna.Study) -> None:
    """Rewrite the study note. Read-modify-write: call it from one writer at a time (under the study lock)."""
    _save(study, None, study_note(study))


# --- artifacts --------------------------------------------------------------------------------


def artifact_dir_for(storage: str) -> Path | None:
    """The default artifact folder of a storage URL: `artifacts` next to a SQLite or journal file
    (sqlite:///studies/nas.sqlite3 -> studies/artifacts). A server storage (PostgreSQL) has no
    file to sit next to: give a folder every worker and the dashboard share."""
    loc = parse(storage)
    return loc.path.parent / "artifacts" if loc.path is not None else None


def open_artifact_store(folder: Path) -> optuna.artifacts.FileSystemArtifactStore:
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(folder)


def artifact_store_for(
    storage: str, folder: str | Path | None = None
) -> tuple[Path | None, optuna.artifacts.FileSystemArtifactStore | None]:
    """The study's artifact folder (--artifacts, else artifact_dir_for's default) and its store;
    (None, None) for a server storage given no folder."""
    where = Path(folder) if folder else artifact_dir_for(storage)
    return where, open_artifact_store(where) if where is not None else None


_MIME = {".toml": "text/plain", ".md": "text/markdown", ".json": "application/json"}


def _upload(study: optuna.Study, trial: optuna.Trial | FrozenTrial | None, filename: str, content: bytes, store) -> str:
    """Store `content` as `filename` on the trial while it runs, otherwise on the study (Optuna
    refuses system attributes, and so artifacts, on a finished trial)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(content)
        kw = dict(artifact_store=store, file_path=str(path), storage=study._storage, mimetype=_MIME.get(path.suffix))
        if trial is not None and (isinstance(trial, optuna.Trial) or trial.state == TrialState.RUNNING):
            try:
                return optuna.artifacts.upload_artifact(study_or_trial=trial, **kw)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # it finished meanwhile
        return optuna.artifacts.upload_artifact(study_or_trial=study, **kw)


def upload_arch(study: optuna.Study, trial: optuna.Trial | FrozenTrial, artifact_store) -> str | None:
    """Store the trial's architecture (with its training table) as `trial_N.toml`, which
    `nas train` and `nas export --arch` read; returns the artifact id, None if the trial has no
    readable architecture (an invalid one). On a running trial it is the trial's own artifact;
    on a finished one, the study's."""
    frozen = trial if isinstance(trial, FrozenTrial) else study._storage.get_trial(trial._trial_id)
    arch = trial_arch(frozen)
    if arch is None:
        return None
    params = frozen.user_attrs.get("params")
    head = (
        f"# trial {trial.number} of study {study.study_name!r}"
        + (f": {params:,} parameters" if isinstance(params, int) else "")
        + f". Retrain it: nas train trial_{trial.number}.toml\n"
    )
    return _upload(study, trial, f"trial_{trial.number}.toml", (head + arch_to_toml(arch)).encode(), artifact_store)


def record_export(study: optuna.Study, metrics: dict[str, Any], out: Path, artifact_store=None) -> dict[str, Any]:
    """Remember an export on the study (user attribute `exports`, a list the report and the study
    note read) and, given a store, attach its model card and metrics as study artifacts
    `trial_N.model-card.md` / `trial_N.metrics.json` (the trial itself is finished)."""
    entry: dict[str, Any] = {
        k: metrics[k]
        for k in (
            "trial",
            "params",
            "test_acc",
            "test_acc_mean",
            "test_acc_min",
            "test_acc_max",
            "epochs",
            "train_images",
            "device",
            "torchscript",
        )
        if k in metrics
    }
    entry.update(seeds=len(metrics.get("seeds", [])), out=str(out.resolve()), when=time.strftime("%Y-%m-%d %H:%M:%S"))
    if artifact_store is not None:
        n = metrics.get("trial")
        entry["artifacts"] = {
            name: _upload(study, None, name, (out / src).read_bytes(), artifact_store)
            for src, name in (("README.md", f"trial_{n}.model-card.md"), ("metrics.json", f"trial_{n}.metrics.json"))
            if (out / src).is_file()
        }
    study.set_user_attr("exports", [*study.user_attrs.get("exports", []), entry])
    return entry


def study_url(host: str, port: int, study_id: int) -> str:
    return f"http://{host}:{port}/dashboard/studies/{study_id}"
