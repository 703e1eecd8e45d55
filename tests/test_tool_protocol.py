"""Tests of reopold_agent/tool_protocol.py: parsing, error messages, rendering, truncation."""

import json
import random

import pytest

from reopold_agent.tool_protocol import (
    ErrorKind,
    ToolCall,
    assistant_text,
    parse_tool_calls,
    render_tool_call,
    tool_call_message,
    truncate_output,
)


def test_single_call_with_surrounding_text():
    text = ('Let me compute.\n<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}'
            "\n</tool_call>")
    turn = parse_tool_calls(text)
    assert turn.calls == [ToolCall("python", {"code": "print(1)"}, 0)]
    assert turn.errors == []
    assert turn.content == "Let me compute."
    assert not turn.is_final


def test_several_calls_in_order_and_mixed_with_errors():
    text = (render_tool_call("a", {"x": 1}) + "\n<tool_call>oops</tool_call>\n"
            + render_tool_call("b", {}))
    turn = parse_tool_calls(text)
    assert [(c.name, c.index) for c in turn.calls] == [("a", 0), ("b", 2)]
    assert [(e.kind, e.index) for e in turn.errors] == [(ErrorKind.BAD_JSON, 1)]
    assert [type(x).__name__ for x in turn.in_order()] == ["ToolCall", "ToolCallError", "ToolCall"]


def test_no_call_is_final():
    turn = parse_tool_calls("The answer is \\boxed{3}.")
    assert turn.is_final and turn.content == "The answer is \\boxed{3}."


@pytest.mark.parametrize("text, kind, phrase", [
    ("<tool_call>{not json}</tool_call>", ErrorKind.BAD_JSON, "not valid JSON"),
    ("<tool_call>[1]</tool_call>", ErrorKind.NOT_AN_OBJECT, "must be a JSON object, got list"),
    ('<tool_call>{"arguments": {}}</tool_call>', ErrorKind.MISSING_NAME, 'no "name" string'),
    ('<tool_call>{"name": 3, "arguments": {}}</tool_call>', ErrorKind.MISSING_NAME, '"name"'),
    ('<tool_call>{"name": "f"}</tool_call>', ErrorKind.MISSING_ARGUMENTS,
     "the call to 'f' has no \"arguments\" object"),
    ('<tool_call>{"name": "f", "arguments": "{}"}</tool_call>', ErrorKind.ARGUMENTS_NOT_OBJECT,
     "must be a JSON object, got str"),
    ('<tool_call>{"name": "f", "arguments": {}}', ErrorKind.UNTERMINATED_TAG, "never closed"),
    ("<tool_call><tool_call>{}</tool_call>", ErrorKind.NESTED_TAG, "contains another"),
    ('{"name": "f", "arguments": {}}</tool_call>', ErrorKind.STRAY_CLOSE_TAG,
     "without a matching"),
])
def test_each_malformed_kind_has_a_specific_message(text, kind, phrase):
    turn = parse_tool_calls(text)
    assert turn.calls == []
    assert turn.errors[0].kind is kind
    message = turn.errors[0].message
    assert message.startswith(f"Error ({kind.value}): ")
    assert phrase in message
    assert "Expected format:\n<tool_call>\n" in message


def test_too_many_calls_runs_the_first_ones_and_reports_the_rest():
    text = "".join(render_tool_call("f", {"i": i}) for i in range(6))
    turn = parse_tool_calls(text, max_calls=4)
    assert [c.arguments["i"] for c in turn.calls] == [0, 1, 2, 3]
    assert [e.kind for e in turn.errors] == [ErrorKind.TOO_MANY_CALLS]
    assert "2 tool call(s) beyond the limit of 4" in turn.errors[0].message


def test_turn_too_long_is_one_error():
    turn = parse_tool_calls(render_tool_call("f", {"s": "x" * 100}), max_chars=50)
    assert turn.calls == [] and [e.kind for e in turn.errors] == [ErrorKind.TURN_TOO_LONG]
    assert "limit is 50" in turn.errors[0].message


def test_render_matches_qwen_template_layout_and_round_trips():
    args = {"code": 'print("héllo")\nx = {"a": 1}'}
    block = render_tool_call("python", args)
    assert block == ('<tool_call>\n{"name": "python", "arguments": {"code": '
                     + json.dumps(args["code"], ensure_ascii=False) + "}}\n</tool_call>")
    assert parse_tool_calls(block).calls == [ToolCall("python", args, 0)]


def test_assistant_text_of_tool_call_message():
    message = tool_call_message("Checking.", [("a", {"x": 1}), ("b", {"y": [2]})])
    text = assistant_text(message)
    assert text == ('Checking.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
                    '<tool_call>\n{"name": "b", "arguments": {"y": [2]}}\n</tool_call>')
    turn = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in turn.calls] == [("a", {"x": 1}), ("b", {"y": [2]})]
    assert assistant_text({"role": "assistant", "content": "\\boxed{1}"}) == "\\boxed{1}"


def test_truncate_output_keeps_head_and_tail_with_a_note():
    assert truncate_output("short", 10) == "short"
    text = "".join(str(i % 10) for i in range(100))
    out = truncate_output(text, 30)
    assert out.startswith(text[:20]) and out.endswith(text[-10:])
    assert "[... output truncated: 70 characters omitted ...]" in out


def _garbage(seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = ["<tool_call>", "</tool_call>", "{", "}", '"name"', '"arguments"', ":", "[", "]",
              '"python"', "\\boxed{", "\x00", "é", "\n"]
    out = [bytes(rng.randrange(256) for _ in range(200)).decode("utf-8", errors="replace"),
           bytes(rng.randrange(256) for _ in range(200)).decode("utf-8", errors="surrogateescape"),
           "<tool_call>" * 1000, "</tool_call>" * 1000, "<tool_call>" + "{" * 100_000]
    out += ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40))) for _ in range(200)]
    return out


def test_parser_never_raises_on_garbage():
    for text in _garbage(0):
        turn = parse_tool_calls(text)
        assert len(turn.calls) + len(turn.errors) <= 8 + 1
        for err in turn.errors:
            assert err.message.startswith("Error (")
