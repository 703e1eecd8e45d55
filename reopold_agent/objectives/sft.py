"""SFT baseline: token cross-entropy on teacher-generated tokens (method section 5).

L = -sum_t logp_t * M_t / N, M = valid tokens (the teacher's response tokens), N = number of
valid tokens (>= 1) or ``normalizer``. Rollouts are the teacher's; ``logprobs`` are the
student's log-probabilities of those tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import SftConfig
from .diagnostics import masked_mean, to_floats, token_stats
from .inputs import ObjectiveInputs
from .masks import valid_mask, zero_invalid
from .surrogate import masked_loss

__all__ = ["sft_objective"]


def sft_objective(batch: ObjectiveInputs, *, step: int,
                  config: SftConfig) -> tuple[Tensor, dict[str, float]]:
    """Mean negative log-likelihood of the valid tokens.

    Args:
        batch: needs ``logprobs`` [B, T] and ``loss_mask`` [B, T]; the other fields are
            ignored except ``entropy`` (stats) and ``normalizer``.
        step: unused (uniform signature).
        config: an SftConfig (no hyper-parameters).

    Returns:
        ``(loss, stats)``; stats: objective/loss, num_valid, num_selected, selected_ratio,
        ratio_clip_frac (0), rho_mean (1), entropy_mean, nll_mean (over valid tokens).
    """
    del step
    if not isinstance(config, SftConfig):
        raise TypeError(f"objective 'sft' needs an SftConfig, got {type(config).__name__}")
    valid_BT = valid_mask(batch.loss_mask)
    logp_BT = zero_invalid(batch.logprobs, valid_BT)
    loss = masked_loss(logp_BT, valid_BT, batch.normalizer, batch.token_weights)
    with torch.no_grad():
        entropy_BT = None if batch.entropy is None else zero_invalid(batch.entropy, valid_BT)
        ones_BT = torch.ones_like(logp_BT)
        stats = {
            "objective/loss": loss.detach(),
            **token_stats(valid_BT, valid_BT, ones_BT, torch.zeros_like(valid_BT), entropy_BT),
            "objective/nll_mean": masked_mean(-logp_BT, valid_BT),
        }
    return loss, to_floats(stats)
