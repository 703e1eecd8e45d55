"""Learning-rate multiplier: linear warm-up, then constant or cosine decay (the trainer's use: test_train_e2e)."""

from __future__ import annotations

import math

import pytest

from reopold_agent.lr_schedule import lr_multiplier
from reopold_agent.train_config import TrainLoopConfig


def test_warmup_rises_linearly_then_constant_stays_at_one():
    assert [lr_multiplier(s, warmup_steps=4, total_steps=10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_multiplier(0, warmup_steps=0, total_steps=10) == 1.0


def test_cosine_falls_to_the_final_ratio_at_the_last_step_and_stays():
    def f(s):
        return lr_multiplier(s, warmup_steps=2, total_steps=12, decay="cosine", final_ratio=0.2)

    assert f(1) == 1.0 and f(2) == 1.0
    assert math.isclose(f(7), 0.6)  # half-way: (1 + 0.2) / 2
    assert math.isclose(f(12), 0.2) and math.isclose(f(50), 0.2)
    assert all(f(s) > f(s + 1) for s in range(2, 12))


def test_bad_schedule_settings_are_named():
    with pytest.raises(ValueError, match="unknown lr decay 'linear'"):
        lr_multiplier(5, warmup_steps=0, total_steps=10, decay="linear")
    with pytest.raises(ValueError, match="final_lr_ratio"):
        TrainLoopConfig(final_lr_ratio=1.5)
