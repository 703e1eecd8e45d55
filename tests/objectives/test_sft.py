"""SFT baseline: mean negative log-likelihood over valid tokens."""

import math

import pytest
import torch

from reopold_agent.objectives import ObjectiveInputs, SftConfig, sft_objective

F64 = torch.float64


def test_sft_value_gradient_and_stats():
    # Valid logp [-1, -2, -0.5]; masked -inf. loss = 3.5 / 3; dL/dlogp = -1/3 on valid tokens.
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -math.inf]], dtype=F64, requires_grad=True)
    batch = ObjectiveInputs(logprobs=logp, loss_mask=torch.tensor([[1, 1], [1, 0]]))
    loss, stats = sft_objective(batch, step=0, config=SftConfig())
    assert loss.item() == pytest.approx(3.5 / 3, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1 / 3, -1 / 3], [-1 / 3, 0.0]],
                                                       dtype=F64), atol=1e-12, rtol=0)
    assert stats["objective/nll_mean"] == pytest.approx(3.5 / 3, abs=1e-12)
    assert stats["objective/num_valid"] == 3.0 and stats["objective/rho_mean"] == 1.0


def test_sft_normalizer_override():
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    batch = ObjectiveInputs(logprobs=logp, loss_mask=torch.ones(1, 2), normalizer=6.0)
    loss, _ = sft_objective(batch, step=0, config=SftConfig())
    assert loss.item() == pytest.approx(0.5, abs=1e-12)  # 3 / 6
