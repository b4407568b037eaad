import pytest
from optuna.trial import FixedTrial

from nas.arch import load_arch, param_count
from nas.errors import SpecError
from nas.model import build, count_params
from nas.space import architecture_count, describe, load_space, params_for, random_archs, sample
from nas.train import TrainConfig

from conftest import ROOT, SEED

SPACE = ROOT / "search_spaces" / "mnist_fcn.toml"


def test_seed_is_a_point_of_the_default_space():
    space, seed = load_space(SPACE), load_arch(SEED)
    params = params_for(space, seed, TrainConfig())
    arch, cfg = sample(space, FixedTrial(params))
    assert arch.layers == seed.layers and arch.head == seed.head and cfg == TrainConfig()
    assert param_count(arch) == 9274


def test_variant_outside_the_space_is_refused():
    with pytest.raises(SpecError, match="not a point of search space"):
        params_for(load_space(SPACE), load_arch(SEED.parent / "seed_9274_summary.toml"), TrainConfig())


def test_sampled_architectures_build_and_count_right():
    space = load_space(SPACE)
    valid = 0
    for arch in random_archs(space, 150, seed=3):
        try:
            n = param_count(arch)
        except SpecError:
            continue
        valid += 1
        assert count_params(build(arch)) == n
    assert valid > 100


def test_describe_gives_size_and_parameter_range():
    text = describe(load_space(SPACE), samples=500, max_params=20000)
    assert "architectures" in text and "parameters (estimate" in text and "within --max-params 20,000" in text
    assert architecture_count(load_space(SPACE)) > 1e9


@pytest.mark.parametrize(
    "edit, key",
    [
        (("stages = [2, 3]", "stages = [2, 5]"), "architecture.stages"),
        (("channels = [4, 6, 8, 10, 12, 16]", "channels = [4, \"x\"]"), "architecture.stage[0].channels"),
        (("blocks = [1, 4]", "blocks = 3"), "architecture.stage[0].blocks"),
        (("pool = [\"max\", \"avg\"]", "pool = [\"max\", \"median\"]"), "architecture.pool"),
        (("optimizer = [\"sgd\", \"adamw\"]", "optimizer = [\"sgd\", \"adamw\"]\nmomentum = [0.9]"), "training.momentum"),
        (("lr_sgd = [0.02, 0.2]", "lr_sgd = [0.2, 0.02]"), "training.lr_sgd"),
    ],
)
def test_bad_space_files_name_key(tmp_path, edit, key):
    text = SPACE.read_text()
    assert edit[0] in text
    path = tmp_path / "space.toml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(SpecError) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}: {key}: ")
