"""GRPO baseline: outcome reward, group-normalised advantage, PPO-clipped surrogate.

Method section 5. Choices (GRPO variants differ; these are the defaults here):

- advantage A_pg = (r_pg - mean_g r_pg) / (std_g r_pg + eps), std with Bessel's correction
  (``torch.std``), as common GRPO code does; ``normalize_std=False`` keeps r - mean only;
- token-level normaliser: the loss is averaged over all valid tokens of the batch (as in
  DAPO), not per sequence then per group as in the original GRPO paper;
- no KL-to-reference term and no entropy bonus.
"""

from __future__ import annotations

from torch import Tensor

from .config import GrpoConfig
from .diagnostics import masked_mean, to_floats
from .inputs import ObjectiveInputs
from .masks import valid_mask, zero_invalid
from .surrogate import surrogate_loss

__all__ = ["group_advantages", "grpo_objective"]


def group_advantages(rewards_PG: Tensor, normalize_std: bool = True,
                     eps: float = 1e-6) -> Tensor:
    """Group-normalised outcome advantages.

    Args:
        rewards_PG: [P, G] outcome reward of rollout g of prompt p.
        normalize_std: divide by the group's (Bessel-corrected) std + ``eps``.
        eps: added to the std; a group with equal rewards gets advantage 0.

    Returns:
        [P, G] advantages, same dtype. Flatten (``reshape(-1)``) for per-sequence [B] inputs.

    Raises:
        ValueError: if ``rewards_PG`` is not 2-D, or G < 2 with ``normalize_std``.
    """
    if rewards_PG.dim() != 2:
        raise ValueError(f"rewards_PG must be [P, G], got shape {tuple(rewards_PG.shape)}")
    centered_PG = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centered_PG
    if rewards_PG.shape[1] < 2:
        raise ValueError("group_advantages needs G >= 2 rollouts per prompt to normalise by std")
    return centered_PG / (rewards_PG.std(dim=1, keepdim=True) + eps)


def grpo_objective(batch: ObjectiveInputs, *, step: int,
                   config: GrpoConfig) -> tuple[Tensor, dict[str, float]]:
    """PPO-clipped surrogate with a per-sequence advantage broadcast to its valid tokens.

    L = -sum_t min(rho_t * A_b, clip(rho_t, 1 - eps, 1 + eps) * A_b) / N over valid tokens,
    N = number of valid tokens (>= 1) or ``normalizer``.

    Args:
        batch: needs ``logprobs`` [B, T], ``loss_mask`` [B, T] and ``advantages`` [B]
            (e.g. ``group_advantages(...).reshape(-1)``); ``old_logprobs`` None = on-policy.
        step: unused (uniform signature).
        config: ratio clip eps.

    Returns:
        ``(loss, stats)``; stats: objective/loss, num_valid, num_selected, selected_ratio,
        ratio_clip_frac, rho_mean, entropy_mean, advantage_mean (over valid tokens).
    """
    del step
    if not isinstance(config, GrpoConfig):
        raise TypeError(f"objective 'grpo' needs a GrpoConfig, got {type(config).__name__}")
    valid_BT = valid_mask(batch.loss_mask)
    adv_B = batch.require("advantages", "grpo").detach()
    adv_BT = zero_invalid(adv_B.unsqueeze(1).expand_as(batch.logprobs), valid_BT)
    logp_BT = zero_invalid(batch.logprobs, valid_BT)
    loss, stats = surrogate_loss(batch, logp_BT, adv_BT, valid_BT, valid_BT, config.ratio_clip)
    stats["objective/advantage_mean"] = masked_mean(adv_BT, valid_BT)
    return loss, to_floats(stats)
