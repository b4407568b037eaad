from __future__ import annotations

import contextlib
import functools
import http.server
import math
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "search_spaces" / "seeds" / "seed_9274.toml"
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


_MNIST = pytest.StashKey[Path]()
_MISSING: set[str] = set()  # Debian packages whose tests were skipped, said once at the end


def needs_system(what: str, packages: str, present: bool) -> None:
    """Skip a test whose Debian packages this machine lacks, saying which; with
    NAS_REQUIRE_SYSTEM_DEPS=1 (CI, which installs them: .ci/run) fail instead, so that CI never
    passes by skipping them."""
    if present:
        return
    line = f"{what} need{'s' if not what.endswith('tests') else ''} {packages}: apt-get install {packages}"
    if os.environ.get("NAS_REQUIRE_SYSTEM_DEPS") == "1":
        pytest.fail(f"{line} (NAS_REQUIRE_SYSTEM_DEPS=1: these tests must run here)", pytrace=False)
    _MISSING.add(line)
    pytest.skip(line)


def pytest_terminal_summary(terminalreporter) -> None:
    for line in sorted(_MISSING):
        terminalreporter.write_line(f"skipped: {line}", yellow=True)


def has_mnist(folder: Path) -> bool:
    return all((folder / f"{n}.gz").is_file() or (folder / n).is_file() for n in MNIST_FILES)


def find_mnist() -> Path:
    """Where the tests read real MNIST, the way the CLI finds it: NAS_TEST_MNIST, then
    ../shared/data/mnist, then the user's data folder (nas.data.datasets.default_data_dir), downloaded
    there with checksum verification if missing. RuntimeError (one line) when none works."""
    env = os.environ.get("NAS_TEST_MNIST")
    if env:
        if has_mnist(Path(env)):
            return Path(env)
        raise RuntimeError(
            f"NAS_TEST_MNIST={env} does not hold the four MNIST IDX files (.gz or raw); "
            "point it at a folder that does, or unset it"
        )
    if has_mnist(SHARED_MNIST):
        return SHARED_MNIST
    from nas.data.datasets import NAMED, default_data_dir, download
    from nas.errors import DataError

    user = default_data_dir()
    if has_mnist(user):
        return user
    try:
        download(NAMED["mnist"], user)
    except DataError as e:
        reason = str(e).split(" could not be downloaded ", 1)[-1].split(";")[0].strip(" (")
        raise RuntimeError(
            f"real MNIST not found in {SHARED_MNIST} or {user}, and downloading it failed ({reason}); "
            "set NAS_TEST_MNIST to a folder with the four IDX files"
        ) from None
    return user


def pytest_collection_modifyitems(session, config, items) -> None:
    """Find the data once, before any test runs, and only if a selected test needs it: when it
    cannot be found, stop with one message instead of a failure per test."""
    if any(
        "mnist_dir" in getattr(item, "fixturenames", ()) or "small_data" in getattr(item, "fixturenames", ())
        for item in items
    ):
        try:
            config.stash[_MNIST] = find_mnist()
        except RuntimeError as e:
            pytest.exit(f"tests need MNIST: {e}", returncode=1)


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """An HTTP server on loopback serving `folder`, as a dataset's mirror would: its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


QUADRANTS = ("top left", "top right", "bottom left", "bottom right")


def quadrants(path: Path, n: int = 400, seed: int = 0) -> Path:
    """An RGB .npz of n 32x32 pictures in 4 named classes (QUADRANTS): a bright square of a random
    colour in the quadrant the class names, on a dark, noisy, reddish ground (each channel its own
    mean). Quick to learn."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8) // np.array([1, 2, 4], np.uint8)
    y = np.arange(n) % 4
    for image, k in zip(x, y):
        r, c = divmod(int(k), 2)
        image[4 + 16 * r : 12 + 16 * r, 4 + 16 * c : 12 + 16 * c] = rng.integers(150, 256, 3)
    np.savez(path, x=x, y=y, class_names=np.array(QUADRANTS))
    return path


def require_system_deps() -> bool:
    """NAS_REQUIRE_SYSTEM_DEPS=1 (CI sets it; .ci/run installs everything) turns a skip for a missing
    optional dependency into a failure."""
    return os.environ.get("NAS_REQUIRE_SYSTEM_DEPS", "") not in ("", "0")


@pytest.fixture
def onnx_extra() -> None:
    """Tests of the ONNX files need the onnx extra: skipped with the reason without it, failed in CI."""
    from nas.ship.deploy import INSTALL, missing

    absent = missing()
    if absent and require_system_deps():
        pytest.fail(
            f"{', '.join(absent)} not installed, and NAS_REQUIRE_SYSTEM_DEPS=1: install the onnx extra ({INSTALL})"
        )
    if absent:
        pytest.skip(f"{', '.join(absent)} not installed ({INSTALL}; .ci/run installs it)")


@pytest.fixture(scope="session")
def mnist_dir(request) -> Path:
    return request.config.stash[_MNIST]


@pytest.fixture(scope="session")
def small_data(mnist_dir):
    """4,000 training and 2,000 validation images: enough to see learning within seconds."""
    from nas.data.tensors import load

    return load(mnist_dir, val_size=2000, train_size=4000)


def make_study(storage: str | None = None, name: str = "synthetic", n: int = 24, seed: int = 0) -> optuna.Study:
    """A study with the attributes a real search writes (nas.search.worker), without training: trials are
    drawn from the default space by a random sampler, and complete, converge, get pruned (budget,
    invalid, convergence) or fail (diverged, stale) with made-up but plausible learning curves."""
    from nas.arch.budgets import trial_attrs
    from nas.arch.spec import arch_to_json, costs, param_count, receptive_field
    from nas.errors import SpecError
    from nas.space.spaces import sample
    from nas.study import levels
    from nas.study.analytics import ConvergenceRule
    from nas.study.settings import StudySettings

    settings = StudySettings(max_params=9_300, max_epochs=4, target_accuracy=0.98, train_size=2000, val_size=1000)
    rule = ConvergenceRule.of(settings)
    rng = random.Random(seed)
    study = optuna.create_study(
        study_name=name, directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed)
    )
    study.set_metric_names(["val_accuracy", "params"])
    study.set_user_attr("settings", settings.to_dict())
    study.enqueue_trial(settings.seed_configs[0], user_attrs={"seed_arch": settings.seed_archs[0]["name"]})
    trained = 0
    for i in range(n):
        trial = study.ask()
        arch, cfg = sample(settings.parsed_space, trial, settings.max_epochs)
        arch.name = f"trial_{trial.number}"
        try:
            params = param_count(arch)
        except SpecError as e:
            trial.set_user_attr("prune_reason", levels.pruned_for(levels.INVALID, e.problem))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        for key, value in dict(
            **trial_attrs(costs(arch)),
            receptive_field=receptive_field(arch),
            arch=arch_to_json(arch),
            train_config=cfg.to_dict(),
            device="cpu",
        ).items():
            trial.set_user_attr(key, value)
        if params > settings.max_params:
            trial.set_user_attr(
                "prune_reason", levels.pruned_for(levels.BUDGET, f"parameters {params:,} > {settings.max_params:,}")
            )
            trial.set_user_attr("over_budget", ["params"])
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trained += 1
        final = (
            min(0.993, 0.955 + 0.01 * math.log(params / 500) + rng.uniform(-0.012, 0.012)) if i else 0.985
        )  # the seed converges
        curve = [round(final - 0.05 * (1 - e / 4) ** 1.5 + rng.uniform(-0.002, 0.002), 4) for e in range(1, 5)]
        curve[-1] = round(final, 4)
        seconds = [round(0.4 + params / 20000 + rng.uniform(0, 0.1), 3) for _ in curve]
        if trained in (4, 8):  # a diverged run and a run whose worker died, failed as stale by another worker
            trial.set_user_attr(
                "fail_reason",
                "training loss became nan in epoch 2"
                if trained == 4
                else "stale: no heartbeat from worker w1 on host-b for 120 s",
            )
            trial.set_user_attr("curve", curve[:1])
            trial.set_user_attr("epoch_seconds", seconds[:1])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        stop = next((e for e, acc in enumerate(curve, 1) if rule.should_prune(e, acc)), None)
        if i == 9:
            trial.set_user_attr("retry_of", 2)
        curve, seconds = (curve[:stop], seconds[:stop]) if stop else (curve, seconds)
        trial.set_user_attr("curve", curve)
        trial.set_user_attr("epoch_seconds", seconds)
        trial.set_user_attr("train_seconds", sum(seconds))
        trial.set_user_attr("engine", "eager")
        if stop:
            trial.set_user_attr("would_prune_epoch", stop)
            trial.set_user_attr("prune_reason", levels.CONVERGENCE)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_user_attr("converged", curve[-1] >= settings.target_accuracy)
        study.tell(trial, [curve[-1], params])
    if storage is None:
        return study
    # Built in memory and copied: a SQLite commit per attribute costs seconds on a busy disk.
    optuna.copy_study(from_study_name=name, from_storage=study._storage, to_storage=storage)
    return optuna.load_study(study_name=name, storage=storage)


@pytest.fixture
def synthetic_study() -> optuna.Study:
    """In memory: notes, artifacts and reports work the same on any storage (the browser test uses SQLite)."""
    return make_study()
