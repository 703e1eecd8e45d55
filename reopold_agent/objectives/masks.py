"""Token masks: valid tokens, the reward-floor mask and the entropy top-beta threshold.

Method sections 2-4. All masks are bool [B, T] and always a subset of the valid tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["valid_mask", "zero_invalid", "entropy_keep_count", "entropy_threshold"]


def valid_mask(loss_mask_BT: Tensor) -> Tensor:
    """Bool [B, T] mask of valid tokens: entries of ``loss_mask_BT`` (bool/int/float) > 0."""
    if loss_mask_BT.dtype == torch.bool:
        return loss_mask_BT
    return loss_mask_BT > 0


def zero_invalid(x_BT: Tensor, valid_BT: Tensor) -> Tensor:
    """Replaces invalid positions by 0 with ``torch.where``, before any arithmetic.

    Unlike ``x * mask``, NaN/inf at invalid positions cannot leak (NaN * 0 = NaN), and the
    gradient w.r.t. ``x_BT`` at invalid positions is exactly 0.

    Args:
        x_BT: [B, T] float tensor.
        valid_BT: [B, T] bool mask.

    Returns:
        [B, T] tensor like ``x_BT``, 0 where ``valid_BT`` is False.
    """
    return torch.where(valid_BT, x_BT, torch.zeros((), dtype=x_BT.dtype, device=x_BT.device))


def entropy_keep_count(num_valid: int, beta: float) -> int:
    """Number of tokens the top-beta entropy rule targets: ceil(beta * num_valid), >= 1.

    ``beta * num_valid`` is rounded to 9 decimals first so float noise cannot add a token
    (0.28 * 25 = 7.000000000000001 gives 7, not 8). Returns 0 when ``num_valid`` is 0.
    """
    if num_valid <= 0:
        return 0
    return max(1, math.ceil(round(beta * num_valid, 9)))


def entropy_threshold(entropy_BT: Tensor, valid_BT: Tensor, beta: float) -> Tensor:
    """Entropy threshold tau_beta that keeps the top ``beta`` fraction of valid tokens.

    With N valid tokens and k = ``entropy_keep_count(N, beta)`` = ceil(beta * N), tau_beta is
    the k-th largest valid entropy, and the keep rule is ``entropy >= tau_beta``. Ties at
    tau_beta are all kept, so more than k tokens can be selected when entropies repeat; with
    distinct entropies exactly k are. beta = 1 keeps every valid token.

    For a threshold over a larger batch than one micro-batch (or across ranks), gather the
    entropies and masks first and call this once; pass the result as ``entropy_threshold``.

    Args:
        entropy_BT: [B, T] (or any shape) float entropies; values at invalid positions are
            ignored and may be NaN; valid values must be finite.
        valid_BT: same shape, bool/int/float mask, > 0 on valid tokens.
        beta: fraction in (0, 1].

    Returns:
        0-dim tensor (``entropy_BT``'s dtype and device); +inf when there is no valid token,
        so that nothing is selected.

    Raises:
        ValueError: if ``beta`` is outside (0, 1] or the shapes differ.
    """
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")
    if entropy_BT.shape != valid_BT.shape:
        raise ValueError(f"entropy shape {tuple(entropy_BT.shape)} != mask shape "
                         f"{tuple(valid_BT.shape)}")
    values_N = entropy_BT.detach()[valid_mask(valid_BT)]
    k = entropy_keep_count(values_N.numel(), beta)
    if k == 0:
        return torch.tensor(math.inf, dtype=entropy_BT.dtype, device=entropy_BT.device)
    # k-th largest == (N - k + 1)-th smallest.
    return torch.kthvalue(values_N, values_N.numel() - k + 1).values
