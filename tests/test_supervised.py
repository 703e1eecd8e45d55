"""Supervised fine-tuning: loss only on assistant tokens, schedules, and stopping part-way."""

from __future__ import annotations

import pytest
import torch

from reopold_agent.supervised import SupervisedConfig, supervised_train, tokenize_conversation
from tests import tiny


def _examples():
    return [tokenize_conversation(tiny.tokenizer(), tiny.CONVERSATION)] * 2


def test_stop_after_runs_the_first_steps_of_the_longer_schedule():
    """A model stopped after k of n steps equals the first k steps of the n-step run."""
    steps_seen = []
    full, part = tiny.model(seed=3), tiny.model(seed=3)
    config = SupervisedConfig(steps=6, batch_size=2, lr=1e-3, warmup_steps=2)
    part_config = SupervisedConfig(steps=6, batch_size=2, lr=1e-3, warmup_steps=2, stop_after=3)
    supervised_train(part, _examples(), part_config, pad_token_id=0, on_step=lambda s, l: steps_seen.append(s))
    assert steps_seen == [0, 1, 2]
    snapshots = []
    supervised_train(full, _examples(), config, pad_token_id=0,
                     on_step=lambda s, l: snapshots.append({k: v.clone() for k, v in full.state_dict().items()})
                     if s == 2 else None)
    for key, value in part.state_dict().items():
        torch.testing.assert_close(value, snapshots[0][key], rtol=0, atol=0)


def test_bad_stop_after_is_refused():
    with pytest.raises(ValueError, match="stop_after"):
        SupervisedConfig(steps=5, stop_after=6)


def test_only_assistant_tokens_are_marked():
    example = _examples()[0]
    text = tiny.tokenizer().decode([t for t, m in zip(example.input_ids, example.assistant_mask) if m])
    assert "print(37*245)" in text and "\\boxed{9065}" in text
    assert "What is 37*245?" not in text and "<tool_response>" not in text


def test_a_restored_run_replays_the_same_steps():
    """snapshot/restore brings back weights, optimiser, schedule and batch order exactly."""
    from reopold_agent.supervised import SupervisedRun

    config = SupervisedConfig(steps=8, batch_size=2, lr=1e-3, warmup_steps=2)
    run = SupervisedRun(tiny.model(seed=4), _examples(), config, pad_token_id=0)
    run.advance(2)
    saved = run.snapshot()
    run.advance(3)
    after = {k: v.clone() for k, v in run.model.state_dict().items()}
    run.restore(saved)
    assert run.step == 2
    assert any(not torch.equal(after[k], v) for k, v in run.model.state_dict().items())
    run.advance(3)
    assert run.step == 5
    for k, v in run.model.state_dict().items():
        assert torch.equal(after[k], v), k
