"""Collectives the trainer needs beyond the engine's gradient synchronisation.

REOPOLD's entropy threshold and loss normaliser are taken over all processes' tokens, whose
counts differ between processes. :func:`gather_values` concatenates such ragged 1-D tensors in
rank order. The tensors handed to the collective live on the accelerator's device (NCCL accepts
nothing else), and each process's length travels first, so padding is cut off by position: any
value, NaN and infinities included, arrives unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def gather_values(values: Tensor, accelerator: Any) -> Tensor:
    """All processes' ``values`` concatenated in rank order, on ``values``' own device.

    Args:
        values: [N] this process's values (N may differ between processes, 0 included).
        accelerator: an ``accelerate.Accelerator`` (its ``device``, ``num_processes`` and
            ``gather``).

    Returns:
        [sum of N over processes] tensor of ``values``' dtype.
    """
    if values.dim() != 1:
        raise ValueError(f"gather_values takes a 1-D tensor, got shape {tuple(values.shape)}")
    if accelerator.num_processes == 1:
        return values
    device = accelerator.device
    counts_W = accelerator.gather(torch.tensor([values.numel()], dtype=torch.long, device=device))
    counts = counts_W.tolist()
    width = max(counts)
    if width == 0:
        return values
    padded_N = torch.zeros(width, dtype=values.dtype, device=device)
    padded_N[: values.numel()] = values.to(device)
    gathered_WN = accelerator.gather(padded_N).reshape(len(counts), width)
    return torch.cat([gathered_WN[rank, :count] for rank, count in enumerate(counts)]).to(values.device)


class EngineUpdate:
    """The collectives one policy update needs, through the engine that wrapped the scorer.

    ``backward``, ``clip_gradients``, ``gather`` and ``no_sync`` are handed to
    :func:`~reopold_agent.policy_update.policy_update`. Gradients are synchronised by the
    engine (DDP averages them over processes in the backward of the wrapped scorer); nothing
    here touches a gradient by hand.

    Args:
        accelerator: the run's ``accelerate.Accelerator``.
        scorer: the student's :class:`~reopold_agent.sequence_scoring.SequenceScorer` as
            ``accelerator.prepare`` returned it.
    """

    def __init__(self, accelerator: Any, scorer: Any) -> None:
        self.accelerator = accelerator
        self.scorer = scorer
        self.world = accelerator.num_processes

    def backward(self, loss: Tensor) -> None:
        """Backward through the engine. Each process's loss is already divided by the token
        count of all processes, so the step's gradient is the sum over processes; the engine
        averages (DDP divides by the number of processes), hence the factor."""
        self.accelerator.backward(loss * self.world)

    def clip_gradients(self, max_norm: float) -> Tensor:
        """Clip the synchronised gradients to ``max_norm``; returns their norm before clipping.

        FSDP's gradients are shards (``DTensor``): their norm is reduced over all processes here
        rather than by ``accelerator.clip_grad_norm_``, which finds the model by comparing
        parameter lists with ``==`` and fails once a second model (a sharded teacher) is prepared.
        """
        from torch.distributed.tensor import DTensor

        params = [p for p in self.scorer.parameters() if p.grad is not None]
        if not any(isinstance(p.grad, DTensor) for p in params):
            return self.accelerator.clip_grad_norm_(self.scorer.parameters(), max_norm)
        from torch.nn.utils import clip_grads_with_norm_, get_total_norm

        norm = get_total_norm([p.grad for p in params])
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        clip_grads_with_norm_(params, max_norm, norm)
        return norm

    def gather(self, values: Tensor) -> Tensor:
        """:func:`gather_values` over this run's processes."""
        return gather_values(values, self.accelerator)

    def no_sync(self) -> Any:
        """A context in which the scorer's backward accumulates without synchronising."""
        return self.accelerator.no_sync(self.scorer)
