"""A causal LM split into its backbone and its head, for scoring without full logits.

Scoring runs the backbone and projects its hidden states onto the vocabulary chunk by chunk
(:mod:`reopold_agent.token_stats`), so it must know where the head is, and refuse models whose
forward changes the logits after the head.
"""

from __future__ import annotations

from typing import Any

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
