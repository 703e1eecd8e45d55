"""Gymnasium spaces for text actions and chat-message observations.

``gymnasium.spaces.Text`` enumerates an explicit charset (alphanumerics by default), which
cannot describe model output; these two spaces check types and lengths instead and sample
small random values for smoke tests.
"""

from __future__ import annotations

from typing import Any

import gymnasium

ROLES = ("system", "user", "assistant", "tool")
PART_TYPES = ("text", "image")
_SAMPLE_ALPHABET = list('abcXYZ019 \n<>{}[]"\\:/_-.,é中→\t') + ["<tool_call>", "</tool_call>"]


class TextSpace(gymnasium.Space[str]):
    """Any ``str`` of at most ``max_length`` characters (the assistant's text for one turn)."""

    def __init__(self, max_length: int = 32_000, seed: int | None = None) -> None:
        """Args:
            max_length: longest accepted string, in characters.
            seed: seed of the space's own sampler.
        """
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_length = max_length

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask: Any | None = None, probability: Any | None = None) -> str:
        """A short random string mixing plain text, unicode and tool-call tags."""
        n = int(self.np_random.integers(0, min(48, self.max_length) + 1))
        picks = self.np_random.integers(0, len(_SAMPLE_ALPHABET), size=n)
        return "".join(_SAMPLE_ALPHABET[i] for i in picks)[: self.max_length]

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextSpace) and other.max_length == self.max_length


def _part_ok(part: Any) -> bool:
    if not isinstance(part, dict) or part.get("type") not in PART_TYPES:
        return False
    return isinstance(part.get("text"), str) if part["type"] == "text" else "image" in part


def is_message(message: Any) -> bool:
    """Whether ``message`` is a chat message: a known role and str or list-of-parts content."""
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        return False
    content = message.get("content")
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(_part_ok(p) for p in content)


class MessagesSpace(gymnasium.Space[list]):
    """Lists of chat messages ``{"role", "content": str | [parts]}`` (parts: text, image)."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(is_message(m) for m in x)

    def sample(self, mask: Any | None = None, probability: Any | None = None) -> list:
        """One user message with random text."""
        return [{"role": "user", "content": TextSpace(64, seed=int(
            self.np_random.integers(2**31))).sample()}]

    def __repr__(self) -> str:
        return "MessagesSpace()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MessagesSpace)
