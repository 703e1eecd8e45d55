"""REOPOLD surrogate loss: stop-gradient RKL with reward floor, entropy selection and schedule.

Implements method sections 1-4:

    R_t = log pi_T(o_t) - log pi_theta(o_t),  R_hat_t = max(sg(R_t), c),  c = log(lam) / (1 - lam)
    rho_t = exp(log pi_theta(o_t) - log pi_old(o_t))
    L = -sum_t rho_t * R_hat_t * M_t / max(sum_t M_t, 1)
    exploration (step < switch_step):  M_t = valid_t & (R_old_t >= c),  R_old_t = log pi_T - log pi_old
    refinement  (step >= switch_step): M_t = valid_t & (H_t >= tau_beta)

Choices the paper leaves open, and what this module does (the caller decides the rest):

- Entropy source (pi_old or pi_theta) and temperature: ``entropy`` is an input. Recommended:
  the entropy of pi_old from the same pass that produced ``old_logprobs`` (at the rollout
  temperature, 1.0), since it is then known for the whole batch before any micro-batch runs.
- Batch for tau_beta and the normaliser: by default the batch passed in (``max(sum M, 1)``).
  For one threshold and normaliser over a larger scope (a mini-batch or a whole step, on all
  processes), :func:`reopold_loss_scope` computes both before any micro-batch runs; passed as
  ``entropy_threshold=`` and ``normalizer=``, the micro-batch losses sum to the scope's loss.
- Exploration mask under several updates per rollout batch: the paper writes M_t = 1[R_t >= c]
  with R under pi_theta, which moves during the updates of one rollout batch while the
  normaliser must be fixed before the first micro-batch runs. Here the exploration mask uses the
  behaviour reward R_old = log pi_T - log pi_old (from ``old_logprobs``; pi_theta when they are
  None), so the mask and its normaliser are fixed per rollout batch like a PPO advantage, and
  ``selected_token_count`` is exact on every update. On the first (on-policy) update R_old = R,
  the paper's mask. The reward that enters the loss is still max(sg(R_t), c) under pi_theta.
- PPO ratio clipping: off by default (``ReopoldConfig.ratio_clip``); the pessimistic form.

Departure in form, not in value: in exploration the code also floors R (max(sg(R), c)); it
changes nothing because every selected token already has sg(R) >= c.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .config import ReopoldConfig
from . import masks
from .diagnostics import masked_mean, nearest_rank_percentiles, to_floats
from .inputs import Gather, LossScope, ObjectiveInputs
from .masks import valid_mask, zero_invalid
from .surrogate import surrogate_loss

__all__ = ["reopold_objective", "reopold_keep_mask", "selected_token_count", "reopold_loss_scope"]


def _check_config(config: object) -> ReopoldConfig:
    if not isinstance(config, ReopoldConfig):
        raise TypeError(f"objective 'reopold' needs a ReopoldConfig, got {type(config).__name__}")
    return config


def _rewards(batch: ObjectiveInputs, valid_BT: Tensor) -> tuple[Tensor, Tensor]:
    """Sanitised logprobs (attached) and detached rewards sg(R), both 0 at invalid positions."""
    logp_BT = zero_invalid(batch.logprobs, valid_BT)
    teacher_BT = zero_invalid(batch.require("teacher_logprobs", "reopold"), valid_BT)
    return logp_BT, (teacher_BT.detach() - logp_BT.detach())


def _keep_mask(batch: ObjectiveInputs, valid_BT: Tensor, reward_BT: Tensor, step: int,
               config: ReopoldConfig) -> tuple[Tensor, Tensor | None]:
    """The phase's token mask M and, in refinement, the entropy threshold used."""
    if not config.is_refinement(step):
        if batch.old_logprobs is not None:  # the behaviour reward R_old (module docstring)
            teacher_BT = zero_invalid(batch.teacher_logprobs, valid_BT)
            reward_BT = teacher_BT.detach() - zero_invalid(batch.old_logprobs, valid_BT).detach()
        return valid_BT & (reward_BT >= config.floor), None
    entropy_BT = zero_invalid(batch.require("entropy", "reopold (refinement phase)"), valid_BT)
    tau = batch.entropy_threshold
    if tau is None:
        tau = masks.entropy_threshold(entropy_BT, valid_BT, config.beta)
    tau = torch.as_tensor(tau, dtype=entropy_BT.dtype, device=entropy_BT.device)
    return valid_BT & (entropy_BT.detach() >= tau), tau


def reopold_keep_mask(batch: ObjectiveInputs, *, step: int, config: ReopoldConfig) -> Tensor:
    """Bool [B, T] token mask M of the phase at ``step`` (method section 4).

    Uses ``teacher_logprobs`` and ``old_logprobs`` (``logprobs`` when None) for R_old in
    exploration, ``entropy`` and ``entropy_threshold`` in refinement, and ``loss_mask``. No
    gradient.
    """
    config = _check_config(config)
    valid_BT = valid_mask(batch.loss_mask)
    with torch.no_grad():
        _, reward_BT = _rewards(batch, valid_BT)
        return _keep_mask(batch, valid_BT, reward_BT, step, config)[0]


def selected_token_count(batch: ObjectiveInputs, *, step: int, config: ReopoldConfig) -> Tensor:
    """Number of tokens REOPOLD selects in ``batch`` (0-dim int64 tensor, not clamped).

    Call it on the whole mini-batch (after fixing ``entropy_threshold`` over it), all-reduce
    across ranks if needed, clamp to >= 1 and pass the result as ``normalizer`` to each
    micro-batch's loss.
    """
    return reopold_keep_mask(batch, step=step, config=config).sum()


def reopold_loss_scope(batch: ObjectiveInputs, *, step: int, config: ReopoldConfig,
                       gather: Gather) -> LossScope:
    """REOPOLD's selection over a scope: tau_beta and the selected-token normaliser.

    In refinement, tau_beta is the top-beta threshold over the valid entropies of ``batch`` on
    all processes (``gather`` concatenates them), so every process selects with the same value;
    the normaliser is the number of tokens selected with it on all processes, at least 1. In
    exploration there is no threshold and the normaliser counts the floor-mask tokens.

    Args:
        batch: the scope's [B, T] tensors: ``loss_mask``, ``teacher_logprobs``,
            ``old_logprobs`` (exploration) and ``entropy`` (refinement); ``logprobs`` is not read
            for the selection when ``old_logprobs`` is given.
        step: 0-based training step.
        config: REOPOLD hyper-parameters.
        gather: concatenates a 1-D tensor across processes.
    """
    config = _check_config(config)
    tau = None
    if config.is_refinement(step):
        valid_BT = valid_mask(batch.loss_mask)
        entropy_N = gather(batch.require("entropy", "reopold (refinement phase)")[valid_BT].float())
        tau = masks.entropy_threshold(entropy_N[None, :], torch.ones_like(entropy_N[None, :], dtype=torch.bool),
                                      config.beta)
        batch = dataclasses.replace(batch, entropy_threshold=tau)
    count = gather(selected_token_count(batch, step=step, config=config).reshape(1).float()).sum()
    return LossScope(entropy_threshold=tau, normalizer=max(float(count), 1.0))


def reopold_objective(batch: ObjectiveInputs, *, step: int,
                      config: ReopoldConfig) -> tuple[Tensor, dict[str, float]]:
    """REOPOLD surrogate loss (method sections 1-4) on one (micro-)batch.

    Args:
        batch: [B, T] tensors; needs ``logprobs``, ``teacher_logprobs``, ``loss_mask``, and
            ``entropy`` in refinement. Invalid positions (loss_mask <= 0) get exactly zero
            gradient and their values, NaN/inf included, never reach loss or gradient.
        step: 0-based training step (one rollout batch); refinement when ``step >= config.switch_step``.
        config: REOPOLD hyper-parameters.

    Returns:
        ``(loss, stats)``: 0-dim loss (exactly 0, zero gradients, still attached, when no token
        is selected) and float diagnostics under ``objective/``: loss, phase (0 explore,
        1 refine), num_valid, num_selected, selected_ratio, below_floor_frac, ratio_clip_frac,
        reward_mean/p10/p50/p90 (sg(R) over valid tokens), entropy_mean, rho_mean,
        entropy_threshold (NaN in exploration).

    Raises:
        TypeError: if ``config`` is not a ReopoldConfig.
        ValueError: if a tensor the phase needs is missing.
    """
    config = _check_config(config)
    valid_BT = valid_mask(batch.loss_mask)
    logp_BT, reward_BT = _rewards(batch, valid_BT)
    keep_BT, tau = _keep_mask(batch, valid_BT, reward_BT, step, config)
    reward_hat_BT = reward_BT.clamp_min(config.floor)
    loss, shared = surrogate_loss(batch, logp_BT, reward_hat_BT, valid_BT, keep_BT, config.ratio_clip)
    with torch.no_grad():
        stats = {
            **shared,
            "objective/phase": float(config.is_refinement(step)),
            "objective/below_floor_frac": masked_mean(
                (reward_BT < config.floor).to(reward_BT.dtype), valid_BT),
            "objective/reward_mean": masked_mean(reward_BT, valid_BT),
            **nearest_rank_percentiles(reward_BT[valid_BT], "objective/reward"),
            "objective/reward_values": reward_BT.detach()[valid_BT],
            "objective/entropy_threshold": float("nan") if tau is None else tau,
        }
    return loss, to_floats(stats)
