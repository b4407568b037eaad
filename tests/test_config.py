"""TrainConfig: validated where made, and fitted to short runs so large batches do not diverge."""

import pytest

from nas.errors import SpecError
from nas.train.config import MIN_UPDATES, REFERENCE_BATCH, TrainConfig


@pytest.mark.parametrize(
    "images, epochs, batch",
    [
        (50_000, 20, 1024),  # the recipe: 960 updates, kept
        (60_000, 20, 1024),  # an export on every training image
        (50_000, 4, 512),
        (50_000, 2, 256),
        (10_000, 4, 128),
        (10_000, 10, 256),
        (600, 1, 128),
    ],
)
def test_batches_are_halved_until_a_run_makes_enough_updates(images, epochs, batch):
    cfg = TrainConfig(epochs=epochs, batch_size=1024).fitted(images)
    assert cfg.batch_size == batch
    assert cfg.epochs * (images // cfg.batch_size) >= MIN_UPDATES or cfg.batch_size == REFERENCE_BATCH
    assert cfg.peak_lr() == pytest.approx(cfg.lr * batch / REFERENCE_BATCH)


def test_small_batches_and_long_runs_are_left_alone():
    cfg = TrainConfig(batch_size=64, epochs=1)
    assert cfg.fitted(1000) is cfg and TrainConfig().fitted(50_000) == TrainConfig()


@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", 0),
        ("batch_size", 0),
        ("lr", 0.0),
        ("momentum", 1.0),
        ("warmup", 1.5),
        ("label_smoothing", 1.0),
        ("seed", -1),
    ],
)
def test_bad_values_are_refused_where_a_config_is_made(field, value):
    with pytest.raises(SpecError, match=f"train.{field}"):
        TrainConfig(**{field: value})
