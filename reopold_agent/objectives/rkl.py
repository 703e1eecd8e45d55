"""Reverse-KL on-policy distillation baselines: vanilla RKL and RKL + stop-gradient.

Method sections 1 and 5. Over valid tokens, with R_t = log pi_T(o_t) - log pi_theta(o_t) and
rho_t = exp(log pi_theta(o_t) - log pi_old(o_t)):

- ``rkl``:    L = -sum_t rho_t * R_t / N, gradient through rho and R
  (d L / d logp_t = -rho_t * (R_t - 1) / N without ratio clipping);
- ``rkl_sg``: L = -sum_t rho_t * sg(R_t) / N, gradient through rho only
  (d L / d logp_t = -rho_t * R_t / N). Remark 3.1: same expected gradient, lower variance.

N = number of valid tokens (at least 1), or ``normalizer``. No floor, no token selection.
Optional PPO ratio clipping (``RklConfig.ratio_clip``), off by default.

What "same expected gradient" means here: with on-policy samples both estimators have the
expectation sum_t E_ctx[grad log pi(o_t|ctx) R_t], the gradient of the per-token reverse KL
with the context distribution held fixed. That is the full sequence-level gradient of
-KL(pi_theta || pi_T) only for one-token sequences; for longer ones it omits the credit an early
token gets for later rewards (E[grad log pi(o_1) R_2]), as REOPOLD's per-token reward does too.
``tests/objectives/test_rkl.py`` checks all three statements exactly by enumeration.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import RklConfig
from .diagnostics import masked_mean, nearest_rank_percentiles, to_floats
from .inputs import ObjectiveInputs
from .masks import valid_mask, zero_invalid
from .surrogate import surrogate_loss

__all__ = ["rkl_objective", "rkl_sg_objective"]


def _rkl(batch: ObjectiveInputs, config: RklConfig, name: str,
         stop_gradient: bool) -> tuple[Tensor, dict[str, float]]:
    if not isinstance(config, RklConfig):
        raise TypeError(f"objective {name!r} needs an RklConfig, got {type(config).__name__}")
    valid_BT = valid_mask(batch.loss_mask)
    logp_BT = zero_invalid(batch.logprobs, valid_BT)
    teacher_BT = zero_invalid(batch.require("teacher_logprobs", name), valid_BT).detach()
    reward_BT = teacher_BT - logp_BT
    if stop_gradient:
        reward_BT = reward_BT.detach()
    loss, stats = surrogate_loss(batch, logp_BT, reward_BT, valid_BT, valid_BT, config.ratio_clip)
    with torch.no_grad():
        stats["objective/reward_mean"] = masked_mean(reward_BT, valid_BT)
        stats.update(nearest_rank_percentiles(reward_BT.detach()[valid_BT], "objective/reward"))
        stats["objective/reward_values"] = reward_BT.detach()[valid_BT]
    return loss, to_floats(stats)


def rkl_objective(batch: ObjectiveInputs, *, step: int,
                  config: RklConfig) -> tuple[Tensor, dict[str, float]]:
    """Vanilla reverse-KL surrogate -sum(rho * R) / N, gradient also through R.

    Args:
        batch: [B, T] tensors; needs ``logprobs``, ``teacher_logprobs``, ``loss_mask``
            (``old_logprobs`` None = on-policy). Invalid positions get exactly zero gradient.
        step: unused (uniform signature).
        config: ratio clipping.

    Returns:
        ``(loss, stats)``; stats: objective/loss, num_valid, num_selected, selected_ratio,
        ratio_clip_frac, rho_mean, entropy_mean, reward_mean/p10/p50/p90 (over valid tokens).
    """
    del step
    return _rkl(batch, config, "rkl", stop_gradient=False)


def rkl_sg_objective(batch: ObjectiveInputs, *, step: int,
                     config: RklConfig) -> tuple[Tensor, dict[str, float]]:
    """Stop-gradient reverse-KL surrogate -sum(rho * sg(R)) / N (Remark 3.1).

    Args and Returns as ``rkl_objective``.
    """
    del step
    return _rkl(batch, config, "rkl_sg", stop_gradient=True)
