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
