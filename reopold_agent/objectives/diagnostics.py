"""Detached diagnostics shared by the objectives, returned as plain Python floats.

Conventions: means/fractions over an empty set are 0.0 (check ``objective/num_valid``);
statistics of an input that was not given (e.g. entropy) are NaN; percentiles are
nearest-rank on the sorted values, index ``floor(q * (n - 1) + 0.5)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["masked_mean", "nearest_rank_percentiles", "token_stats", "to_floats"]

PERCENTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))


def masked_mean(x_BT: Tensor, keep_BT: Tensor) -> Tensor:
    """Mean of ``x_BT`` over ``keep_BT`` (0-dim, detached); 0 when nothing is kept."""
    x = torch.where(keep_BT, x_BT.detach(), torch.zeros((), dtype=x_BT.dtype, device=x_BT.device))
    return x.sum() / keep_BT.sum().clamp_min(1)


def nearest_rank_percentiles(values_N: Tensor, prefix: str) -> dict[str, Tensor | float]:
    """p10/p50/p90 of a 1-D tensor (nearest rank); 0.0 each when it is empty."""
    n = values_N.numel()
    if n == 0:
        return {f"{prefix}_{name}": 0.0 for name, _ in PERCENTILES}
    sorted_N = torch.sort(values_N.detach()).values
    return {f"{prefix}_{name}": sorted_N[math.floor(q * (n - 1) + 0.5)]
            for name, q in PERCENTILES}


RHO_BAND = 0.2
"""|rho - 1| beyond which a token counts as stale in ``objective/rho_off_frac`` (PPO's usual eps)."""


def token_stats(valid_BT: Tensor, keep_BT: Tensor, rho_BT: Tensor, clipped_BT: Tensor,
                entropy_BT: Tensor | None) -> dict[str, Tensor | float]:
    """Counts and ratios every objective reports.

    Args:
        valid_BT: [B, T] bool valid tokens.
        keep_BT: [B, T] bool tokens in the loss (subset of valid).
        rho_BT: [B, T] importance ratio (finite everywhere).
        clipped_BT: [B, T] bool PPO-clip-active tokens.
        entropy_BT: [B, T] entropy (finite at valid positions) or None.

    Returns:
        ``objective/num_valid``, ``num_selected``, ``selected_ratio`` (selected / valid),
        ``ratio_clip_frac`` (clip-active / selected), ``rho_mean``, ``rho_max`` and
        ``rho_off_frac`` (share with |rho - 1| > :data:`RHO_BAND`), all over valid tokens, so
        staleness across the optimiser steps of a rollout batch shows whether or not ratio
        clipping is on, and ``entropy_mean`` (over valid; NaN when no entropy was given).
    """
    num_valid = valid_BT.sum(dtype=torch.float64)
    num_sel = keep_BT.sum(dtype=torch.float64)
    rho_max = torch.where(valid_BT, rho_BT.detach(), torch.full_like(rho_BT, -math.inf)).max()
    return {
        "objective/num_valid": num_valid,
        "objective/num_selected": num_sel,
        "objective/selected_ratio": num_sel / num_valid.clamp_min(1),
        "objective/ratio_clip_frac": ((clipped_BT & keep_BT).sum(dtype=torch.float64)
                                      / num_sel.clamp_min(1)),
        "objective/rho_mean": masked_mean(rho_BT, valid_BT),
        "objective/rho_max": torch.where(valid_BT.any(), rho_max, torch.ones_like(rho_max)),
        "objective/rho_off_frac": masked_mean(((rho_BT.detach() - 1).abs() > RHO_BAND).to(rho_BT.dtype), valid_BT),
        "objective/entropy_mean": (math.nan if entropy_BT is None
                                   else masked_mean(entropy_BT, valid_BT)),
    }


def to_floats(stats: dict[str, Tensor | float]) -> dict[str, float | Tensor]:
    """Converts 0-dim tensors to Python floats with a single device sync, keeping key order.

    Token values under ``*_values`` (1-D, for percentiles over a whole step: see
    :mod:`reopold_agent.step_stats`) stay tensors, detached."""
    keys = [k for k, v in stats.items() if isinstance(v, Tensor) and not k.endswith("_values")]
    values = (torch.stack([stats[k].detach().to(torch.float64).reshape(()) for k in keys])
              .tolist() if keys else [])
    converted = dict(zip(keys, values))
    return {k: v.detach() if k.endswith("_values") else float(converted.get(k, v)) for k, v in stats.items()}
