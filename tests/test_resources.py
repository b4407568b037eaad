from dataclasses import fields

import pytest
from conftest import SEED

from nas.arch.budgets import NAMES, RESOURCES, constraints, resource, trial_attrs, violations
from nas.arch.spec import arch_to_json, costs, load_arch
from nas.study.settings import StudySettings

SEED_COSTS = costs(load_arch(SEED))


def test_every_resource_has_a_setting_a_flag_and_an_attribute():
    settings = {f.name: f.default for f in fields(StudySettings)}
    assert NAMES == ("params", "macs", "activation", "model-bytes")
    assert [r.flag for r in RESOURCES] == ["--max-params", "--max-macs", "--max-activation-kb", "--max-model-kb"]
    for r in RESOURCES:
        assert r.setting in settings
    assert [settings[r.setting] for r in RESOURCES] == [20_000, None, None, None]
    assert set(trial_attrs(SEED_COSTS)) == {r.attr for r in RESOURCES} | {"activation_fp32_bytes", "model_fp32_bytes"}
    assert trial_attrs(SEED_COSTS)["macs"] == 1_217_160 and trial_attrs(SEED_COSTS)["activation_int8_bytes"] == 9_408


def test_violations_name_resource_value_and_limit_in_bytes():
    settings = StudySettings(max_params=10_000, max_macs=1_000_000, max_activation_kb=2.5, max_model_kb=20)
    found = violations(SEED_COSTS, settings)
    assert [(v.resource.name, v.value, v.limit) for v in found] == [
        ("macs", 1_217_160, 1_000_000),
        ("activation", 9_408, 2_500),
    ]
    assert [str(v) for v in found] == ["MACs 1,217,160 > 1,000,000", "peak int8 activations 9,408 B > 2,500 B"]
    assert violations(SEED_COSTS, StudySettings()) == []


def test_constraints_carry_the_same_keys_on_valid_and_invalid_trials():
    settings = StudySettings(max_macs=2_434_320, max_activation_kb=4.704)
    valid, invalid = constraints(SEED_COSTS, settings), constraints(None, settings)
    assert list(valid) == list(invalid) == ["valid", "params", "macs", "activation"]  # unlimited model bytes: no key
    assert valid["valid"] == 0.0 and invalid["valid"] == 1.0
    assert valid["params"] == pytest.approx(9_274 / 20_000 - 1) and valid["macs"] == pytest.approx(-0.5)
    assert valid["activation"] == pytest.approx(1.0)  # twice the limit: infeasible, in relative units
    assert all(v == 0.0 for k, v in invalid.items() if k != "valid")


def test_value_is_computed_for_trials_recorded_before_the_resource():
    old = {"params": 9_274, "arch": arch_to_json(load_arch(SEED))}
    assert resource("macs").value(old) == 1_217_160
    assert resource("model-bytes").value(old) == SEED_COSTS.model_int8
    assert resource("macs").value({"macs": 5}) == 5
