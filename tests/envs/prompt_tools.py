"""Tool functions and a verifier that the prompt-dataset tests name as ``module:function``."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    """Add two integers.

    Longer notes that stay out of the tool's description.
    """
    return a + b


def repeat(text: str, times: int = 2, *, separator: str = " ") -> str:
    """Repeat a text."""
    return separator.join([text] * times)


def lenient(item: dict, text: str) -> float:
    """Partial credit: 0.75 when the item's answer appears anywhere in the reply, else 0.25."""
    return 0.75 if item["answer"] and item["answer"] in text else 0.25


TOOLS = [add, repeat]
