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
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

from nas.arch.budgets import FP32_ATTRS, RESOURCES
from nas.arch.spec import CONVS, Arch, Conv, Dropout, Pool, arch_from_dict, arch_to_toml
from nas.arch.summary import summary_table
from nas.errors import SpecError
from nas.space.spaces import architecture_count
from nas.study.analytics import ConvergenceRule, best_trial, count, counts, duration, pareto_front, study_settings
from nas.study.settings import StudySettings
from nas.study.storage import parse

# Attributes the search sets (nas.search.worker) or that other parts of nas add; anything else a trial
# carries is listed under "Other attributes" so new attributes show up without a code change.
KNOWN_ATTRS = frozenset(
    {
        "params",
        "receptive_field",
        "arch",
        "train_config",
        "device",
        "curve",
        "epoch_seconds",
        "train_seconds",
        "converged",
        "prune_reason",
        "would_prune_epoch",
        "would_stop_epoch",
        "fail_reason",
        "seed_arch",
        "val_accs",
        "duplicate_of",
        "engine",
        "retry_of",
        "retries",
        "over_budget",
        "config_key",
        "worker",
        "recovered_from",
        "resumed",
        *(r.attr for r in RESOURCES),
        *FP32_ATTRS.values(),
    }
)
BARS = "▁▂▃▄▅▆▇█"


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def size(n: float) -> str:
    """Bytes as a person reads them (binary units)."""
    units = ("B", "KiB", "MiB", "GiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:,.0f} B" if i == 0 else f"{n:,.1f} {units[i]}"


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the smallest and the largest."""
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        return BARS[-1] * len(values)
    return "".join(BARS[round((v - lo) / (hi - lo) * (len(BARS) - 1))] for v in values)


def arch_line(arch: Arch) -> str:
    """An architecture in one line, e.g. `c4 c4 c8 max c12 c12 c16 max c20v → conv3x3v, GAP`:
    cN is an N-channel 3x3 padded conv unless marked (v: unpadded, /1x1: pointwise, s2: stride 2);
    dN a depthwise-separable one (depthwise 3x3, then pointwise to N channels)."""
    drops = {layer.p for layer in arch.layers if isinstance(layer, Dropout)}
    parts = []
    for layer in arch.layers:
        if isinstance(layer, CONVS):
            s = (
                ("c" if isinstance(layer, Conv) else "d")
                + f"{layer.out}"
                + ("" if layer.kernel == 3 else f"/{layer.kernel}x{layer.kernel}")
            )
            s += (
                "v"
                if layer.padding == 0 and layer.kernel > 1
                else ("" if layer.padding == layer.kernel // 2 else f"p{layer.padding}")
            )
            s += "" if layer.stride == 1 else f"s{layer.stride}"
            parts.append(s + ("" if layer.bn else "-nobn") + ("" if layer.relu else "-norelu"))
        elif isinstance(layer, Pool):
            parts.append(layer.kind + ("" if layer.size == 2 else str(layer.size)))
        elif isinstance(layer, Dropout) and len(drops) > 1:
            parts.append(f"drop{layer.p:g}")
    h = arch.head
    head = (
        f"conv{h.kernel}x{h.kernel}{'v' if h.padding == 0 and h.kernel > 1 else ''}, GAP"
        if h.type == "conv_gap"
        else "GAP, conv1x1"
    )
    head += "" if h.bias else " (no bias)"
    notes = [f"dropout {drops.pop():g} after each conv"] if len(drops) == 1 else []
    if any(isinstance(x, CONVS) and x.order == "bn_relu" for x in arch.layers):
        notes.append("BN before ReLU")
    return " ".join(parts) + f" → {head}" + (f" ({', '.join(notes)})" if notes else "")


def trial_arch(t: FrozenTrial) -> Arch | None:
    """The trial's architecture with its training table, or None when it has none (invalid, or
    failed before sampling) or it cannot be read."""
    if "arch" not in t.user_attrs:
        return None
    try:
        data = json.loads(t.user_attrs["arch"])
        if isinstance(t.user_attrs.get("train_config"), dict):
            data["train"] = dict(t.user_attrs["train_config"])
        return arch_from_dict(data, f"trial {t.number}")
    except (ValueError, TypeError, SpecError):
        return None


def ending(t: FrozenTrial, settings: StudySettings) -> tuple[str, str]:
    """(outcome, why it ended) for a person: the outcome is one short label, the reason one sentence."""
    a = t.user_attrs
    curve = a.get("curve") or []
    n = settings.max_epochs
    if t.state == TrialState.COMPLETE:
        acc = t.values[0] if t.values else (curve[-1] if curve else float("nan"))
        epochs = count(len(curve), "epoch") if curve else "training"
        if a.get("converged", acc >= settings.target_accuracy):
            label, why = (
                "converged",
                f"complete and converged: {pct(acc)} validation accuracy ≥ the {pct(settings.target_accuracy)} target after {epochs}",
            )
        else:
            label, why = (
                "below target",
                f"complete below the target: {pct(acc)} < {pct(settings.target_accuracy)} after all {epochs}",
            )
        if "would_prune_epoch" in a:
            why += f" (the convergence rule would have pruned it at epoch {a['would_prune_epoch']}; pruning was {settings.pruning})"
        if "would_stop_epoch" in a:
            why += f" (the Pareto rule would have stopped it at epoch {a['would_stop_epoch']}; pruning was {settings.pruning})"
        return label, why
    if t.state == TrialState.PRUNED:
        reason = str(a.get("prune_reason", "convergence"))
        if (
            reason.split(":")[0] == "budget"
        ):  # "budget: parameters 13,000 > 12,000; MACs ..." (nas.arch.budgets.Violation)
            over = reason.partition(":")[2].strip()
            return "pruned (budget)", f"pruned by budget before training: {over or 'over a limit of the study'}"
        if reason.startswith("invalid"):
            return (
                "invalid",
                f"invalid architecture, not trained: {reason.removeprefix('invalid').lstrip(': ') or 'no reason recorded'}",
            )
        if reason == "convergence":
            rule = ConvergenceRule.of(settings)
            epoch = int(a.get("would_prune_epoch", len(curve)))
            if not 1 <= epoch <= len(curve):
                return "pruned (convergence)", "pruned for convergence (no learning curve recorded)"
            return "pruned (convergence)", (
                f"pruned for convergence at epoch {epoch} of {n}: {pct(curve[epoch - 1])} validation accuracy < the {pct(rule.needed(epoch))} "
                f"needed to be on course for {pct(settings.target_accuracy)} (the rule judges from epoch {rule.first_epoch()} on, slack {rule.slack:g})"
            )
        if reason.startswith("pareto"):
            return "pruned (Pareto)", f"stopped early by the Pareto rule: {reason.removeprefix('pareto').lstrip(': ')}"
        return "pruned", f"pruned: {reason}"
    if t.state == TrialState.FAIL:
        reason = a.get("fail_reason")
        if not reason:
            return "failed", "failed; no reason recorded (the worker may have been killed)"
        if str(reason).startswith("stale"):
            return (
                "failed (stale)",
                f"failed as stale by another worker (its own worker stopped answering): {str(reason).removeprefix('stale').lstrip(': ')}",
            )
        return "failed", f"failed: {reason}"
    if t.state == TrialState.RUNNING:
        return "running", f"running: {len(curve)} of {count(n, 'epoch')} so far"
    return "waiting", "waiting to run (enqueued)"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], align: str = "---") -> list[str]:
    header = list(header)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(align for _ in header) + "|",
        *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows),
    ]


def _facts(t: FrozenTrial, settings: StudySettings) -> list[tuple[str, str]]:
    """The trial's figures as (what, value), in reading order; only those the trial has."""
    a = t.user_attrs
    out: list[tuple[str, str]] = []
    if "params" in a:
        out.append(("parameters", f"{a['params']:,} of {settings.max_params:,}"))
    if "receptive_field" in a:
        out.append(("receptive field", f"{a['receptive_field']} px"))
    if t.state == TrialState.COMPLETE and t.values:
        out.append(("validation accuracy", f"{pct(t.values[0])} (target {pct(settings.target_accuracy)})"))
    elif a.get("curve"):
        out.append(("last validation accuracy", f"{pct(a['curve'][-1])} (target {pct(settings.target_accuracy)})"))
    accs = a.get("val_accs")
    if isinstance(accs, list) and accs:
        finals = [x[-1] if isinstance(x, list) and x else x for x in accs]
        if all(isinstance(x, (int, float)) for x in finals):
            out.append(("validation accuracy per seed", ", ".join(pct(x) for x in finals)))
    if "train_seconds" in a:
        epochs = len(a.get("curve") or [])
        out.append(
            (
                "training time",
                f"{a['train_seconds']:.1f} s ({epochs} epoch{'s' if epochs != 1 else ''})"
                + (f" on {a['device']}" if "device" in a else ""),
            )
        )
    elif "device" in a:
        out.append(("device", str(a["device"])))
    if t.datetime_start and t.datetime_complete:
        out.append(("wall time", duration((t.datetime_complete - t.datetime_start).total_seconds())))
    if "engine" in a:
        out.append(("engine", str(a["engine"])))
    for r in RESOURCES[1:]:  # parameters are on the first line
        if isinstance(a.get(r.attr), (int, float)):
            limit = r.limit(settings)
            fp32 = f" ({a[FP32_ATTRS[r.name]]:,} B at fp32)" if r.name in FP32_ATTRS and FP32_ATTRS[r.name] in a else ""
            out.append(
                (r.label, r.format(a[r.attr]) + fp32 + (f", limit {r.format(limit)}" if limit is not None else ""))
            )
    if "seed_arch" in a:
        out.append(("seed network", f"`{a['seed_arch']}` (enqueued first: the hand-made starting point)"))
    if "retry_of" in a:
        out.append(("re-run of", f"trial {a['retry_of']} (interrupted or failed)"))
    resumed = a.get("resumed")
    if isinstance(resumed, dict) and "epoch" in resumed:
        out.append(
            (
                "resumed",
                f"after epoch {resumed['epoch']} from the checkpoint trial {resumed.get('from_trial', '?')} left (its epochs are in the curve)",
            )
        )
    if "duplicate_of" in a:
        out.append(("same network and training as", f"trial {a['duplicate_of']}"))
    return out


def trial_note(t: FrozenTrial, settings: StudySettings) -> str:
    """The trial's story in Markdown: why it ended, its figures, its learning curve, its layers
    and its training configuration."""
    a = t.user_attrs
    label, why = ending(t, settings)
    lines = [f"### Trial {t.number}: {label}", "", f"**Why it ended:** {why}.", ""]
    facts = _facts(t, settings)
    if facts:
        lines += _table(("", ""), facts) + [""]
    arch = trial_arch(t)
    if arch is not None:
        lines += [f"**Architecture:** `{arch_line(arch)}`", ""]
    elif "arch" in a:
        lines += ["**Architecture:** stored, but not readable by this version of nas.", ""]
    curve = a.get("curve") or []
    if curve:
        seconds = a.get("epoch_seconds") or []
        rule = ConvergenceRule.of(settings)
        judged = settings.pruning != "off"
        lines += [f"#### Validation accuracy per epoch `{sparkline(curve)}`", ""]
        rows = []
        for e, acc in enumerate(curve, 1):
            needed = pct(rule.needed(e)) if judged and rule.first_epoch() <= e < rule.max_epochs else ""
            mark = " ✗" if needed and rule.should_prune(e, acc) else ""
            rows.append((e, pct(acc) + mark, needed, f"{seconds[e - 1]:.1f}" if e <= len(seconds) else ""))
        lines += _table(("epoch", "val acc", "needed (rule)", "seconds"), rows, "--:") + [""]
    if arch is not None:
        lines += ["#### Layers", "", "```", summary_table(arch), "```", ""]
    cfg = a.get("train_config")
    if isinstance(cfg, dict) and cfg:
        lines += (
            ["#### Training configuration", ""]
            + _table(cfg.keys(), [[f"{v:.4g}" if isinstance(v, float) else v for v in cfg.values()]])
            + [""]
        )
    other = sorted(k for k in a if k not in KNOWN_ATTRS)
    if other:
        lines += (
            ["#### Other attributes", ""]
            + _table(("attribute", "value"), [(f"`{k}`", _short(a[k])) for k in other])
            + [""]
        )
    return "\n".join(lines)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _space_rows(settings: StudySettings) -> list[tuple[str, str]]:
    s = settings.parsed_space

    def j(xs: Iterable[Any]) -> str:
        return ", ".join(map(str, xs))

    rows = [
        ("stages", j(s.stages)),
        ("kernel", j(s.kernel)),
        ("pool", j(s.pool)),
        ("BN/ReLU order", j(s.order)),
        ("dropout", j(s.dropout)),
        ("head", j(s.head) + (f" (conv_gap kernel {j(s.head_kernel)})" if "conv_gap" in s.head else "")),
    ]
    for i, st in enumerate(s.stage, 1):
        rows.append(
            (
                f"stage {i}",
                f"{st.blocks[0]}-{st.blocks[1]} blocks of {j(st.channels)} channels, padding {j(st.padding)}"
                + (", optional 1x1 transition" if True in st.transition else ""),
            )
        )
    rows.append(
        (
            "training",
            f"optimizer {j(s.optimizer)}; lr "
            + "; ".join(f"{o} {lo:g}-{hi:g}" for o, (lo, hi) in s.lr.items())
            + f"; batch {j(s.batch_size)}; augment {j(s.augment)}; label smoothing {j(s.label_smoothing)}",
        )
    )
    rows.append(("size", f"{architecture_count(s):.2e} architectures (times the training choices)"))
    return rows


def settings_rows(settings: StudySettings) -> list[tuple[str, str]]:
    """The study's settings as (what, value) for the study note and the report."""
    rule = ConvergenceRule.of(settings)
    pruning = {
        "on": f"on: from epoch {rule.first_epoch()}, a trial below a line from target − {settings.prune_slack:g} (epoch 0) to the target (epoch {settings.max_epochs}) is pruned",
        "observe": f"observe: where the rule (from epoch {rule.first_epoch()}, slack {settings.prune_slack:g}) would prune is recorded, trials train on",
        "off": "off",
    }[settings.pruning]
    limits = [f"{r.label} {r.format(r.limit(settings))}" for r in RESOURCES if r.limit(settings) is not None]
    minimized = next(r for r in RESOURCES if r.name == settings.minimize)
    return [
        ("budget", f"{', '.join(limits)} (larger networks are pruned before training)"),
        ("epochs", str(settings.max_epochs)),
        ("target", f"{pct(settings.target_accuracy)} validation accuracy"),
        (
            "objective",
            {
                "pareto": f"pareto: maximise validation accuracy, minimise {minimized.label}",
                "accuracy": "accuracy under the budget",
            }[settings.objective],
        ),
        ("convergence pruning", pruning),
        (
            "data",
            f"{'all' if settings.train_size is None else f'{settings.train_size:,}'} training images, {settings.val_size:,} held out for validation",
        ),
        ("seeds per trial", str(settings.seeds_per_trial)),
        ("sampler seed", str(settings.seed)),
        ("seed networks", ", ".join(f"`{d.get('name', '?')}`" for d in settings.seed_archs) or "none"),
    ]


def time_spent(study: optuna.Study) -> tuple[float, float]:
    """(seconds of training summed over trials, wall-clock seconds from the first start to the last end)."""
    trials = study.get_trials(deepcopy=False)
    train = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    return train, wall


def counts_line(study: optuna.Study) -> str:
    c = counts(study)
    return (
        f"{c['complete']} complete ({c['converged']} reached the target), pruned {c['pruned_budget']} by budget, "
        f"{c['pruned_invalid']} invalid, {c['pruned_convergence']} by convergence, {c['pruned_pareto']} by the Pareto rule, {c['failed']} failed, {c['rerun']} stopped and run again, {c['running']} running or waiting"
    )


def study_note(study: optuna.Study) -> str:
    """The study in Markdown: settings, search space, progress, the current best and the Pareto front."""
    settings = study_settings(study)
    train, wall = time_spent(study)
    lines = [
        f"## Study `{study.study_name}`",
        "",
        f"The smallest fully convolutional network reaching {pct(settings.target_accuracy)} validation accuracy "
        f"with at most {settings.max_params:,} parameters and {count(settings.max_epochs, 'epoch')}.",
        "",
        f"**Trials:** {counts_line(study)}; {duration(train)} of training, {duration(wall)} wall-clock.",
        "",
    ]
    best = best_trial(study)
    if best is not None:
        arch = trial_arch(best)
        lines += [
            f"**Best:** trial {best.number}, {best.user_attrs['params']:,} parameters, {pct(best.values[0])}"
            + (f": `{arch_line(arch)}`" if arch else ""),
            "",
        ]
    else:
        lines += [f"**Best:** no complete trial reaches {pct(settings.target_accuracy)} yet.", ""]
    for e in study.user_attrs.get("exports", []):
        lines += [
            f"**Exported:** trial {e.get('trial')}, {pct(e['test_acc'])} test accuracy (model.pt, seed 0) to `{e.get('out')}`.",
            "",
        ]
    front = pareto_front(study)
    if front:
        rows = []
        for t in front:
            arch = trial_arch(t)
            note = ", ".join(
                x
                for x in (
                    "seed" if "seed_arch" in t.user_attrs else "",
                    "best" if best is not None and t.number == best.number else "",
                )
                if x
            )
            rows.append(
                (
                    t.number,
                    f"{t.user_attrs['params']:,}",
                    pct(t.values[0]),
                    t.user_attrs.get("receptive_field", ""),
                    f"`{arch_line(arch)}`" if arch else "",
                    note,
                )
            )
        lines += (
            ["### Pareto front", ""] + _table(("trial", "params", "val acc", "RF", "architecture", ""), rows) + [""]
        )
    lines += ["### Settings", ""] + _table(("setting", "value"), settings_rows(settings)) + [""]
    lines += (
        [f"### Search space `{settings.parsed_space.name}`", ""]
        + _table(("choice", "values"), _space_rows(settings))
        + [""]
    )
    return "\n".join(lines)


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
