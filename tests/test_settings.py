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
    with pytest.raises(SettingsMismatch, match=r"--max-activation-kb: the study was created with --max-activation-kb 2.5, this run asks for 3.0"):
        StudySettings(max_activation_kb=2.5).reconcile({"max_activation_kb": 3.0}, "s")
