"""The shared surrogate block: ratio, PPO clip, weights, normaliser and stats, by hand."""

import math

import pytest
import torch

from reopold_agent.objectives import ObjectiveInputs
from reopold_agent.objectives.surrogate import surrogate_loss

RHO = (math.exp(0.5), math.exp(-0.5), 1.0)  # rho of the three valid tokens below


def _inputs(**fields):
    # Token 3 is invalid and holds NaN/inf in every tensor that may carry it.
    logp = torch.tensor([[0.0, 0.0, 0.0, math.nan]], requires_grad=True)
    batch = ObjectiveInputs(logprobs=logp, loss_mask=torch.tensor([[1, 1, 1, 0]]), **fields)
    valid = torch.tensor([[True, True, True, False]])
    return batch, torch.where(valid, logp, torch.zeros(())), valid


def test_clipped_weighted_loss_gradient_and_stats():
    batch, logp, valid = _inputs(old_logprobs=torch.tensor([[-0.5, 0.5, 0.0, math.inf]]),
                                 token_weights=torch.tensor([[2.0, 1.0, 1.0, 5.0]]))
    reward = torch.tensor([[1.0, -1.0, 3.0, 0.0]])
    loss, stats = surrogate_loss(batch, logp, reward, valid, valid, ratio_clip=0.2)
    # Token 0: rho 1.65 > 1.2 with A > 0 -> 1.2; token 1: rho 0.61 < 0.8 with A < 0 -> -0.8;
    # token 2: rho 1 -> 3. Weighted: 2 * 1.2 - 0.8 + 3 = 4.6 over 3 kept tokens.
    assert loss.item() == pytest.approx(-4.6 / 3, abs=1e-6)
    loss.backward()
    # Only the unclipped token has a gradient: -w * rho * A / N = -1.
    assert torch.allclose(batch.logprobs.grad, torch.tensor([[0.0, 0.0, -1.0, 0.0]]))
    assert list(stats)[0] == "objective/loss"
    floats = {k: float(v) for k, v in stats.items()}
    assert floats["objective/loss"] == pytest.approx(loss.item())
    assert floats["objective/num_valid"] == floats["objective/num_selected"] == 3
    assert floats["objective/ratio_clip_frac"] == pytest.approx(2 / 3)
    assert floats["objective/rho_mean"] == pytest.approx(sum(RHO) / 3, abs=1e-6)
    assert floats["objective/rho_max"] == pytest.approx(RHO[0], abs=1e-6)
    assert floats["objective/rho_off_frac"] == pytest.approx(2 / 3)
    assert math.isnan(floats["objective/entropy_mean"])


def test_kept_subset_and_caller_normaliser():
    batch, logp, valid = _inputs(old_logprobs=torch.tensor([[-0.5, 0.5, 0.0, math.inf]]),
                                 entropy=torch.tensor([[1.0, 2.0, 3.0, math.nan]]),
                                 normalizer=4.0)
    keep = torch.tensor([[False, True, True, False]])
    reward = torch.tensor([[1.0, -1.0, 3.0, 0.0]])
    loss, stats = surrogate_loss(batch, logp, reward, valid, keep, ratio_clip=0.2)
    assert loss.item() == pytest.approx(-(-0.8 + 3.0) / 4, abs=1e-6)
    loss.backward()
    assert torch.allclose(batch.logprobs.grad, torch.tensor([[0.0, 0.0, -0.75, 0.0]]))
    assert float(stats["objective/num_selected"]) == 2
    assert float(stats["objective/ratio_clip_frac"]) == pytest.approx(1 / 2)
    assert float(stats["objective/entropy_mean"]) == pytest.approx(2.0)


def test_on_policy_without_clip_is_rho_one_with_the_reward_gradient():
    batch, logp, valid = _inputs()
    reward = torch.tensor([[1.0, -1.0, 3.0, 0.0]])
    loss, stats = surrogate_loss(batch, logp, reward, valid, valid, ratio_clip=None)
    assert loss.item() == pytest.approx(-3.0 / 3)
    loss.backward()
    assert torch.allclose(batch.logprobs.grad, torch.tensor([[-1 / 3, 1 / 3, -1.0, 0.0]]))
    assert float(stats["objective/rho_mean"]) == 1.0
    assert float(stats["objective/ratio_clip_frac"]) == 0.0
