"""Objective configs: defaults, the floor, and validation messages naming the bad field."""

import dataclasses
import math

import pytest

from reopold_agent.objectives import GrpoConfig, ReopoldConfig, RklConfig


def test_defaults_and_floor():
    config = ReopoldConfig()
    assert (config.lam, config.beta, config.switch_step, config.ratio_clip) == (0.3, 0.2, 100, None)
    assert config.floor == pytest.approx(-1.7200, abs=5e-5)
    assert config.floor == math.log(0.3) / (1 - 0.3)
    assert ReopoldConfig(lam=0.5).floor == pytest.approx(2 * math.log(0.5), abs=1e-15)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lam = 0.4


@pytest.mark.parametrize("field, value", [
    ("lam", 0.0), ("lam", 1.0), ("lam", -0.3), ("lam", 1.5), ("lam", math.nan), ("lam", "0.3"),
    ("beta", 0.0), ("beta", 1.01), ("beta", -0.2),
    ("switch_step", -1), ("switch_step", 2.5), ("switch_step", True),
    ("ratio_clip", 0.0), ("ratio_clip", 1.0), ("ratio_clip", -0.2),
])
def test_reopold_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=rf"ReopoldConfig\.{field}"):
        ReopoldConfig(**{field: value})


def test_edge_values_accepted():
    ReopoldConfig(lam=1e-6, beta=1.0, switch_step=0, ratio_clip=0.2)
    RklConfig(ratio_clip=0.28)
    GrpoConfig(ratio_clip=0.1)


def test_baseline_configs_validate():
    with pytest.raises(ValueError, match=r"RklConfig\.ratio_clip"):
        RklConfig(ratio_clip=1.5)
    with pytest.raises(ValueError, match=r"GrpoConfig\.ratio_clip"):
        GrpoConfig(ratio_clip=0.0)
