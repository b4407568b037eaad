import pytest

from nas.errors import SpecError
from nas.settings import SettingsMismatch, StudySettings


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
    with pytest.raises(SettingsMismatch, match=r"--max-activation-kb: the study was created with --max-activation-kb 2.5; this run asks for --max-activation-kb 3.0"):
        StudySettings(max_activation_kb=2.5).reconcile({"max_activation_kb": 3.0}, "s")


def test_every_disagreeing_flag_is_named_at_once():
    with pytest.raises(SettingsMismatch) as err:
        StudySettings(max_epochs=1).reconcile({"max_params": 5000, "seed": 0, "max_epochs": 3}, "s")
    assert "--max-params, --max-epochs:" in str(err.value) and "--max-params 20000, --max-epochs 1;" in str(err.value)
    assert "--max-params 5000, --max-epochs 3." in str(err.value) and "--seed" not in str(err.value)


def test_a_budget_no_architecture_of_the_space_meets_is_refused():
    """The default space's smallest network has 200 parameters (nas.space.cheapest); 150 would
    prune every trial before training."""
    with pytest.raises(SpecError, match=r"--max-params 150: no architecture of search space mnist_fcn is within this limit \(its smallest: parameters 200\)"):
        StudySettings(max_params=150).check_reachable()
    StudySettings(max_params=200).check_reachable()
    with pytest.raises(SpecError, match=r"--max-activation-kb 1: .* \(its smallest: peak int8 activations 1,460 B\)"):
        StudySettings(max_macs=10_000, max_activation_kb=1.0).check_reachable()
