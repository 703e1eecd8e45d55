"""The behaviour policy when another engine sampled: recompute pi_old, measure and correct the gap.

A backend such as vLLM runs its own copy of the student with its own kernels (and, on a GPU,
its own precision and batch shapes), so the log-probs it reports for the tokens it sampled are
not exactly those the trainer's model gives the same tokens, and it reports no entropy. Before
the update the trainer therefore runs its own model once over the rollout batch, without
gradient and vocabulary-chunked (:func:`recompute_behaviour`), as verl does:

* pi_old (the ``old_logprobs`` of the ratio rho = pi_theta / pi_old) becomes the trainer's own
  log-prob, so the first update of a batch starts at rho = 1 exactly;
* the entropy REOPOLD's refinement mask ranks is the trainer's;
* :func:`mismatch_stats` logs how far the sampler was from the trainer on the sampled tokens;
* optionally (``objective.tis_cap``), truncated importance sampling re-weights each token's
  loss term by ``min(pi_trainer_old / pi_sampler, cap)`` (:func:`truncated_is_weights`), which
  corrects the expectation for tokens that were sampled from pi_sampler rather than pi_old.
  The weights are detached and leave masks and normaliser as they are; the cap bounds their
  variance. This is the token-level "TIS" of verl and of the "off-policy RL" note cited there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .batching import TrainBatch
from .sequence_scoring import as_scorer
from .shared_prefix import first_scored_positions, prefix_order
from .trajectory import Trajectory

RATIO_BAND = (0.5, 2.0)
"""A token whose ratio pi_trainer / pi_sampler leaves this band counts as badly mismatched."""


@torch.no_grad()
def recompute_behaviour(model: Any, batch: TrainBatch, *, micro_batch_rows: int, chunk_rows: int,
                        device: torch.device | str) -> tuple[Tensor, Tensor]:
    """The trainer's log-prob and entropy at every position of ``batch``, without gradient.

    Args:
        model: the student as it was when the batch was sampled (before the update): a causal LM or
            its :class:`~reopold_agent.sequence_scoring.SequenceScorer` as the engine wrapped it.
        batch: [B, T] rollout batch (text only).
        micro_batch_rows: rows per forward pass.
        chunk_rows: rows of the vocabulary projection computed at once.
        device: where the model runs.

    Returns:
        logp_BT, entropy_BT: [B, T] float32 on the CPU; column 0 holds 0.

    Rows of one prompt go through the same forward where they fit, so that a scorer with
    ``shared_prefix`` on encodes their prompt once.
    """
    if batch.pixel_inputs is not None:
        raise ValueError("recomputing the behaviour policy is implemented for text batches only")
    scorer = as_scorer(model)
    was_training = model.training
    model.eval()
    logp_out = torch.zeros_like(batch.old_logprobs_BT)
    ent_out = torch.zeros_like(batch.old_logprobs_BT)
    try:
        firsts_B = first_scored_positions(batch.valid_BT)
        for rows in prefix_order(batch.input_ids_BT, firsts_B).split(micro_batch_rows):
            micro = batch.select(rows).to(device)
            logp_BT, ent_BT = scorer(micro.input_ids_BT, micro.attention_mask_BT, with_entropy=True,
                                     chunk_rows=chunk_rows, first_scored_B=firsts_B[rows].to(device))
            logp_out[rows, : logp_BT.shape[1]] = logp_BT.float().cpu()
            ent_out[rows, : ent_BT.shape[1]] = ent_BT.float().cpu()
    finally:
        model.train(was_training)
    return logp_out, ent_out


def mismatch_stats(log_ratio: Tensor, tis_cap: float | None = None) -> dict[str, float]:
    """Per-step mismatch figures from log(pi_trainer / pi_sampler) of every model token (1-D).

    Returns ``mismatch/logp_abs_diff_mean`` and ``..._max`` (|log pi_trainer - log pi_sampler|)
    and ``mismatch/ratio_outside_frac``, the fraction of tokens whose ratio leaves
    :data:`RATIO_BAND`; with ``tis_cap`` also ``mismatch/tis_weight_mean`` (mean truncated
    weight) and ``mismatch/tis_truncated_frac`` (share of tokens whose ratio exceeds the cap).
    An empty batch gives zero gaps and weight 1.
    """
    diff = log_ratio.double()
    empty = diff.numel() == 0
    low, high = (math.log(b) for b in RATIO_BAND)
    stats = {
        "mismatch/logp_abs_diff_mean": 0.0 if empty else float(diff.abs().mean()),
        "mismatch/logp_abs_diff_max": 0.0 if empty else float(diff.abs().max()),
        "mismatch/ratio_outside_frac": 0.0 if empty else float(((diff < low) | (diff > high)).double().mean()),
    }
    if tis_cap is not None:
        ratio = diff.exp()
        stats["mismatch/tis_weight_mean"] = 1.0 if empty else float(ratio.clamp(max=tis_cap).mean())
        stats["mismatch/tis_truncated_frac"] = 0.0 if empty else float((ratio > tis_cap).double().mean())
    return stats


def truncated_is_weights(trainer_logp_BT: Tensor, sampler_logp_BT: Tensor, valid_BT: Tensor,
                         cap: float) -> Tensor:
    """[B, T] float32 token weights ``min(pi_trainer / pi_sampler, cap)`` on valid tokens, 1 elsewhere."""
    if not cap > 0:
        raise ValueError(f"the truncation cap must be > 0, got {cap}")
    ratio_BT = torch.exp((trainer_logp_BT - sampler_logp_BT).double())
    return torch.where(valid_BT, ratio_BT.clamp(max=cap), torch.ones_like(ratio_BT)).float()


def record_recomputed(trajectories: list[Trajectory], batch: TrainBatch, logp_BT: Tensor, entropy_BT: Tensor) -> None:
    """Write the trainer's log-probs and entropies into the trajectories (model tokens only)."""
    logp, ent = logp_BT.tolist(), entropy_BT.tolist()
    for b, index in enumerate(batch.traj_index_B.tolist()):
        traj = trajectories[index]
        valid = batch.valid_BT[b].tolist()
        n = traj.num_tokens
        traj.trainer_logprobs = [logp[b][t] if valid[t] else None for t in range(n)]
        traj.entropy = [ent[b][t] if valid[t] else None for t in range(n)]
