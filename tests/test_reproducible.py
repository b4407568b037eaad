"""A seeded search is reproducible on one machine and torch: the same trials, architectures and
figures, run after run (one worker, as `nas search` runs on a CPU by default)."""

import optuna

from nas.search.worker import Run, search
from nas.study.settings import StudySettings


def trials(store: str, name: str, mnist_dir) -> list[tuple]:
    settings = StudySettings(
        max_epochs=1,
        train_size=600,
        val_size=300,
        target_accuracy=0.5,
        seed=3,
        seed_archs=StudySettings().seed_archs[:1],
    )
    search(name, store, settings, 4, None, Run(device="cpu", data_dir=str(mnist_dir)))
    study = optuna.load_study(study_name=name, storage=store)
    return [(t.number, t.state, t.params, t.values, t.user_attrs.get("curve")) for t in study.trials]


def test_a_seeded_search_gives_the_same_trials_twice(tmp_path, mnist_dir):
    first = trials(f"sqlite:///{tmp_path}/a.db", "r", mnist_dir)
    second = trials(f"sqlite:///{tmp_path}/b.db", "r", mnist_dir)
    assert len(first) == 4 and len({str(t[2]) for t in first}) == 4  # the seed network and three drawn ones
    assert first == second
