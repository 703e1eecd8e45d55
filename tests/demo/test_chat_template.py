"""Tests for reopold_agent/demo/chat_template.py, rendered through transformers' apply_chat_template."""

from __future__ import annotations

import jinja2
import pytest

from reopold_agent.demo.chat_template import CHATML_TOOL_TEMPLATE, IMAGE_PLACEHOLDER
from reopold_agent.demo.tiny_models import build_tokenizer

PYTHON_TOOL = {
    "type": "function",
    "function": {
        "name": "python",
        "description": "Run Python code and return what it prints.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "Python source."}},
            "required": ["code"],
        },
    },
}

CONVERSATION = [
    {"role": "system", "content": "You solve math problems."},
    {"role": "user", "content": "What is 2+3?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"type": "function", "function": {"name": "python", "arguments": {"code": "print(2+3)"}}},
            {"type": "function", "function": {"name": "python", "arguments": '{"code": "print(5)"}'}},
        ],
    },
    {"role": "tool", "content": "5"},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "The answer is \\boxed{5}."},
]

SYSTEM_WITH_TOOLS = (
    "<|im_start|>system\n"
    "You solve math problems.\n"
    "\n"
    "# Tools\n"
    "python(code: string) - Run Python code and return what it prints.\n"
    'Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n'
)


def _corpus() -> list[str]:
    texts = []
    for a in range(40):
        b = (a * 37) % 101
        texts.append(
            f"What is {a}+{b}? Let me check. "
            f'<tool_call>{{"name": "python", "arguments": {{"code": "print({a}+{b})"}}}}</tool_call>'
            f"\n<tool_response>\n{a + b}\n</tool_response> The answer is \\boxed{{{a + b}}}."
        )
    return texts


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(_corpus())


@pytest.fixture(scope="module")
def byte_tok():
    """No merges: one token per byte, so token counts can be written down by hand."""
    return build_tokenizer([])


def _render(tok, messages, **kwargs) -> str:
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def _ids(tok, messages, **kwargs) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def test_tokenizer_carries_template(tok):
    assert tok.chat_template == CHATML_TOOL_TEMPLATE


def test_exact_rendering_small_tool_conversation(tok):
    messages = [
        {"role": "user", "content": "What is 2+3?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": "print(2+3)"}}}],
        },
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    expected = (
        "<|im_start|>system\n"
        "You are a helpful assistant.\n"
        "\n"
        "# Tools\n"
        "python(code: string) - Run Python code and return what it prints.\n"
        'Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n"
        "What is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>{"name": "python", "arguments": {"code": "print(2+3)"}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n"
        "<tool_response>\n"
        "5\n"
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
        "The answer is 5.<|im_end|>\n"
    )
    assert _render(tok, messages, tools=[PYTHON_TOOL]) == expected


def test_exact_rendering_without_tools_has_no_default_system(tok):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    expected = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert _render(tok, messages) == expected
    assert _render(tok, messages, tools=[]) == expected


def test_consecutive_tool_messages_share_one_user_turn(tok):
    text = _render(tok, CONVERSATION, tools=[PYTHON_TOOL])
    expected_tail = (
        "<|im_start|>assistant\n"
        "Let me check.\n"
        '<tool_call>{"name": "python", "arguments": {"code": "print(2+3)"}}</tool_call>\n'
        '<tool_call>{"name": "python", "arguments": {"code": "print(5)"}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n"
        "<tool_response>\n5\n</tool_response>\n"
        "<tool_response>\n5\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
        "The answer is \\boxed{5}.<|im_end|>\n"
    )
    assert text == SYSTEM_WITH_TOOLS + "<|im_start|>user\nWhat is 2+3?<|im_end|>\n" + expected_tail
    assert text.count("<|im_start|>user") == 2


@pytest.mark.parametrize("tools", [None, [PYTHON_TOOL]])
def test_prefix_preserving(tok, tools):
    texts = [_render(tok, CONVERSATION[:k], tools=tools) for k in range(1, len(CONVERSATION) + 1)]
    ids = [_ids(tok, CONVERSATION[:k], tools=tools) for k in range(1, len(CONVERSATION) + 1)]
    for k in range(len(texts) - 1):
        assert texts[k + 1].startswith(texts[k]), k
        assert texts[k + 1] != texts[k]
        assert ids[k + 1][: len(ids[k])] == ids[k], k


def test_history_plus_generation_prompt_is_prefix_of_next_turn(tok):
    # What an engine appends after tool results: close the tool turn, open the assistant turn.
    for k in (2, 5):
        with_prompt = _render(tok, CONVERSATION[:k], tools=[PYTHON_TOOL], add_generation_prompt=True)
        assert with_prompt.endswith("<|im_start|>assistant\n")
        assert _render(tok, CONVERSATION[: k + 1], tools=[PYTHON_TOOL]).startswith(with_prompt)


def test_generation_prompt(tok):
    messages = [{"role": "user", "content": "Hi"}]
    assert _render(tok, messages, add_generation_prompt=True) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    after_tool = CONVERSATION[:4]
    assert _render(tok, after_tool, add_generation_prompt=True).endswith(
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    # Without the prompt a trailing run of tool messages stays open for more results.
    assert _render(tok, after_tool).endswith("5\n</tool_response>")


def test_assistant_mask_exact_on_byte_tokenizer(byte_tok):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    out = byte_tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    # <|im_start|> user \n H i <|im_end|> \n <|im_start|> assistant \n  -> 1+4+1+2+1+1+1+9+1 = 21
    # Y o <|im_end|> -> 3 generated tokens; the final \n is template text.
    assert out["assistant_masks"] == [0] * 21 + [1] * 3 + [0]
    assert out["input_ids"][21:24] == byte_tok.encode("Yo") + [byte_tok.convert_tokens_to_ids("<|im_end|>")]


def test_assistant_mask_covers_content_tool_calls_and_im_end(tok):
    messages = [
        {"role": "user", "content": "What is 2+3?"},
        CONVERSATION[2],
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "The answer is 5."},
    ]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    prompt = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    gen1 = (
        "Let me check.\n"
        '<tool_call>{"name": "python", "arguments": {"code": "print(2+3)"}}</tool_call>\n'
        '<tool_call>{"name": "python", "arguments": {"code": "print(5)"}}</tool_call><|im_end|>'
    )
    mid = "\n<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    gen2 = "The answer is 5.<|im_end|>"
    pieces = [(prompt, 0), (gen1, 1), (mid, 0), (gen2, 1), ("\n", 0)]
    expected_ids, expected_mask = [], []
    for text, bit in pieces:
        piece_ids = tok.encode(text)
        expected_ids += piece_ids
        expected_mask += [bit] * len(piece_ids)
    assert list(out["input_ids"]) == expected_ids
    assert list(out["assistant_masks"]) == expected_mask


def test_tools_render_compactly(tok):
    tools = [
        PYTHON_TOOL,
        {
            "type": "function",
            "function": {
                "name": "crop",
                "description": "Crop the image.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "box": {"type": "array", "items": {"type": "integer"}},
                        "zoom": {"type": ["number", "null"]},
                        "note": {},
                    },
                    "required": ["box"],
                },
            },
        },
        {"name": "finish", "parameters": {"type": "object", "properties": {}}},
    ]
    text = _render(tok, [{"role": "user", "content": "Go"}], tools=tools)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n"
        "python(code: string) - Run Python code and return what it prints.\n"
        "crop(box: array, zoom?: number|null, note?: any) - Crop the image.\n"
        "finish()\n"
        'Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call><|im_end|>\n'
        "<|im_start|>user\nGo<|im_end|>\n"
    )
    assert '"properties"' not in text and "Python source." not in text


def test_image_placeholders_in_user_and_tool_messages(tok):
    messages = [
        {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "crop", "arguments": {}}}]},
        {"role": "tool", "content": [{"type": "text", "text": "cropped:"}, {"type": "image"}]},
    ]
    text = _render(tok, messages, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "crop", "arguments": {}}</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\ncropped:<|vision_start|><|image_pad|><|vision_end|>\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    assert text.count(IMAGE_PLACEHOLDER) == 2
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert _ids(tok, messages).count(pad_id) == 2


def test_bad_input_raises(tok):
    with pytest.raises(jinja2.exceptions.TemplateError, match="role: robot"):
        _render(tok, [{"role": "robot", "content": "beep"}])
    with pytest.raises(jinja2.exceptions.TemplateError, match="part type: video"):
        _render(tok, [{"role": "user", "content": [{"type": "video"}]}])
