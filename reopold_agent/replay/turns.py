"""An episode split into turns: messages, tool calls with their outputs, images, token spans.

Turn 0 is the opening prompt (system and user messages). Assistant turn k (k >= 1) holds the
k-th assistant message and the tool messages it caused, and the tokens with ``turn == k``. The
tool calls of an assistant message are parsed with
:func:`reopold_agent.tool_protocol.parse_tool_calls`; the environment answers every parsed call
or error with one tool message, in order, so the i-th entry pairs with the i-th tool message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..tool_protocol import ToolCallError, parse_tool_calls
from ..trajectory import Trajectory


@dataclass
class ImageView:
    """An image of the episode as the replay can show it."""

    path: Path | None
    """Resolved file path, or None when only the size was recorded."""
    size: tuple[int, int] | None
    """(width, height) in pixels when known."""
    token_span: tuple[int, int] | None = None

    def describe(self) -> str:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "size unknown"
        where = str(self.path) if self.path is not None else "not stored"
        exists = "" if self.path is None or self.path.exists() else " (file missing)"
        return f"[image {size}: {where}{exists}]"


@dataclass
class ToolCallView:
    """One tool call attempt of an assistant turn with its recorded answer."""

    turn: int
    index: int
    """Position among the turn's calls and errors."""
    name: str | None
    arguments: dict[str, Any] | None
    """Decoded arguments; None for a malformed call."""
    error: str | None
    """Parse error kind for a malformed call."""
    output: str | None
    """Text of the tool message that answered it (None if none was recorded)."""


@dataclass
class TurnView:
    """One turn of the episode."""

    index: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    token_start: int = 0
    token_end: int = 0
    """Tokens ``token_start:token_end`` have this turn index."""
    tool_calls: list[ToolCallView] = field(default_factory=list)
    images: list[ImageView] = field(default_factory=list)
    num_model_tokens: int = 0


def message_text(message: dict[str, Any]) -> str:
    """A message's content as text; image parts become ``[image WxH]`` notes."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else str(content)
    parts = []
    for part in content:
        if not isinstance(part, dict):
            parts.append(str(part))
        elif part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif part.get("type") == "image":
            parts.append(_image_from_part(part, None).describe())
    return "\n".join(parts)


def build_turns(traj: Trajectory, run_dir: Path | None) -> list[TurnView]:
    """Split ``traj`` into :class:`TurnView` records (turn 0 first)."""
    count = max([*traj.turn, 0]) + 1
    turns = [TurnView(k) for k in range(count)]
    current = 0
    for message in traj.messages:
        if message.get("role") == "assistant":
            current += 1
            while current >= len(turns):
                turns.append(TurnView(len(turns)))
        turns[current].messages.append(message)
    for k, turn in enumerate(turns):
        idx = [t for t, v in enumerate(traj.turn) if v == k]
        turn.token_start, turn.token_end = (idx[0], idx[-1] + 1) if idx else (0, 0)
        turn.num_model_tokens = sum(traj.loss_mask[t] for t in idx)
        turn.tool_calls = _tool_calls(k, turn.messages)
        turn.images = _images(traj, turn, run_dir)
    return turns


def _tool_calls(k: int, messages: list[dict[str, Any]]) -> list[ToolCallView]:
    assistant = next((m for m in messages if m.get("role") == "assistant"), None)
    if assistant is None:
        return []
    parsed = parse_tool_calls(message_text(assistant))
    outputs = [m for m in messages if m.get("role") == "tool"]
    views = []
    for i, entry in enumerate(parsed.in_order()):
        out = message_text(outputs[i]) if i < len(outputs) else None
        if isinstance(entry, ToolCallError):
            views.append(ToolCallView(k, i, entry.name, None, entry.kind.value, out))
        else:
            views.append(ToolCallView(k, i, entry.name, entry.arguments, None, out))
    return views


def _images(traj: Trajectory, turn: TurnView, run_dir: Path | None) -> list[ImageView]:
    views = []
    for rec in traj.images:
        if turn.token_start <= rec.token_start < max(turn.token_end, turn.token_start + 1):
            path = Path(rec.path)
            if run_dir is not None and not path.is_absolute():
                path = run_dir / path
            views.append(ImageView(path, _size_of(path), (rec.token_start, rec.token_end)))
    if views:
        return views
    for message in turn.messages:
        content = message.get("content")
        if isinstance(content, list):
            views += [_image_from_part(p, run_dir) for p in content
                      if isinstance(p, dict) and p.get("type") == "image"]
    return views


def _image_from_part(part: dict[str, Any], run_dir: Path | None) -> ImageView:
    size = part.get("size")
    size = tuple(size) if isinstance(size, list) and len(size) == 2 else None
    ref = part.get("image") or part.get("path")
    if not isinstance(ref, str):
        return ImageView(None, size)
    path = Path(ref)
    if run_dir is not None and not path.is_absolute():
        path = run_dir / path
    return ImageView(path, size or _size_of(path))


def _size_of(path: Path) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.size
    except Exception:  # missing or unreadable image: shown as path only
        return None
