"""GRPO baseline: group advantages and the clipped surrogate, with hand-derived values."""

import math

import pytest
import torch

from reopold_agent.objectives import GrpoConfig, ObjectiveInputs, group_advantages, grpo_objective

F64 = torch.float64


def test_group_advantages_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    # Group 0: mean 0.5, Bessel std sqrt(4 * 0.25 / 3) = 1/sqrt(3); (+-0.5) / (1/sqrt(3) + eps).
    # Group 1: all equal -> 0 / (0 + eps) = 0.
    adv = group_advantages(rewards, eps=1e-6)
    a = 0.5 / (1 / math.sqrt(3) + 1e-6)
    expected = torch.tensor([[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(adv, expected, atol=1e-12, rtol=0)
    centered = group_advantages(rewards, normalize_std=False)
    torch.testing.assert_close(centered, rewards - torch.tensor([[0.5], [1.0]], dtype=F64),
                               atol=0, rtol=0)


def test_group_advantages_bad_shapes():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"\[P, G\]"):
        group_advantages(torch.ones(3))
    assert group_advantages(torch.ones(3, 1), normalize_std=False).abs().sum() == 0


def test_grpo_clipped_surrogate_value_gradient_and_stats():
    # Valid: (0,0) rho=e^.5, A=+1 -> min(1.6487, 1.2) = 1.2 (clipped, no gradient)
    #        (0,1) rho=1,    A=+1 -> 1                 (gradient -rho A / N = -1/3)
    #        (1,0) rho=e^-.5, A=-1 -> min(-.6065, -.8) = -0.8 (clipped, no gradient)
    # (1,1) is masked (NaN). loss = -(1.2 + 1 - 0.8) / 3 = -1.4 / 3.
    logp = torch.tensor([[-1.0, -2.0], [-1.0, math.nan]], dtype=F64, requires_grad=True)
    old = logp.detach() - torch.tensor([[0.5, 0.0], [-0.5, 0.0]], dtype=F64)
    batch = ObjectiveInputs(logprobs=logp, old_logprobs=old,
                            loss_mask=torch.tensor([[True, True], [True, False]]),
                            advantages=torch.tensor([1.0, -1.0], dtype=F64))
    loss, stats = grpo_objective(batch, step=0, config=GrpoConfig())
    assert loss.item() == pytest.approx(-1.4 / 3, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1 / 3], [0.0, 0.0]], dtype=F64),
                               atol=1e-12, rtol=0)
    assert stats["objective/ratio_clip_frac"] == pytest.approx(2 / 3, abs=1e-12)
    assert stats["objective/advantage_mean"] == pytest.approx(1 / 3, abs=1e-12)  # (1+1-1)/3
    assert math.isnan(stats["objective/entropy_mean"])  # no entropy given


def test_grpo_needs_advantages_and_its_config():
    batch = ObjectiveInputs(logprobs=torch.zeros(1, 2), loss_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="advantages"):
        grpo_objective(batch, step=0, config=GrpoConfig())
    with pytest.raises(ValueError, match="GrpoConfig.ratio_clip"):
        GrpoConfig(ratio_clip=None)
