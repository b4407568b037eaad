from dataclasses import replace

import pytest

from nas.arch.spec import arch_to_dict, builtin_archs, load_arch
from nas.data.datasets import MNIST
from nas.errors import SpecError
from nas.space.spaces import read_space
from nas.study.settings import SettingsMismatch, StudySettings

BUILTINS = ", ".join(a.name for a in builtin_archs())  # the hand-made ones and those nas found


@pytest.mark.parametrize(
    "given, flag, problem",
    [
        (dict(max_macs=0), "--max-macs", "must be positive"),
        (dict(max_activation_kb=-2.5), "--max-activation-kb", "must be positive"),
        (dict(max_model_kb=0.0), "--max-model-kb", "must be positive"),
        (dict(minimize="flops"), "--minimize", "params, macs, activation, model-bytes"),
    ],
)
def test_resource_settings_are_validated_where_made(given, flag, problem):
    with pytest.raises(SpecError) as err:
        StudySettings(**given)
    message = str(err.value)
    assert message.startswith(f"settings: {flag}: ") and problem in message and "\n" not in message


def test_limits_default_to_none_and_round_trip():
    s = StudySettings()
    assert (s.max_macs, s.max_activation_kb, s.max_model_kb, s.minimize) == (None, None, None, "params")
    limited = StudySettings(max_macs=500_000, max_activation_kb=2.5, max_model_kb=4.5, minimize="activation")
    assert StudySettings.from_dict(limited.to_dict()) == limited


def test_a_study_stored_before_the_resource_settings_still_loads():
    stored = StudySettings().to_dict()
    for key in ("max_macs", "max_activation_kb", "max_model_kb", "minimize"):
        del stored[key]
    assert StudySettings.from_dict(stored) == StudySettings()


def test_a_different_limit_on_resume_is_refused_with_both_values():
    with pytest.raises(
        SettingsMismatch,
        match=r"--max-activation-kb: the study was created with --max-activation-kb 2.5; "
        r"this run asks for --max-activation-kb 3.0",
    ):
        StudySettings(max_activation_kb=2.5).reconcile({"max_activation_kb": 3.0}, "s")


def test_every_disagreeing_flag_is_named_at_once():
    with pytest.raises(SettingsMismatch) as err:
        StudySettings(max_epochs=1).reconcile({"max_params": 5000, "seed": 0, "max_epochs": 3}, "s")
    assert "--max-params, --max-epochs:" in str(err.value) and "--max-params 20000, --max-epochs 1;" in str(err.value)
    assert "--max-params 5000, --max-epochs 3." in str(err.value) and "--seed" not in str(err.value)


def test_a_budget_no_architecture_of_the_space_meets_is_refused():
    """The default space's smallest network has 200 parameters (nas.space.spaces.cheapest); 150 would
    prune every trial before training."""
    with pytest.raises(
        SpecError,
        match=r"--max-params 150: no architecture of search space mnist_fcn is within this limit "
        r"\(its smallest: parameters 200\)",
    ):
        StudySettings(max_params=150).check_reachable()
    StudySettings(max_params=200).check_reachable()
    with pytest.raises(SpecError, match=r"--max-activation-kb 1: .* \(its smallest: peak int8 activations 1,460 B\)"):
        StudySettings(max_macs=10_000, max_activation_kb=1.0).check_reachable()


RGB = replace(
    MNIST,
    name="rgb.npz",
    shape=(3, 32, 32),
    mean=(0.1, 0.2, 0.3),
    std=(0.3, 0.3, 0.3),
    train=6_000,
    test=1_000,
    sha256="ab" * 32,
)


def test_the_data_is_a_setting_that_sets_the_validation_split_and_its_limits():
    s = StudySettings(dataset=RGB)
    assert s.val_size == 1_000 and s.train_images == 5_000  # a sixth of the data's training images by default
    assert StudySettings().val_size == 10_000 and StudySettings().dataset == MNIST
    with pytest.raises(
        SpecError,
        match=r"--train-size: must be between 1 and 5,000 \(rgb.npz's 6,000 training images minus --val-size\)",
    ):
        StudySettings(dataset=RGB, train_size=5_001)
    with pytest.raises(SpecError, match=r"--val-size: must be between 1 and 5,999"):
        StudySettings(dataset=RGB, val_size=6_000)
    stored = s.to_dict()
    assert stored["dataset"]["shape"] == [3, 32, 32] and StudySettings.from_dict(stored) == s
    older = StudySettings().to_dict()
    del older["dataset"]
    assert StudySettings.from_dict(older).dataset == MNIST  # a study made before the data was a setting searched MNIST


def test_the_space_takes_the_datas_input_and_refuses_another():
    s = StudySettings(dataset=RGB)
    assert s.parsed_space.input == (3, 32, 32) and s.parsed_space.classes == 10
    stated = {**read_space("mnist_fcn"), "input": [1, 28, 28]}
    with pytest.raises(
        SpecError,
        match=r"search space mnist_fcn: input: is \[1, 28, 28\] but the data \(rgb.npz\) has \[3, 32, 32\]; drop input",
    ):
        StudySettings(dataset=RGB, space=stated)
    assert StudySettings(space=stated).parsed_space.input == (1, 28, 28)  # the same file on MNIST


def test_built_in_seeds_for_other_images_are_left_out_in_one_line_and_refused_when_asked_for():
    assert StudySettings().unfit_builtins() is None
    s = StudySettings(dataset=RGB)
    assert s.seed_archs == ()
    line = s.unfit_builtins()
    assert line.startswith(
        f"the built-in seed networks {BUILTINS} take 1x28x28 images in 10 classes, not rgb.npz's 3x32x32"
    )
    assert "\n" not in line
    fashion = replace(MNIST, name="fashion-mnist", sha256="cd" * 32)  # 1x28x28 in 10 classes: every built-in fits
    assert [a["name"] for a in StudySettings(dataset=fashion).seed_archs][0] == "seed_9274"
    with pytest.raises(
        SpecError,
        match=r"seed architecture seed_9274: input: is \[1, 28, 28\], "
        r"but search space mnist_fcn searches \[3, 32, 32\]",
    ):
        StudySettings(dataset=RGB, seed_archs=(arch_to_dict(load_arch("seed_9274")),))


def test_resuming_with_other_data_is_refused_naming_both():
    with pytest.raises(SettingsMismatch) as err:
        StudySettings().reconcile({"dataset": RGB}, "s")
    message = str(err.value)
    assert (
        "--dataset: the study was created with --dataset mnist "
        "(1x28x28, 10 classes, 60,000+10,000 images, SHA-256 05a957b0b09c)" in message
    )
    assert "this run asks for --dataset rgb.npz (3x32x32" in message and "\n" not in message
    StudySettings().reconcile(
        {"dataset": replace(MNIST, name="mnist.npz", path="/elsewhere/mnist.npz")}, "s"
    )  # the same arrays: the same data
