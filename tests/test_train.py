import math
import threading
import time

import pytest
import torch
from conftest import SEED

from nas.arch.model import count_params
from nas.arch.spec import Pool, load_arch
from nas.data.tensors import Data, Split
from nas.errors import SpecError
from nas.train.config import TrainConfig
from nas.train.engine import Diverged, evaluate, train
from nas.train.schedule import lr_at


def cuda(test):
    """Marked `cuda` (select with -m cuda) and skipped where torch sees no GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def subset(data, n_train, n_val, device="cpu"):
    return Data(
        Split(data.train.x[:n_train].to(device), data.train.y[:n_train].to(device)),
        Split(data.val.x[:n_val].to(device), data.val.y[:n_val].to(device)),
    )


def avg_pool_seed():
    """The seed with average pools: no ties for max-pool to break differently between kernels, so
    two runs that differ only in float rounding stay within rounding of each other."""
    arch = load_arch(SEED)
    for layer in arch.layers:
        if isinstance(layer, Pool):
            layer.kind = "avg"
    return arch


def with_dropout():
    """The seed with a dropout layer after its first pool."""
    from nas.arch.spec import Dropout

    arch = load_arch(SEED)
    arch.layers.insert(4, Dropout(0.1))
    return arch


@pytest.fixture(autouse=True)
def no_failed_captures_yet(monkeypatch):
    """Each test starts with no failed captures counted in the process (three restart a worker)."""
    import nas.train.engine as t

    monkeypatch.setattr(t._GRAPHS, "failures", 0)


def test_seed_learns_real_mnist(small_data):
    """The one real-training test: 2 epochs on 4,000 real images, judged on 2,000 held-out ones."""
    seen = []
    trained = train(load_arch(SEED), small_data, TrainConfig(epochs=2, lr=0.1, batch_size=128), on_epoch=seen.append)
    history = trained.history
    assert seen == history and len(history) == 2 and trained.engine == "eager" and trained.seeds == [0]
    assert history[-1].val_acc > 0.90, history
    assert history[-1].images == 31 * 128 and history[-1].val_accs == [history[-1].val_acc]
    loss, acc = evaluate(trained.model(), small_data.val)
    assert acc == pytest.approx(history[-1].val_acc) and math.isfinite(loss)


def test_one_seed_is_a_plain_network(small_data):
    trained = train(load_arch(SEED), subset(small_data, 128, 64), TrainConfig(epochs=1, batch_size=64))
    assert trained.model() is trained.packed and trained.packed[0].groups == 1
    assert count_params(trained.packed) == 9274


def test_training_is_deterministic(small_data):
    tiny = subset(small_data, 512, 256)
    cfg = TrainConfig(epochs=1, batch_size=64, augment=True, optimizer="adamw", lr=0.01, seed=3)
    a, b = train(load_arch(SEED), tiny, cfg), train(load_arch(SEED), tiny, cfg)
    assert all(torch.equal(x, y) for x, y in zip(a.packed.state_dict().values(), b.packed.state_dict().values()))
    assert a.history[0].train_loss == b.history[0].train_loss
    c = train(load_arch(SEED), tiny, TrainConfig(**{**cfg.to_dict(), "seed": 4}))
    assert not torch.equal(a.packed[0].weight, c.packed[0].weight)


def test_static_batches_count_images_honestly(small_data):
    """The last partial batch is dropped: 300 images in batches of 64 train 4 x 64 = 256 per epoch;
    a split smaller than a batch trains as one batch of all its images."""
    progress = []
    trained = train(
        load_arch(SEED),
        subset(small_data, 300, 50),
        TrainConfig(epochs=2, batch_size=64),
        on_progress=lambda *a: progress.append(a),
    )
    assert [e.images for e in trained.history] == [256, 256]
    assert progress == [(64 * i, 256) for i in range(1, 5)] * 2
    small = train(load_arch(SEED), subset(small_data, 40, 20), TrainConfig(epochs=1, batch_size=512))
    assert small.history[0].images == 40 and math.isfinite(small.history[0].train_loss)


@pytest.mark.parametrize("warmup", [0.3, 0.15])
@pytest.mark.parametrize("total", [1, 2, 7, 97, 1940])
def test_onecycle_schedule_equals_torch(total, warmup):
    """The schedule the step reads (host float for eager, float64 tensor in the graph) is
    OneCycleLR without momentum cycling, stepped per batch."""
    cfg = TrainConfig(lr=0.1, batch_size=512, warmup=warmup)
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=cfg.peak_lr(), momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.peak_lr(), total_steps=total, pct_start=warmup, cycle_momentum=False
    )
    for step in range(total):
        expected = opt.param_groups[0]["lr"]
        assert lr_at(step, cfg, total) == pytest.approx(expected, rel=1e-12, abs=0)
        assert lr_at(torch.tensor(float(step), dtype=torch.float64), cfg, total).item() == pytest.approx(
            expected, rel=1e-12, abs=0
        )
        assert opt.param_groups[0]["momentum"] == 0.9
        opt.step()
        sched.step()


@pytest.mark.parametrize("total", [2, 9, 100])
def test_step_schedule_equals_torch(total):
    cfg = TrainConfig(lr=0.1, schedule="step")
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=cfg.peak_lr())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, total // 3), gamma=0.1)
    for step in range(total):
        expected = opt.param_groups[0]["lr"]
        assert lr_at(step, cfg, total) == pytest.approx(expected, rel=1e-12)
        assert lr_at(torch.tensor(float(step), dtype=torch.float64), cfg, total).item() == pytest.approx(
            expected, rel=1e-12
        )
        opt.step()
        sched.step()


@pytest.mark.parametrize("images, batch", [(640, 64), (2048, 1024)])  # 1024: channels_last on the CPU
def test_k_seeds_train_as_k_separate_runs(small_data, images, batch):
    """Copy k of a packed run is the run of seed cfg.seed + k alone: same initial weights, its own
    shuffled and augmented batches, its own BatchNorm statistics, up to rounding.

    In float64, so that rounding cannot be mistaken for a mistake on any CPU. A grouped
    convolution sums in another order than K plain ones; in float32 that difference, grown over
    the run's 2-10 updates, reached 3e-4 on an AMD EPYC (2,500 times float32's epsilon, 1.2e-7).
    float64's epsilon, 2.2e-16, is 2^29 times smaller, so the same growth gives under 1e-12, and
    1e-9 leaves a margin of 1,000 for kernels that round worse. (The step computes its loss from
    logits cast to float32: a float64 difference that straddles a float32 rounding boundary, odds
    of about 1e-9 per logit, would add a float32-sized step; it has not been seen.) A real
    mistake, a copy trained on another copy's batch, seed or statistics, moves weights by a whole
    update, lr x gradient, 1e-4 or more here."""
    torch.set_default_dtype(torch.float64)  # the networks are built in float64
    try:
        arch, tiny = avg_pool_seed(), subset(small_data, images, 200)
        tiny = Data(Split(tiny.train.x.double(), tiny.train.y), Split(tiny.val.x.double(), tiny.val.y))
        cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.01, augment=True, seed=5)
        packed = train(arch, tiny, cfg, seeds=3)
        assert (
            packed.seeds == [5, 6, 7]
            and packed.packed[0].groups == 3
            and packed.packed[0].weight.dtype == torch.float64
        )
        for k in range(3):
            alone = train(arch, tiny, TrainConfig(**{**cfg.to_dict(), "seed": 5 + k}))
            copy = packed.model(k)
            assert copy[0].groups == 1 and count_params(copy) == 9274
            for (name, a), b in zip(copy.state_dict().items(), alone.packed.state_dict().values()):
                assert torch.allclose(a, b, rtol=0, atol=1e-9), (k, name, (a - b).abs().max())
            assert packed.history[0].val_accs[k] == alone.history[0].val_acc
        e = packed.history[0]
        assert e.val_acc == pytest.approx(sum(e.val_accs) / 3) and e.images == images
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_resumed_run_ends_bit_identical(small_data, optimizer):
    """Stopped after a checkpoint and resumed from it (through torch.save, as a worker stores it),
    a run with augmentation and dropout ends with the same weights and curve as one never stopped."""
    import io

    arch = with_dropout()
    tiny = subset(small_data, 512, 256)
    cfg = TrainConfig(
        epochs=3, batch_size=128, augment=True, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.005, seed=2
    )
    whole = train(arch, tiny, cfg)
    saved = []

    def stop_after_first_checkpoint(e):
        if saved:
            raise KeyboardInterrupt

    def keep(ckpt):
        buffer = io.BytesIO()
        torch.save(ckpt, buffer)
        saved.append(buffer.getvalue())

    with pytest.raises(KeyboardInterrupt):
        train(arch, tiny, cfg, on_epoch=stop_after_first_checkpoint, on_checkpoint=keep, checkpoint_seconds=0)
    assert len(saved) == 1
    ckpt = torch.load(io.BytesIO(saved[0]), weights_only=False)
    assert ckpt.epoch == 1 and ckpt.steps == 4 and len(ckpt.history) == 1
    torch.manual_seed(123)  # whatever the process drew meanwhile does not matter
    resumed = train(arch, tiny, cfg, resume=ckpt)
    assert [e.val_acc for e in resumed.history] == [e.val_acc for e in whole.history]
    assert [e.train_loss for e in resumed.history] == [e.train_loss for e in whole.history]
    for a, b in zip(resumed.packed.state_dict().values(), whole.packed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoints_only_after_their_interval(small_data):
    offered = []
    train(
        load_arch(SEED),
        subset(small_data, 256, 64),
        TrainConfig(epochs=3, batch_size=128),
        on_checkpoint=offered.append,
    )
    assert offered == []  # a short run writes none
    train(
        load_arch(SEED),
        subset(small_data, 256, 64),
        TrainConfig(epochs=3, batch_size=128),
        on_checkpoint=offered.append,
        checkpoint_seconds=0,
    )
    assert [c.epoch for c in offered] == [1, 2]  # never after the last epoch: the trial is done


def test_divergence_is_detected(small_data):
    with pytest.raises(Diverged, match="training loss"):
        train(
            load_arch(SEED), subset(small_data, 256, 64), TrainConfig(epochs=1, lr=1e12, batch_size=32, schedule="step")
        )
    with pytest.raises(Diverged, match="validation loss"):  # one step: its own loss was taken before the update blew up
        train(load_arch(SEED), subset(small_data, 64, 64), TrainConfig(epochs=1, lr=1e12, batch_size=512))


def test_step_schedule_and_callback_can_stop(small_data):
    class Stop(Exception):
        pass

    def stop(epoch):
        raise Stop

    with pytest.raises(Stop):
        train(load_arch(SEED), subset(small_data, 256, 64), TrainConfig(epochs=3, schedule="step"), on_epoch=stop)


def test_graph_engine_needs_cuda(small_data):
    with pytest.raises(ValueError, match="CUDA"):
        train(load_arch(SEED), subset(small_data, 64, 32), TrainConfig(epochs=1), engine="graph")


@pytest.mark.parametrize(
    "data, key",
    [
        ({"lr": -1.0}, "train.lr"),
        ({"optimizer": "lbfgs"}, "train.optimizer"),
        ({"epochs": "5"}, "train.epochs"),
        ({"speed": 1}, "train.speed"),
        ({"warmup": 1.0}, "train.warmup"),
    ],
)
def test_bad_train_config(data, key):
    with pytest.raises(SpecError, match=key):
        TrainConfig.from_dict(data, "f.toml")


def test_nas_train_cli_prints_epochs_and_saves(tmp_path, mnist_dir):
    from typer.testing import CliRunner

    from nas.cli.app import app

    r = CliRunner().invoke(
        app,
        [
            "train",
            str(SEED),
            "--epochs",
            "2",
            "--train-size",
            "500",
            "--val-size",
            "500",
            "--data-dir",
            str(mnist_dir),
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "epoch   1/2" in r.output and "epoch   2/2" in r.output and "test acc" in r.output
    saved = load_arch(tmp_path / "architecture.toml")
    assert saved.layers == load_arch(SEED).layers and saved.train["epochs"] == 2 and saved.train["augment"] is True
    assert (tmp_path / "state_dict.pt").is_file() and (tmp_path / "history.json").is_file()


# --- CUDA: skipped without a GPU ----------------------------------------------------------------


@pytest.mark.parametrize("seeds", [1, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@cuda
def test_graph_matches_eager(small_data, seeds, optimizer):
    """The captured step replays what the eager step does: same losses over the first steps."""
    arch, tiny = avg_pool_seed(), subset(small_data, 1024, 512, "cuda")
    cfg = TrainConfig(
        epochs=3, batch_size=256, lr=0.01 if optimizer == "sgd" else 0.002, optimizer=optimizer, augment=True
    )
    graph = train(arch, tiny, cfg, seeds=seeds, engine="graph", precision="fp32")
    eager = train(arch, tiny, cfg, seeds=seeds, engine="eager", precision="fp32")
    assert graph.engine == "cuda graph, fp32", graph.engine
    assert eager.engine == "eager, fp32"
    for g, e in zip(graph.history, eager.history):
        assert g.train_loss == pytest.approx(e.train_loss, rel=1e-3), (g, e)
        assert g.val_loss == pytest.approx(e.val_loss, rel=1e-3), (g, e)
        assert g.lr == e.lr and g.images == e.images == 1024


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@cuda
def test_graph_trains_the_seed(small_data, precision):
    trained = train(
        load_arch(SEED),
        subset(small_data, 4000, 2000, "cuda"),
        TrainConfig(epochs=3, batch_size=128, lr=0.1),
        precision=precision,
    )
    assert trained.engine.startswith("cuda graph") or "capture failed" in trained.engine
    assert trained.history[-1].val_acc > 0.9, trained.history


@cuda
def test_failed_capture_falls_back_to_eager_and_says_why(small_data, monkeypatch):
    """A capture broken by a host sync, on a network with dropout: the trial falls back to eager and
    trains, and the process is not poisoned: the next trial (dropout again) captures and replays."""
    import nas.train.engine as t
    from nas.train.trial import _Trial

    real = _Trial.step

    def syncs_when_captured(self, x, y):
        if torch.cuda.is_current_stream_capturing():
            self.loss_sum.sum().item()  # a host sync: not allowed while capturing
        real(self, x, y)

    monkeypatch.setattr(_Trial, "step", syncs_when_captured)
    tiny = subset(small_data, 512, 256, "cuda")
    trained = train(with_dropout(), tiny, TrainConfig(epochs=1, batch_size=128))
    assert trained.engine.startswith("eager, fp32 (capture failed: "), trained.engine
    assert math.isfinite(trained.history[0].train_loss) and t._GRAPHS.failures == 1
    monkeypatch.setattr(_Trial, "step", real)
    again = train(with_dropout(), tiny, TrainConfig(epochs=2, batch_size=128))
    assert again.engine == "cuda graph, fp32" and math.isfinite(again.history[-1].train_loss)


@cuda
def test_concurrent_dropout_graphs_draw_masks_of_their_own():
    """Two graphs with dropout, captured as nas.train.engine captures (alone, with dropout_rng) by two
    threads and replayed at once: every replay draws a new mask, and the two graphs never draw
    the same one, on a torch with or without per-capture RNG state."""
    import torch.nn.functional as F

    import nas.train.engine as t
    from nas.train.gpulock import GPU

    device = torch.device("cuda")
    masks: dict[int, list[torch.Tensor]] = {}

    def run(seed):
        with t._on_trial_stream(device):
            with GPU.exclusive():
                ones, out = torch.ones(4096, device=device), torch.empty(4096, device=device)
                F.dropout(ones, 0.5, training=True)  # warm-up, outside the capture
                graph, pool = t._GRAPHS.graph(), t._GRAPHS.pool(device)
                with t._GRAPHS.dropout_rng(graph, device, seed, True):
                    graph.capture_begin(pool=pool.id, capture_error_mode="thread_local")
                    out.copy_(F.dropout(ones, 0.5, training=True))
                    graph.capture_end()
            drawn = []
            for _ in range(20):
                with GPU.shared():
                    graph.replay()
                    drawn.append((out > 0).cpu())
            masks[seed] = drawn
            with GPU.exclusive():
                graph.reset()
                t._GRAPHS.release(pool, device)

    threads = [threading.Thread(target=run, args=(s,)) for s in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    a, b = masks[0], masks[1]
    assert all(not torch.equal(x, y) for x, y in zip(a, b))
    assert all(not torch.equal(x, y) for x, y in zip(a, a[1:]))
    assert 0.4 < torch.stack(a).float().mean().item() < 0.6


@cuda
def test_graph_trials_reuse_their_memory_pool(small_data):
    """One thread's graph trials, one after another, reuse its graph memory pool: the memory
    reserved stops growing after the first trial (no empty_cache between trials)."""
    tiny, cfg = subset(small_data, 1024, 512, "cuda"), TrainConfig(epochs=1, batch_size=256)
    train(load_arch(SEED), tiny, cfg)
    reserved = torch.cuda.memory_reserved()
    for seed in range(3):
        assert train(load_arch(SEED), tiny, TrainConfig(**{**cfg.to_dict(), "seed": seed})).engine == "cuda graph, fp32"
    assert torch.cuda.memory_reserved() <= reserved + 2**21  # a 2 MB segment of slack


@cuda
def test_trials_in_threads_match_trials_alone(small_data):
    """Several trials at once in one process (each on its own stream) train as they do alone."""
    arch, tiny = avg_pool_seed(), subset(small_data, 1024, 512, "cuda")
    cfgs = [TrainConfig(epochs=2, batch_size=256, lr=0.01, seed=s) for s in range(4)]
    alone = [train(arch, tiny, c).history[-1].train_loss for c in cfgs]
    together: dict[int, float] = {}
    threads = [
        threading.Thread(target=lambda i=i: together.__setitem__(i, train(arch, tiny, cfgs[i]).history[-1].train_loss))
        for i in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [together[i] for i in range(4)] == pytest.approx(alone, rel=1e-3)


# --- the graph engine's discipline on the CPU, with a recording fake of the CUDA calls -----------


class Record:
    """Intervals of GPU work, by kind and thread, from every thread of a test."""

    def __init__(self):
        self.lock, self.items = threading.Lock(), []

    def add(self, kind, start, end=None, **info):
        with self.lock:
            self.items.append(
                dict(
                    kind=kind,
                    thread=threading.get_ident(),
                    start=start,
                    end=time.perf_counter() if end is None else end,
                    **info,
                )
            )

    def of(self, *kinds):
        return [i for i in self.items if i["kind"] in kinds]


class FakeGraph:
    """Records capture and replay; a replay takes a millisecond (the real one only launches)."""

    def __init__(self, rec, fail):
        self.rec, self.fail = rec, fail

    def capture_begin(self, pool=None, capture_error_mode="global"):
        from nas.train.gpulock import GPU

        self.began = time.perf_counter()
        self.rec.add("begin", self.began, alone=GPU.held() == "exclusive" and GPU.readers() == 0, pool=pool)

    def capture_end(self):
        if self.fail:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        self.rec.add("capture", self.began)

    def replay(self):
        start = time.perf_counter()
        time.sleep(0.001)
        self.rec.add("replay", start)

    def reset(self):
        self.rec.add("reset", time.perf_counter())

    def register_generator_state(self, generator):
        self.rec.add("register", time.perf_counter(), seed=generator.initial_seed())


class FakeDefaultGenerator:
    def __init__(self, rec):
        self.rec, self.state = rec, "default"

    def graphsafe_get_state(self):
        return self.state

    def graphsafe_set_state(self, state):
        self.state = state if isinstance(state, str) else f"own seed {state.initial_seed()}"
        self.rec.add("default generator", time.perf_counter(), state=self.state)


@pytest.fixture
def fake_cuda(monkeypatch):
    """The graph engine on the CPU: nas.train.engine._GRAPHS replaced by a _Graphs whose torch.cuda calls
    are recorded (the discipline, recovery and RNG choices are the real code's), and every step,
    validation and epoch preparation recorded as an interval."""
    import nas.train.engine as t
    from nas.train.graphs import _Graphs
    from nas.train.trial import _Trial

    rec = Record()

    class FakeGraphs(_Graphs):
        fail = False  # captures raise at capture_end
        per_capture = True  # how the fake torch keeps RNG state
        pools = 0

        def available(self, device):
            return True

        def graph(self):
            return FakeGraph(rec, self.fail)

        def pool(self, device):
            FakeGraphs.pools += 1
            return type("Pool", (), {"id": (0, FakeGraphs.pools)})()

        def release(self, pool, device):
            rec.add("release", time.perf_counter(), pool=pool.id)

        def rng_per_capture(self, device):
            return self.per_capture

        def default_generator(self, device):
            return self.generator

        def end_allocation(self, pool, device):
            rec.add("end allocation", time.perf_counter(), pool=pool.id)

        def clear_capture_state(self, device):
            rec.add("clear capture state", time.perf_counter())
            return True

    graphs = FakeGraphs()
    graphs.generator = FakeDefaultGenerator(rec)
    monkeypatch.setattr(t, "_GRAPHS", graphs)
    for name in ("_validate", "_epoch_batches"):
        real = getattr(t, name)
        monkeypatch.setattr(
            t,
            name,
            lambda *a, _real=real, _name=name: (lambda s: (_real(*a), rec.add(_name, s))[0])(time.perf_counter()),
        )
    step = _Trial.step

    def recorded_step(self, x, y):
        start = time.perf_counter()
        step(self, x, y)
        rec.add("step", start)

    monkeypatch.setattr(_Trial, "step", recorded_step)
    return graphs, rec


def overlapping(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_no_gpu_work_of_another_trial_overlaps_a_capture(small_data, fake_cuda):
    """Three trials in threads on the graph engine (fake CUDA): no replay, step, validation or
    epoch preparation of another thread overlaps a capture, and every capture began with no
    thread inside shared work."""
    graphs, rec = fake_cuda
    tiny = subset(small_data, 256, 64)
    errors = []

    def run(seed):
        try:
            trained = train(load_arch(SEED), tiny, TrainConfig(epochs=3, batch_size=32, seed=seed))
            assert trained.engine == "cuda graph" and len(trained.history) == 3
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s,)) for s in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    captures, begins = rec.of("capture"), rec.of("begin")
    assert len(captures) == 3 and all(b["alone"] for b in begins)
    work = rec.of("replay", "step", "_validate", "_epoch_batches")
    assert len(rec.of("replay")) == 3 * 3 * 8
    clashes = [(c, w) for c in captures for w in work if w["thread"] != c["thread"] and overlapping(c, w)]
    assert not clashes, clashes[:3]
    assert len(rec.of("release")) == 3 and len(rec.of("reset")) == 3  # every graph destroyed, its pool given back


def test_an_on_epoch_that_blocks_stalls_no_other_trial(small_data, fake_cuda):
    """A trial whose on_epoch blocks for 1.5 s (a storage outage) holds no part of the GPU lock
    meanwhile: a trial started then captures, trains and finishes its 3 epochs during the wait."""
    from nas.train.gpulock import GPU

    graphs, rec = fake_cuda
    tiny = subset(small_data, 256, 64)
    blocked, held, done = threading.Event(), [], {}

    def slow(e):
        held.append(GPU.held())
        if e.epoch == 1:
            blocked.set()
            time.sleep(1.5)
            done.setdefault("slow woke", time.perf_counter())

    def progress(*_):
        held.append(GPU.held())

    a = threading.Thread(
        target=lambda: train(load_arch(SEED), tiny, TrainConfig(epochs=2, batch_size=32), slow, on_progress=progress)
    )
    a.start()
    assert blocked.wait(60)
    other = train(load_arch(SEED), tiny, TrainConfig(epochs=3, batch_size=32, seed=1), on_progress=progress)
    done["other finished"] = time.perf_counter()
    a.join()
    assert other.engine == "cuda graph" and len(other.history) == 3
    assert done["other finished"] < done["slow woke"], done
    assert set(held) == {None}  # callbacks run outside the lock


def test_a_failed_capture_is_cleaned_up_before_the_eager_fallback(small_data, fake_cuda):
    """A capture that fails at capture_end (as CUDA reports an invalidated capture) on a network
    with dropout: the graph is destroyed, the allocator told the capture ended, the generator's
    capture state cleared and the failure counted, all before the fallback's first eager step;
    the trial then trains eagerly and learns. The failed pool is not used again."""
    from nas.train.engine import RestartWorker
    from nas.train.graphs import CAPTURE_FAILURES_TO_RESTART

    graphs, rec = fake_cuda
    graphs.fail, graphs.per_capture = True, False
    trained = train(
        with_dropout(), subset(small_data, 1024, 500), TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=4)
    )
    assert trained.engine.startswith("eager (capture failed: RuntimeError: CUDA error: operation not permitted"), (
        trained.engine
    )
    assert trained.history[-1].val_acc > 0.7 and graphs.failures == 1
    kinds = [i["kind"] for i in sorted(rec.items, key=lambda i: i["end"])]
    cleared = kinds.index("clear capture state")
    assert kinds.index("reset") < cleared and kinds.index("end allocation") < cleared
    fallback = [i for i in rec.of("step") if i["start"] > rec.of("clear capture state")[0]["end"]]
    assert len(fallback) == 2 * 16  # every step of the eager run came after the clean-up
    assert rec.of("release") == []  # the failed capture's pool is kept aside, never handed out again
    # the default generator was pointed at the trial's own (seed 4) during the capture and back after
    assert [i["state"] for i in rec.of("default generator")] == ["own seed 4", "default"]
    assert [i["seed"] for i in rec.of("register")] == [4]
    graphs.failures = CAPTURE_FAILURES_TO_RESTART - 1
    with pytest.raises(RestartWorker, match=f"{CAPTURE_FAILURES_TO_RESTART} CUDA graph captures failed"):
        train(with_dropout(), subset(small_data, 256, 64), TrainConfig(epochs=1, batch_size=64))


@pytest.mark.parametrize("per_capture, dropout, own", [(False, True, True), (True, True, False), (False, False, False)])
def test_dropout_gets_its_own_generator_only_where_the_torch_shares_one(
    small_data, fake_cuda, per_capture, dropout, own
):
    """Where the torch marks its generator capturing for the whole process (2.11), a graph with
    dropout draws from a generator of its own, seeded with the trial's seed: concurrent trials of
    different seeds get different generators. Elsewhere, or without dropout, nothing changes."""
    graphs, rec = fake_cuda
    graphs.per_capture = per_capture
    arch = with_dropout() if dropout else load_arch(SEED)
    tiny = subset(small_data, 256, 64)
    threads = [
        threading.Thread(target=train, args=(arch, tiny, TrainConfig(epochs=1, batch_size=64, seed=s))) for s in (7, 8)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(rec.of("capture")) == 2
    assert sorted(i["seed"] for i in rec.of("register")) == ([7, 8] if own else [])
    swaps = [i["state"] for i in sorted(rec.of("default generator"), key=lambda i: i["end"])]
    assert swaps in (
        (["own seed 7", "default", "own seed 8", "default"], ["own seed 8", "default", "own seed 7", "default"])
        if own
        else ([],)
    )


def test_norm_and_bias_decay_is_a_setting(small_data):
    """decay_norm_bias=False leaves BatchNorm weights and biases (the 1-D parameters) undecayed."""
    from nas.train.trial import _Trial

    model = train(load_arch(SEED), subset(small_data, 128, 64), TrainConfig(epochs=1, batch_size=64)).packed
    decayed = lambda trial: {p.ndim: g["weight_decay"] for g in trial.opt.param_groups for p in g["params"]}  # noqa: E731
    on, off = (
        _Trial(model, TrainConfig(decay_norm_bias=flag), 1, 10, torch.device("cpu"), "fp32", False)
        for flag in (True, False)
    )
    assert decayed(on) == {4: 5e-4, 1: 5e-4} and decayed(off) == {4: 5e-4, 1: 0.0}
    for trial in (on, off):
        assert sum(len(g["params"]) for g in trial.opt.param_groups) == len(list(model.parameters()))


def test_the_weight_average_is_what_validation_and_export_see(small_data):
    """With ema_half_life the trained network is the average: it differs from the live weights,
    its validation figures are its own, and a half-life of a hundredth of an epoch tracks the
    live weights closely while one of an epoch lags."""
    from nas.train.trial import _Trial

    tiny, arch = subset(small_data, 512, 256), load_arch(SEED)
    plain = train(arch, tiny, TrainConfig(epochs=2, batch_size=64, seed=1))
    short = train(arch, tiny, TrainConfig(epochs=2, batch_size=64, seed=1, ema_half_life=0.01))
    long = train(arch, tiny, TrainConfig(epochs=2, batch_size=64, seed=1, ema_half_life=1.0))
    live = plain.packed.state_dict()

    def gap(t):
        return max((a - live[k]).abs().max().item() for k, a in t.packed.state_dict().items() if a.is_floating_point())

    assert 0 < gap(short) < gap(long) and long.history[-1].val_loss != plain.history[-1].val_loss
    trial = _Trial(build_seed(), TrainConfig(epochs=4, ema_half_life=2.0), 1, 40, torch.device("cpu"), "fp32", False)
    assert (1 - trial.ema_weight) ** 20 == pytest.approx(0.5)  # a half-life of 2 epochs of 10 updates: 20 updates


def build_seed():
    from nas.arch.model import build

    torch.manual_seed(0)
    return build(load_arch(SEED))


def test_a_resumed_run_with_an_average_ends_bit_identical(small_data):
    """The checkpoint holds the average: a stopped and resumed run ends with the same average."""
    tiny, arch = subset(small_data, 512, 256), load_arch(SEED)
    cfg = TrainConfig(epochs=3, batch_size=128, augment=True, seed=2, ema_half_life=0.5)
    whole = train(arch, tiny, cfg)
    saved = []

    def stop(e):
        if saved:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(arch, tiny, cfg, on_epoch=stop, on_checkpoint=saved.append, checkpoint_seconds=0)
    assert saved[0].ema is not None
    resumed = train(arch, tiny, cfg, resume=saved[0])
    assert [e.val_acc for e in resumed.history] == [e.val_acc for e in whole.history]
    for a, b in zip(resumed.packed.state_dict().values(), whole.packed.state_dict().values()):
        assert torch.equal(a, b)


def test_packed_seeds_keep_an_average_each(small_data):
    """K packed seeds keep K averages: copy k's average is that seed's run alone, up to rounding."""
    tiny, arch = subset(small_data, 256, 128), avg_pool_seed()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01, seed=3, ema_half_life=0.5)
    packed = train(arch, tiny, cfg, seeds=2)
    for k in range(2):
        alone = train(arch, tiny, TrainConfig(**{**cfg.to_dict(), "seed": 3 + k}))
        for a, b in zip(packed.model(k).state_dict().values(), alone.packed.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), atol=1e-4)


def test_the_graph_step_averages_and_capture_puts_the_average_back(small_data, fake_cuda):
    """The step a CUDA graph captures updates the average (device-tensor learning rate, fused
    optimizer), as the eager step does; capture() runs warm-up steps and leaves the average as it
    was, so the first replay is the run's first update (graph engine on the CPU, as above)."""
    from nas.train.trial import _Trial

    x, y = small_data.train.x[:64].contiguous(memory_format=torch.channels_last), small_data.train.y[:64, None]
    cfg = TrainConfig(epochs=1, batch_size=64, ema_half_life=0.5)
    eager, graph = (
        _Trial(build_seed().to(memory_format=torch.channels_last), cfg, 1, 10, torch.device("cpu"), "fp32", g)
        for g in (False, True)
    )
    before = {k: v.clone() for k, v in graph.ema.state_dict().items()}
    graph.capture(x, y, 0, fake_cuda[0])
    for k, v in graph.ema.state_dict().items():
        assert torch.equal(v, before[k]), k
    for _ in range(3):
        eager.step(x, y)
        graph.step(x, y)
    for (k, a), b in zip(eager.ema.state_dict().items(), graph.ema.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert not torch.equal(eager.ema.state_dict()["0.weight"], before["0.weight"])
