"""Shared tiny tokenizer and models for tests (built offline, cached per session)."""

from __future__ import annotations

import functools

from reopold_agent.tiny_models import build_causal_lm, build_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Use python."},
    {"role": "user", "content": "What is 37*245?"},
    {"role": "assistant", "content": '<tool_call>\n{"name": "python", "arguments": {"code": "print(37*245)"}}\n</tool_call>'},
    {"role": "tool", "name": "python", "content": "9065"},
    {"role": "assistant", "content": "\\boxed{9065}"},
]


@functools.lru_cache(maxsize=None)
def tokenizer():
    return build_tokenizer([str(CONVERSATION)] * 4, vocab_size=300)


def model(spec: str = "nano", seed: int = 0):
    return build_causal_lm(tokenizer(), spec, seed=seed)
