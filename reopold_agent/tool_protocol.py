"""The tool-call text protocol: parsing ``<tool_call>`` blocks and rendering tool errors.

Models call tools in the Qwen2.5 / Hermes style, one JSON object per block, any number of
blocks per assistant turn (up to a limit)::

    <tool_call>
    {"name": "python", "arguments": {"code": "print(37*245)"}}
    </tool_call>

:func:`render_tool_call` writes exactly what a Qwen2.5-style chat template renders for an
assistant message with ``tool_calls`` (``json.dumps(..., ensure_ascii=False)``, blocks joined by
newlines), and :func:`parse_tool_calls` reads it back, so supervised data built from gold
messages teaches the format the environments parse.

Malformed model output is data, never an exception: every problem becomes a
:class:`ToolCallError` whose ``message`` says what was wrong and what format is expected; the
environment returns it to the model as a tool message. Errors that need the tool list (unknown
tool, bad arguments) are detected by the environment but use the same kinds and wording.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
DEFAULT_MAX_CALLS = 8
"""Tool calls allowed in one assistant turn; blocks beyond it are reported, not run."""
DEFAULT_MAX_CHARS = 32_000
"""Characters allowed in one assistant turn before the whole turn is rejected."""

EXPECTED_FORMAT = (
    'Expected format:\n<tool_call>\n{"name": "<tool name>", "arguments": {<arguments as a JSON '
    "object>}}\n</tool_call>"
)


class ErrorKind(str, enum.Enum):
    """Why a tool call failed; the values are the strings reported in ``info["error_kinds"]``."""

    BAD_JSON = "bad_json"
    """The block body is not valid JSON."""
    NOT_AN_OBJECT = "not_an_object"
    """The block body is JSON but not an object."""
    MISSING_NAME = "missing_name"
    """No string ``name`` key."""
    MISSING_ARGUMENTS = "missing_arguments"
    """No ``arguments`` key."""
    ARGUMENTS_NOT_OBJECT = "arguments_not_object"
    """``arguments`` is not a JSON object."""
    UNTERMINATED_TAG = "unterminated_tag"
    """A ``<tool_call>`` without its ``</tool_call>``."""
    NESTED_TAG = "nested_tag"
    """A ``<tool_call>`` inside another block."""
    STRAY_CLOSE_TAG = "stray_close_tag"
    """A ``</tool_call>`` without an opening tag."""
    TOO_MANY_CALLS = "too_many_calls"
    """More blocks than the per-turn limit."""
    TURN_TOO_LONG = "turn_too_long"
    """The assistant turn exceeds the character limit."""
    UNKNOWN_TOOL = "unknown_tool"
    """The named tool does not exist in this environment (checked by the environment)."""
    BAD_ARGUMENTS = "bad_arguments"
    """Arguments do not match the tool's schema (checked by the environment)."""
    TOOL_EXCEPTION = "tool_exception"
    """The tool itself raised (reported by the environment)."""


@dataclass(frozen=True)
class ToolCall:
    """One well-formed tool call found in an assistant turn."""

    name: str
    """Tool name as written by the model."""
    arguments: dict[str, Any]
    """Decoded ``arguments`` object (not yet validated against the tool's schema)."""
    index: int
    """Position of the block among all blocks and errors of the turn (0-based)."""


@dataclass(frozen=True)
class ToolCallError:
    """One malformed tool call, reported back to the model as a tool message."""

    kind: ErrorKind
    """What went wrong."""
    message: str
    """Text shown to the model: the problem and the expected format."""
    index: int
    """Position among all blocks and errors of the turn (0-based)."""
    name: str | None = None
    """Tool name when it could be read, else None."""


@dataclass(frozen=True)
class ParsedTurn:
    """An assistant turn split into tool calls, errors and remaining text."""

    calls: list[ToolCall] = field(default_factory=list)
    """Well-formed calls in the order written."""
    errors: list[ToolCallError] = field(default_factory=list)
    """Malformed blocks in the order written."""
    content: str = ""
    """The turn's text outside ``<tool_call>`` blocks, stripped."""

    @property
    def is_final(self) -> bool:
        """True when the turn holds no tool call attempt at all (a final answer)."""
        return not self.calls and not self.errors

    def in_order(self) -> list[ToolCall | ToolCallError]:
        """Calls and errors merged in the order they appear in the turn."""
        return sorted([*self.calls, *self.errors], key=lambda item: item.index)


def error_message(kind: ErrorKind, detail: str, *, show_format: bool = True) -> str:
    """Render the text the model sees for a failed call.

    Args:
        kind: the error kind, shown in parentheses.
        detail: one sentence saying what was wrong.
        show_format: append the expected call format.

    Returns:
        ``"Error (<kind>): <detail>"`` plus the expected format on following lines.
    """
    text = f"Error ({kind.value}): {detail}"
    return f"{text}\n{EXPECTED_FORMAT}" if show_format else text


def _preview(text: str, limit: int = 80) -> str:
    """A short, single-line excerpt of model text for error messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _decode_block(body: str, index: int) -> ToolCall | ToolCallError:
    """Decode the JSON body of one ``<tool_call>`` block."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, huge ints, deep nesting
        detail = getattr(exc, "msg", None) or str(exc) or "too deeply nested"
        return ToolCallError(
            ErrorKind.BAD_JSON,
            error_message(ErrorKind.BAD_JSON, f"the tool call is not valid JSON ({detail}): "
                          f"{_preview(body)!r}."),
            index,
        )
    if not isinstance(obj, dict):
        return ToolCallError(
            ErrorKind.NOT_AN_OBJECT,
            error_message(ErrorKind.NOT_AN_OBJECT,
                          f"the tool call must be a JSON object, got {type(obj).__name__}."),
            index,
        )
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCallError(
            ErrorKind.MISSING_NAME,
            error_message(ErrorKind.MISSING_NAME,
                          'the tool call has no "name" string naming the tool.'),
            index,
        )
    if "arguments" not in obj:
        return ToolCallError(
            ErrorKind.MISSING_ARGUMENTS,
            error_message(ErrorKind.MISSING_ARGUMENTS,
                          f'the call to {name!r} has no "arguments" object.'),
            index, name,
        )
    arguments = obj["arguments"]
    if not isinstance(arguments, dict):
        return ToolCallError(
            ErrorKind.ARGUMENTS_NOT_OBJECT,
            error_message(ErrorKind.ARGUMENTS_NOT_OBJECT,
                          f'"arguments" of {name!r} must be a JSON object, '
                          f"got {type(arguments).__name__}."),
            index, name,
        )
    return ToolCall(name=name, arguments=arguments, index=index)


def _scan_blocks(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Split ``text`` into ``("block", body)`` / ``("error", kind)`` items and outside text."""
    items: list[tuple[str, str]] = []
    outside: list[str] = []
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        stray = text.find(CLOSE_TAG, pos)
        if stray != -1 and (start == -1 or stray < start):
            items.append(("error", ErrorKind.STRAY_CLOSE_TAG.value))
            outside.append(text[pos:stray])
            pos = stray + len(CLOSE_TAG)
            continue
        if start == -1:
            outside.append(text[pos:])
            return items, outside
        outside.append(text[pos:start])
        body_start = start + len(OPEN_TAG)
        end = text.find(CLOSE_TAG, body_start)
        if end == -1:
            items.append(("error", ErrorKind.UNTERMINATED_TAG.value))
            return items, outside
        body = text[body_start:end]
        if OPEN_TAG in body:
            items.append(("error", ErrorKind.NESTED_TAG.value))
        else:
            items.append(("block", body))
        pos = end + len(CLOSE_TAG)


_SCAN_ERRORS = {
    ErrorKind.STRAY_CLOSE_TAG: f"found {CLOSE_TAG} without a matching {OPEN_TAG}.",
    ErrorKind.UNTERMINATED_TAG: f"a {OPEN_TAG} block was never closed with {CLOSE_TAG}.",
    ErrorKind.NESTED_TAG: f"a {OPEN_TAG} block contains another {OPEN_TAG}; "
                          "write one call per block.",
}


def parse_tool_calls(
    text: str, *, max_calls: int = DEFAULT_MAX_CALLS, max_chars: int = DEFAULT_MAX_CHARS
) -> ParsedTurn:
    """Find the tool calls in one assistant turn.

    Args:
        text: the assistant's raw text for the turn.
        max_calls: blocks (well-formed or not) beyond this many are not run; one
            ``too_many_calls`` error is reported for them.
        max_chars: a longer turn is rejected as a whole with one ``turn_too_long`` error.

    Returns:
        The calls, errors and outside text; never raises on any string.
    """
    if len(text) > max_chars:
        detail = (f"the turn is {len(text)} characters long; the limit is {max_chars}. "
                  "Write shorter turns.")
        err = ToolCallError(ErrorKind.TURN_TOO_LONG,
                            error_message(ErrorKind.TURN_TOO_LONG, detail, show_format=False), 0)
        return ParsedTurn(errors=[err], content="")
    items, outside = _scan_blocks(text)
    calls: list[ToolCall] = []
    errors: list[ToolCallError] = []
    for index, (what, payload) in enumerate(items):
        if index == max_calls:
            detail = (f"{len(items) - max_calls} tool call(s) beyond the limit of {max_calls} "
                      "per turn were not run.")
            errors.append(ToolCallError(
                ErrorKind.TOO_MANY_CALLS,
                error_message(ErrorKind.TOO_MANY_CALLS, detail, show_format=False), index))
            break
        if what == "error":
            kind = ErrorKind(payload)
            errors.append(ToolCallError(kind, error_message(kind, _SCAN_ERRORS[kind]), index))
            continue
        decoded = _decode_block(payload.strip(), index)
        (calls if isinstance(decoded, ToolCall) else errors).append(decoded)
    return ParsedTurn(calls=calls, errors=errors, content="".join(outside).strip())


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The text of one call block, as a Qwen2.5-style chat template renders it.

    Args:
        name: tool name.
        arguments: JSON-serialisable arguments object.

    Returns:
        ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``.
    """
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN_TAG}\n{payload}\n{CLOSE_TAG}"


def tool_call_message(content: str, calls: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """An assistant chat message with OpenAI-style ``tool_calls`` (arguments as objects).

    Args:
        content: text before the calls ("" for none).
        calls: ``(name, arguments)`` pairs in order.
    """
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": args}}
            for name, args in calls
        ],
    }


def assistant_text(message: dict[str, Any]) -> str:
    """The raw text of an assistant message, with its ``tool_calls`` rendered as blocks.

    This is the string a model must generate for the turn (and what ``ToolEnv.step``
    expects): the content, then each call block, joined by newlines.

    Args:
        message: ``{"role": "assistant", "content": str, "tool_calls": [...]?}``.
    """
    content = message.get("content") or ""
    parts = [content] if content else []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call)
        arguments = fn["arguments"]
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        parts.append(render_tool_call(fn["name"], arguments))
    return "\n".join(parts)


def truncate_output(text: str, max_chars: int) -> str:
    """Shorten tool output to about ``max_chars``, keeping its head and tail.

    Args:
        text: tool output.
        max_chars: characters kept (head two thirds, tail one third) before a note.

    Returns:
        ``text`` unchanged when short enough, else head + a note saying how much was cut + tail.
    """
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    cut = len(text) - head - tail
    note = f"\n[... output truncated: {cut} characters omitted ...]\n"
    return text[:head] + note + (text[-tail:] if tail else "")
