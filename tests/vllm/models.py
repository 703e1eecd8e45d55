"""Tiny students whose head size vLLM's CPU attention accepts (32), saved for vLLM to load."""

from __future__ import annotations

from pathlib import Path

from reopold_agent.demo.tiny_models import TinyLMSpec, build_causal_lm, save_tiny

HEAD_DIM_32 = TinyLMSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, num_kv_heads=1)
"""hidden 64 in 2 heads of 32 (one key/value head)."""
HEAD_DIM_16 = TinyLMSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)
"""The same width in 4 heads of 16, which vLLM's CPU attention refuses."""


def save_student(tokenizer, path: Path, spec: TinyLMSpec = HEAD_DIM_32, seed: int = 0):
    """Build a random tiny student, save it to ``path``; returns the model (fp32, eval mode)."""
    model = build_causal_lm(tokenizer, spec, seed=seed)
    save_tiny(model, tokenizer, path)
    return model
