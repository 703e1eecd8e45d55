"""Shared tiny tokenizer and models for tests (built offline, cached per session)."""

from __future__ import annotations

import functools

from reopold_agent.demo.tiny_models import build_causal_lm, build_tokenizer

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


VL_PIXELS = 56 * 56
"""Tiny VL tests resize every image to 56x56: a 4x4 patch grid, 4 image tokens."""


def vl_model(seed: int = 0, spec: str = "nano"):
    """A tiny random Qwen2.5-VL model on the shared tokenizer."""
    from reopold_agent.demo.tiny_vl import build_tiny_vl

    return build_tiny_vl(tokenizer(), spec, seed=seed)


def vl_vision(model, min_pixels: int = VL_PIXELS, max_pixels: int = VL_PIXELS):
    """The VisionProcessor of a tiny VL model (the real Qwen2-VL image processor)."""
    from reopold_agent.vision import VisionProcessor
    from reopold_agent.demo.tiny_vl import build_tiny_processor

    processor = build_tiny_processor(tokenizer(), min_pixels=min_pixels, max_pixels=max_pixels)
    return VisionProcessor.for_model(model.config, processor.image_processor, min_pixels=min_pixels,
                                     max_pixels=max_pixels)


def vl_checkpoint(path, seed: int = 0, spec: str = "nano"):
    """Save a tiny VL model with its processor to ``path`` (loadable with from_pretrained)."""
    from reopold_agent.demo.tiny_models import save_tiny
    from reopold_agent.demo.tiny_vl import build_tiny_processor

    processor = build_tiny_processor(tokenizer(), min_pixels=VL_PIXELS, max_pixels=VL_PIXELS)
    return save_tiny(vl_model(seed, spec), processor, path)


def save_tool_math_models(root):
    """A nano student and a micro teacher with the tool_math task tokenizer, saved under
    ``root/student`` and ``root/teacher``; returns the two paths."""
    from reopold_agent.demo.embedded import gold_conversations, task_tokenizer

    tok = task_tokenizer(gold_conversations("tool_math", count=40))
    for name, spec, seed in (("student", "nano", 0), ("teacher", "micro", 1)):
        build_causal_lm(tok, spec, seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "student", root / "teacher"
