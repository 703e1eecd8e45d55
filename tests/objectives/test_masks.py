"""Entropy threshold: top-beta counts, rounding, ties, invalid tokens."""

import math

import pytest
import torch

from reopold_agent.objectives import entropy_keep_count, entropy_threshold


def _kept(entropy, mask, beta):
    tau = entropy_threshold(entropy, mask, beta)
    return int(((entropy >= tau) & (mask > 0)).sum()), tau


@pytest.mark.parametrize("beta, kept", [(0.2, 2), (0.25, 3), (0.7, 7), (1.0, 10), (0.01, 1)])
def test_top_beta_counts_with_distinct_entropies(beta, kept):
    # 10 distinct valid entropies 0..9 (shuffled, shape [2, 5]); ceil(beta * 10) are kept.
    entropy = torch.tensor([[3.0, 9.0, 0.0, 5.0, 1.0], [8.0, 2.0, 7.0, 4.0, 6.0]])
    count, tau = _kept(entropy, torch.ones(2, 5), beta)
    assert count == kept == entropy_keep_count(10, beta)
    assert tau.item() == 10 - kept  # the kept-th largest value


def test_float_noise_does_not_add_a_token():
    assert 0.28 * 25 > 7  # 7.000000000000001
    assert entropy_keep_count(25, 0.28) == 7 and entropy_keep_count(100, 0.07) == 7
    assert entropy_keep_count(3, 0.2) == 1 and entropy_keep_count(0, 0.2) == 0


def test_invalid_tokens_are_ignored_and_may_be_nan():
    entropy = torch.tensor([[0.5, math.nan, 100.0, 2.0]])
    mask = torch.tensor([[True, False, False, True]])
    count, tau = _kept(entropy, mask, 0.5)  # valid [0.5, 2.0] -> keep 1 -> tau 2.0
    assert tau.item() == 2.0 and count == 1


def test_ties_at_threshold_are_all_kept():
    entropy = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    count, tau = _kept(entropy, torch.ones(1, 4), 0.25)  # k = 1 but three tie at tau = 1
    assert tau.item() == 1.0 and count == 3


def test_no_valid_token_gives_inf_and_bad_beta_raises():
    assert entropy_threshold(torch.ones(2, 2), torch.zeros(2, 2), 0.2).item() == math.inf
    with pytest.raises(ValueError, match="beta"):
        entropy_threshold(torch.ones(2, 2), torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="beta"):
        entropy_threshold(torch.ones(2, 2), torch.ones(2, 2), 1.5)
