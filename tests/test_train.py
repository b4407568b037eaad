import math
import threading

import pytest
import torch

from nas.arch import Pool, load_arch
from nas.data import Data, Split
from nas.errors import SpecError
from nas.model import count_params
from nas.train import Diverged, TrainConfig, evaluate, lr_at, train

from conftest import SEED



def cuda(test):
    """Marked `cuda` (select with -m cuda) and skipped where torch sees no GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def subset(data, n_train, n_val, device="cpu"):
    return Data(Split(data.train.x[:n_train].to(device), data.train.y[:n_train].to(device)), Split(data.val.x[:n_val].to(device), data.val.y[:n_val].to(device)))


def avg_pool_seed():
    """The seed with average pools: no ties for max-pool to break differently between kernels, so
    two runs that differ only in float rounding stay within rounding of each other."""
    arch = load_arch(SEED)
    for layer in arch.layers:
        if isinstance(layer, Pool):
            layer.kind = "avg"
    return arch


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
    trained = train(load_arch(SEED), subset(small_data, 300, 50), TrainConfig(epochs=2, batch_size=64), on_progress=lambda *a: progress.append(a))
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
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.peak_lr(), total_steps=total, pct_start=warmup, cycle_momentum=False)
    for step in range(total):
        expected = opt.param_groups[0]["lr"]
        assert lr_at(step, cfg, total) == pytest.approx(expected, rel=1e-12, abs=0)
        assert lr_at(torch.tensor(float(step), dtype=torch.float64), cfg, total).item() == pytest.approx(expected, rel=1e-12, abs=0)
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
        assert lr_at(torch.tensor(float(step), dtype=torch.float64), cfg, total).item() == pytest.approx(expected, rel=1e-12)
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
        assert packed.seeds == [5, 6, 7] and packed.packed[0].groups == 3 and packed.packed[0].weight.dtype == torch.float64
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

    from nas.arch import Dropout

    arch = load_arch(SEED)
    arch.layers.insert(4, Dropout(0.1))
    tiny = subset(small_data, 512, 256)
    cfg = TrainConfig(epochs=3, batch_size=128, augment=True, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.005, seed=2)
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
    train(load_arch(SEED), subset(small_data, 256, 64), TrainConfig(epochs=3, batch_size=128), on_checkpoint=offered.append)
    assert offered == []  # a short run writes none
    train(load_arch(SEED), subset(small_data, 256, 64), TrainConfig(epochs=3, batch_size=128), on_checkpoint=offered.append, checkpoint_seconds=0)
    assert [c.epoch for c in offered] == [1, 2]  # never after the last epoch: the trial is done


def test_divergence_is_detected(small_data):
    with pytest.raises(Diverged, match="training loss"):
        train(load_arch(SEED), subset(small_data, 256, 64), TrainConfig(epochs=1, lr=1e12, batch_size=32, schedule="step"))
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


@pytest.mark.parametrize("data, key", [({"lr": -1.0}, "train.lr"), ({"optimizer": "lbfgs"}, "train.optimizer"), ({"epochs": "5"}, "train.epochs"),
                                       ({"speed": 1}, "train.speed"), ({"warmup": 1.0}, "train.warmup")])
def test_bad_train_config(data, key):
    with pytest.raises(SpecError, match=key):
        TrainConfig.from_dict(data, "f.toml")


def test_nas_train_cli_prints_epochs_and_saves(tmp_path, mnist_dir):
    from typer.testing import CliRunner

    from nas.cli import app

    r = CliRunner().invoke(app, ["train", str(SEED), "--epochs", "2", "--train-size", "500", "--val-size", "500", "--data-dir", str(mnist_dir), "--out", str(tmp_path)])
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
    cfg = TrainConfig(epochs=3, batch_size=256, lr=0.01 if optimizer == "sgd" else 0.002, optimizer=optimizer, augment=True)
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
    trained = train(load_arch(SEED), subset(small_data, 4000, 2000, "cuda"), TrainConfig(epochs=3, batch_size=128, lr=0.1), precision=precision)
    assert trained.engine.startswith("cuda graph") or "capture failed" in trained.engine
    assert trained.history[-1].val_acc > 0.9, trained.history


@cuda
def test_failed_capture_falls_back_to_eager_and_says_why(small_data, monkeypatch):
    import nas.train as t

    real = t._Trial.step

    def syncs_when_captured(self, x, y):
        if torch.cuda.is_current_stream_capturing():
            self.loss_sum.sum().item()  # a host sync: not allowed while capturing
        real(self, x, y)

    monkeypatch.setattr(t._Trial, "step", syncs_when_captured)
    trained = train(load_arch(SEED), subset(small_data, 512, 256, "cuda"), TrainConfig(epochs=1, batch_size=128))
    assert trained.engine.startswith("eager, fp32 (capture failed: "), trained.engine
    assert math.isfinite(trained.history[0].train_loss)


@cuda
def test_trials_in_threads_match_trials_alone(small_data):
    """Several trials at once in one process (each on its own stream) train as they do alone."""
    arch, tiny = avg_pool_seed(), subset(small_data, 1024, 512, "cuda")
    cfgs = [TrainConfig(epochs=2, batch_size=256, lr=0.01, seed=s) for s in range(4)]
    alone = [train(arch, tiny, c).history[-1].train_loss for c in cfgs]
    together: dict[int, float] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, train(arch, tiny, cfgs[i]).history[-1].train_loss)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [together[i] for i in range(4)] == pytest.approx(alone, rel=1e-3)
