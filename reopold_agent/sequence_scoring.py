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


LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config fields of model families whose forward changes the logits after the head (Gemma 2/3
soft-capping, Cohere and Granite scaling); the chunked scoring here applies the head only."""
_NEUTRAL = {"final_logit_softcapping": (None, 0, 0.0), "logit_scale": (None, 1, 1.0),
            "logits_scaling": (None, 1, 1.0)}


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """Split a ``*ForCausalLM`` / ``*ForConditionalGeneration`` into (backbone, lm_head).

    Raises:
        ValueError: the model has no separate head, or its config transforms the logits after
            the head (:data:`LOGIT_TRANSFORMS`), which scoring through backbone and head would
            silently leave out.
    """
    configs = [getattr(model, "config", None)]
    configs.append(getattr(configs[0], "text_config", None))
    for config in filter(None, configs):
        for name in LOGIT_TRANSFORMS:
            value = getattr(config, name, None)
            if value not in _NEUTRAL[name]:
                raise ValueError(f"{type(model).__name__} transforms its logits after the head ({name}={value}); "
                                 "scoring through backbone and head would leave that out, so such models are not "
                                 "supported")
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


class SequenceScorer(torch.nn.Module):
    """A causal LM whose ``forward`` is :func:`sequence_logprobs`: the module an engine wraps.

    DDP synchronises gradients and FSDP gathers shards from hooks on the wrapped module's
    ``forward``; the chunked scoring calls the backbone and the head's weight directly, so it
    must run inside that forward. ``accelerator.prepare(SequenceScorer(student))`` gives the
    wrapped scorer; the student's own parameters are the scorer's (``scorer.model``).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        backbone_and_head(model)  # refuse unsupported models before any engine wraps them
        self.model = model
        # FSDP's automatic wrapping policy reads the layer classes from the wrapped module
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, input_ids_BT: Tensor, attention_mask_BT: Tensor, *, with_entropy: bool = False,
                chunk_rows: int = 1024, extra_inputs: dict[str, Any] | None = None) -> tuple[Tensor, Tensor | None]:
        """:func:`sequence_logprobs` of ``self.model`` (same arguments and returns)."""
        return sequence_logprobs(self.model, input_ids_BT, attention_mask_BT, with_entropy=with_entropy,
                                 chunk_rows=chunk_rows, extra_inputs=extra_inputs)


def as_scorer(model: Any) -> Any:
    """``model`` itself when it is a :class:`SequenceScorer` (bare or wrapped by an engine, whose
    ``module`` is one), else a new scorer around the causal LM ``model``."""
    if isinstance(model, SequenceScorer) or isinstance(getattr(model, "module", None), SequenceScorer):
        return model
    return SequenceScorer(model)
