import math

import pytest
import torch

from nas.arch import load_arch
from nas.train import Diverged, TrainConfig, evaluate, train
from nas.errors import SpecError

from conftest import SEED


def test_seed_learns_real_mnist(small_data):
    """The one real-training test: 2 epochs on 4,000 real images, judged on 2,000 held-out ones."""
    seen = []
    model, history = train(load_arch(SEED), small_data, TrainConfig(epochs=2, lr=0.1), on_epoch=seen.append)
    assert seen == history and len(history) == 2
    assert history[-1].val_acc > 0.90, history
    loss, acc = evaluate(model, small_data.val)
    assert acc == pytest.approx(history[-1].val_acc) and math.isfinite(loss)


def test_training_is_deterministic(small_data):
    from nas.data import Data, Split

    tiny = Data(Split(small_data.train.x[:512], small_data.train.y[:512]), Split(small_data.val.x[:256], small_data.val.y[:256]))
    cfg = TrainConfig(epochs=1, batch_size=64, augment=True, optimizer="adamw", lr=0.01, seed=3)
    (m1, h1), (m2, h2) = train(load_arch(SEED), tiny, cfg), train(load_arch(SEED), tiny, cfg)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert h1[0].train_loss == h2[0].train_loss
    m3, _ = train(load_arch(SEED), tiny, TrainConfig(**{**cfg.to_dict(), "seed": 4}))
    assert not torch.equal(m1[0].weight, m3[0].weight)


def test_divergence_is_detected(small_data):
    from nas.data import Data, Split

    tiny = Data(Split(small_data.train.x[:256], small_data.train.y[:256]), Split(small_data.val.x[:64], small_data.val.y[:64]))
    with pytest.raises(Diverged):
        train(load_arch(SEED), tiny, TrainConfig(epochs=1, lr=1e12, batch_size=32, schedule="step"))


def test_step_schedule_and_callback_can_stop(small_data):
    from nas.data import Data, Split

    tiny = Data(Split(small_data.train.x[:256], small_data.train.y[:256]), Split(small_data.val.x[:64], small_data.val.y[:64]))

    class Stop(Exception):
        pass

    def stop(epoch):
        raise Stop

    with pytest.raises(Stop):
        train(load_arch(SEED), tiny, TrainConfig(epochs=3, schedule="step"), on_epoch=stop)


@pytest.mark.parametrize("data, key", [({"lr": -1.0}, "train.lr"), ({"optimizer": "lbfgs"}, "train.optimizer"), ({"epochs": "5"}, "train.epochs"), ({"speed": 1}, "train.speed")])
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
