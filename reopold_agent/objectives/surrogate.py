"""Importance-weighted surrogate shared by the objectives: ratio, PPO clip, reduction, stats.

:func:`surrogate_loss` is the whole block every ratio-weighted objective runs (REOPOLD, RKL,
GRPO); the pieces it is built from are public for objectives that need only some of them.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from .diagnostics import token_stats
from .inputs import Gather, LossScope, ObjectiveInputs
from .masks import valid_mask, zero_invalid

__all__ = ["policy_ratio", "clipped_surrogate", "masked_loss", "surrogate_loss", "valid_token_scope"]


def policy_ratio(logp_BT: Tensor, old_logp_BT: Tensor) -> Tensor:
    """rho = exp(logp - old_logp), [B, T]; differentiable through ``logp_BT`` only.

    Inputs must already be finite at every position (see ``masks.zero_invalid``).
    """
    return torch.exp(logp_BT - old_logp_BT.detach())


def clipped_surrogate(rho_BT: Tensor, adv_BT: Tensor,
                      ratio_clip: float | None) -> tuple[Tensor, Tensor]:
    """Per-token surrogate objective (to maximise), optionally PPO-clipped.

    Args:
        rho_BT: [B, T] importance ratio pi_theta / pi_old.
        adv_BT: [B, T] per-token advantage/reward (may carry a gradient: vanilla RKL).
        ratio_clip: None for ``rho * A``; eps for the pessimistic
            ``min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)``.

    Returns:
        ``(objective_BT, clipped_BT)``: the per-token objective and a bool mask of positions
        where the clipped branch is active and flat in rho (rho > 1 + eps with A > 0, or
        rho < 1 - eps with A < 0); all False when ``ratio_clip`` is None.
    """
    unclipped = rho_BT * adv_BT
    if ratio_clip is None:
        return unclipped, torch.zeros_like(rho_BT, dtype=torch.bool)
    clipped = rho_BT.clamp(1.0 - ratio_clip, 1.0 + ratio_clip) * adv_BT
    with torch.no_grad():
        active = ((rho_BT > 1.0 + ratio_clip) & (adv_BT > 0)) | (
            (rho_BT < 1.0 - ratio_clip) & (adv_BT < 0))
    return torch.minimum(unclipped, clipped), active


def masked_loss(objective_BT: Tensor, keep_BT: Tensor,
                normalizer: float | Tensor | None, weights_BT: Tensor | None = None) -> Tensor:
    """Loss = -sum(weight * objective over kept tokens) / normaliser (method section 4).

    Args:
        objective_BT: [B, T] per-token objective; values at dropped positions are ignored
            (``torch.where``, so NaN there cannot leak into the loss or the gradient).
        keep_BT: [B, T] bool mask M.
        normalizer: denominator from the caller (number or 0-dim tensor); None uses
            ``max(sum(M), 1)``.
        weights_BT: [B, T] per-token weights (detached; truncated importance sampling of the
            sampler/trainer mismatch), or None for 1. They leave the normaliser unchanged.

    Returns:
        0-dim loss, attached to the graph even when no token is kept (then exactly 0 with
        zero gradients).
    """
    if weights_BT is not None:
        objective_BT = objective_BT * weights_BT.detach().to(objective_BT.dtype)
    kept = torch.where(keep_BT, objective_BT, torch.zeros((), dtype=objective_BT.dtype,
                                                          device=objective_BT.device))
    if normalizer is None:
        denom = keep_BT.sum().clamp_min(1).to(objective_BT.dtype)
    elif isinstance(normalizer, numbers.Real):
        denom = float(normalizer)
    else:
        denom = normalizer.detach().to(objective_BT.dtype)
    return -(kept.sum() / denom)


def surrogate_loss(batch: ObjectiveInputs, logp_BT: Tensor, reward_BT: Tensor, valid_BT: Tensor,
                   keep_BT: Tensor, ratio_clip: float | None) -> tuple[Tensor, dict[str, Tensor | float]]:
    """Loss = -sum over kept tokens of w * min(rho * A, clip(rho) * A) / N, and the shared stats.

    rho = exp(logp - old_logp) with ``batch.old_logprobs`` (``logp_BT`` when None: on-policy),
    w = ``batch.token_weights`` and N = ``batch.normalizer`` (``max(sum(keep), 1)`` when None).

    Args:
        batch: the objective's inputs; reads ``old_logprobs``, ``entropy`` (stats only),
            ``normalizer`` and ``token_weights``.
        logp_BT: [B, T] log pi_theta, already 0 at invalid positions; carries the gradient.
        reward_BT: [B, T] per-token reward or advantage A, finite everywhere (a gradient through
            it flows into the loss, as vanilla RKL wants).
        valid_BT: [B, T] bool valid tokens.
        keep_BT: [B, T] bool tokens in the loss, a subset of ``valid_BT``.
        ratio_clip: None for ``rho * A``; eps for the pessimistic PPO clip.

    Returns:
        ``(loss, stats)``: the 0-dim loss and ``objective/loss`` followed by
        :func:`~.diagnostics.token_stats` (0-dim tensors or floats; pass the objective's full
        dict through ``to_floats``).
    """
    old_BT = logp_BT if batch.old_logprobs is None else zero_invalid(batch.old_logprobs, valid_BT)
    rho_BT = policy_ratio(logp_BT, old_BT)
    objective_BT, clipped_BT = clipped_surrogate(rho_BT, reward_BT, ratio_clip)
    loss = masked_loss(objective_BT, keep_BT, batch.normalizer, batch.token_weights)
    with torch.no_grad():
        entropy_BT = None if batch.entropy is None else zero_invalid(batch.entropy, valid_BT)
        stats = {"objective/loss": loss.detach(),
                 **token_stats(valid_BT, keep_BT, rho_BT, clipped_BT, entropy_BT)}
    return loss, stats


def valid_token_scope(batch: ObjectiveInputs, gather: Gather) -> LossScope:
    """The scope of an objective that keeps every valid token: normaliser = the number of valid
    tokens of ``batch`` over all processes (``gather``), at least 1; no entropy threshold."""
    count = gather(valid_mask(batch.loss_mask).sum().reshape(1).float()).sum()
    return LossScope(entropy_threshold=None, normalizer=max(float(count), 1.0))
