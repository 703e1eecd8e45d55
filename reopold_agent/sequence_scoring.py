"""Per-token log-probs (and entropy) of whole sequences under a causal LM, vocabulary-chunked.

The model's backbone runs once; its hidden states are projected onto the vocabulary a chunk of
rows at a time by :mod:`reopold_agent.token_stats`, so no ``[B, T, V]`` fp32 tensor exists.
Outputs are aligned with the input tokens: position ``t`` holds ``log p(token_t | tokens_<t)``;
position 0 has no prefix and holds 0 (callers mask it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .token_stats import hidden_logprobs_and_entropy


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """Split a ``*ForCausalLM`` / ``*ForConditionalGeneration`` into (backbone, lm_head)."""
    head = model.get_output_embeddings()
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if head is None or backbone is None or backbone is model:
        raise ValueError(f"{type(model).__name__} has no separate backbone and lm_head to score with")
    return backbone, head


def sequence_logprobs(
    model: Any,
    input_ids_BT: Tensor,
    attention_mask_BT: Tensor,
    *,
    with_entropy: bool = False,
    chunk_rows: int = 1024,
    extra_inputs: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of every token given its prefix, and optionally the next-token entropy.

    Args:
        model: causal LM; gradients flow if called outside ``torch.no_grad``.
        input_ids_BT: [B, T] token ids (right padding allowed).
        attention_mask_BT: [B, T] 1 on real tokens.
        with_entropy: also return the full-vocabulary entropy (detached) at each position.
        chunk_rows: rows of the ``[B*T, V]`` projection computed at once.
        extra_inputs: further backbone inputs (e.g. ``pixel_values``, ``image_grid_thw``).

    Returns:
        logp_BT: [B, T] float32, ``logp_BT[:, t] = log p(ids[:, t] | ids[:, :t])``; column 0 is 0.
        entropy_BT: [B, T] float32 entropy of the distribution that predicted token t, or None.
    """
    backbone, head = backbone_and_head(model)
    hidden_BTH = backbone(
        input_ids=input_ids_BT, attention_mask=attention_mask_BT, use_cache=False, **(extra_inputs or {})
    ).last_hidden_state
    logp, ent = hidden_logprobs_and_entropy(
        hidden_BTH[:, :-1],
        head.weight,
        input_ids_BT[:, 1:],
        lm_head_bias=getattr(head, "bias", None),
        chunk_rows=chunk_rows,
        with_entropy=with_entropy,
    )
    zeros = torch.zeros_like(logp[:, :1])
    logp_BT = torch.cat([zeros, logp.float()], dim=1)
    ent_BT = torch.cat([zeros, ent.float()], dim=1) if ent is not None else None
    return logp_BT, ent_BT
