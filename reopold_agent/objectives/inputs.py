"""The tensors every objective reads (``ObjectiveInputs``), and the values a caller fixes over
a larger scope than one micro-batch (``LossScope``)."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["ObjectiveInputs", "LossScope", "Gather"]

Gather = Callable[[Tensor], Tensor]
"""Concatenates a 1-D tensor across processes (the identity in a single process)."""

_TOKEN_FIELDS = ("old_logprobs", "teacher_logprobs", "entropy", "loss_mask", "token_weights")


@dataclass(frozen=True, kw_only=True)
class ObjectiveInputs:
    """One (micro-)batch of per-token tensors handed from the trainer to an objective.

    Attributes:
        logprobs: [B, T] float, log pi_theta(o_t) of the sampled tokens; carries the gradient.
        loss_mask: [B, T] bool/int/float, > 0 on valid (student-generated) tokens; prompt,
            padding and tool-output positions are 0 and may hold any value, NaN/inf included,
            in every other tensor.
        old_logprobs: [B, T] float, log pi_old(o_t) from the rollout policy; None means
            on-policy (``logprobs.detach()``, so rho = 1 with a gradient).
        teacher_logprobs: [B, T] float, log pi_T(o_t) from the frozen teacher (reopold, rkl*).
        entropy: [B, T] float, student next-token entropy in nats (refinement mask, stats);
            the caller decides whether it comes from pi_old or pi_theta.
        advantages: [B] float, per-sequence outcome advantage (grpo only).
        entropy_threshold: scalar tau_beta computed by the caller over a larger batch (see
            ``entropy_threshold``); None lets reopold compute it over this batch.
        normalizer: loss denominator computed by the caller over a larger batch (see
            ``selected_token_count``); None uses this batch's selected-token count (>= 1).
        token_weights: [B, T] float, detached weights multiplying each token's term of the
            loss (truncated importance sampling when another engine sampled the tokens), or
            None for 1. Masks and the normaliser do not change.
    """

    logprobs: Tensor
    loss_mask: Tensor
    old_logprobs: Tensor | None = None
    teacher_logprobs: Tensor | None = None
    entropy: Tensor | None = None
    advantages: Tensor | None = None
    entropy_threshold: float | Tensor | None = None
    normalizer: float | Tensor | None = None
    token_weights: Tensor | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.logprobs.shape)
        if len(shape) != 2:
            raise ValueError(f"ObjectiveInputs.logprobs must be [B, T], got shape {shape}")
        for name in _TOKEN_FIELDS:
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"ObjectiveInputs.{name} has shape {tuple(value.shape)}, "
                                 f"expected {shape} like logprobs")
        if self.advantages is not None and tuple(self.advantages.shape) != shape[:1]:
            raise ValueError(f"ObjectiveInputs.advantages has shape "
                             f"{tuple(self.advantages.shape)}, expected ({shape[0]},)")
        norm = self.normalizer
        if isinstance(norm, numbers.Real) and not norm > 0:
            raise ValueError(f"ObjectiveInputs.normalizer must be > 0, got {norm!r}")

    def require(self, name: str, objective: str) -> Tensor:
        """Returns field ``name``, raising a ValueError naming ``objective`` if it is None."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"objective {objective!r} needs ObjectiveInputs.{name}, got None")
        return value


@dataclass(frozen=True)
class LossScope:
    """Values fixed over a scope of tokens (a mini-batch or a whole step, over all processes)
    before any micro-batch runs, so the micro-batch losses sum to the scope's loss.

    Pass them to every micro-batch as ``ObjectiveInputs.entropy_threshold`` and ``.normalizer``.

    Attributes:
        entropy_threshold: 0-dim tau_beta over the scope (REOPOLD's refinement phase), or None.
        normalizer: the scope's loss denominator: its selected-token count, at least 1.
    """

    entropy_threshold: Tensor | None
    normalizer: float
