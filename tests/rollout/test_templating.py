from reopold_agent.rollout.templating import ChatTemplater
from tests import tiny


def test_token_in_token_out_reconstructs_the_full_template():
    """Prompt ids + sampled ids + appended tool-turn ids == templating the whole conversation."""
    tok = tiny.tokenizer()
    conv = tiny.CONVERSATION
    t = ChatTemplater(tok)
    assert t.assistant_closer == "<|im_end|>\n"
    prompt = t.prompt_ids(conv[:2], None)
    call = tok(conv[2]["content"], add_special_tokens=False)["input_ids"]  # stopped at </tool_call>
    tool = t.tool_turn_ids(conv[2]["content"], [conv[3]])
    final = tok(conv[4]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    full = tok(tok.apply_chat_template(conv, tokenize=False), add_special_tokens=False)["input_ids"]
    assert full[: len(prompt + call + tool + final)] == prompt + call + tool + final
    assert tok.decode(tool) == "<|im_end|>\n<|im_start|>user\n<tool_response>\n9065\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def test_closer_remainder_when_generation_ended_with_eos():
    t = ChatTemplater(tiny.tokenizer())
    assert t.closer_remainder("text<|im_end|>") == "\n"
    assert t.closer_remainder("text</tool_call>") == "<|im_end|>\n"


def test_two_tool_messages_form_one_user_turn():
    tok = tiny.tokenizer()
    t = ChatTemplater(tok)
    ids = t.tool_turn_ids("x</tool_call>", [{"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}])
    text = tok.decode(ids)
    assert text.count("<|im_start|>user") == 1 and text.count("<tool_response>") == 2


class _CountingTokenizer:
    """Wraps a tokenizer and counts chat-template renders."""

    def __init__(self, tok):
        self.tok, self.renders = tok, 0

    def apply_chat_template(self, *args, **kwargs):
        self.renders += 1
        return self.tok.apply_chat_template(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self.tok(*args, **kwargs)


def test_a_repeated_text_prompt_is_templated_once_and_returned_as_a_fresh_list():
    tok = _CountingTokenizer(tiny.tokenizer())
    t = ChatTemplater(tok)
    conv = tiny.CONVERSATION[:2]
    first = t.prompt_ids(conv, None)
    renders = tok.renders
    first.append(-1)  # the caller owns what it got
    again = t.prompt_ids([dict(m) for m in conv], None)
    assert tok.renders == renders and again == first[:-1]
    other = t.prompt_ids([conv[0], {"role": "user", "content": "another question"}], None)
    assert tok.renders == renders + 1 and other != again
    assert again == ChatTemplater(tiny.tokenizer()).prompt_ids(conv, None)


def test_a_prompt_that_is_not_json_is_templated_every_time():
    tok = _CountingTokenizer(tiny.tokenizer())
    t = ChatTemplater(tok)
    conv = [dict(tiny.CONVERSATION[0], extra=object()), tiny.CONVERSATION[1]]
    renders = tok.renders
    assert t.prompt_ids(conv, None) == t.prompt_ids(conv, None)
    assert tok.renders == renders + 2
