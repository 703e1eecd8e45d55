"""Tests of envs/base.py (ToolEnv) and envs/spaces.py with small test-local environments."""

import pytest
from PIL import Image

from reopold_agent.envs import Tool, ToolEnv, ToolOutput, Verdict
from reopold_agent.envs.spaces import MessagesSpace, TextSpace
from reopold_agent.tool_protocol import render_tool_call


class Echo(Tool):
    name = "echo"
    description = "Echo a text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}},
                  "required": ["text"]}

    def run(self, text):
        return ToolOutput(text=text)


class Broken(Tool):
    name = "broken"
    description = "Always raises."

    def run(self):
        raise ZeroDivisionError("boom")


class Picture(Tool):
    name = "picture"
    description = "Returns a 2x2 image."

    def run(self):
        return ToolOutput(text="a picture", images=[Image.new("RGB", (2, 2), "red")])


class EchoEnv(ToolEnv):
    task_name = "echo"

    def __init__(self, **kwargs):
        super().__init__(tools=[Echo(), Broken(), Picture()], **kwargs)

    def num_items(self):
        return 10

    def load_item(self, index):
        return {"question": f"Say {index}.", "answer": str(index)}

    def prompt(self, item):
        return [{"role": "user", "content": item["question"]}]

    def verify(self, item, text):
        return Verdict(float(text.strip() == item["answer"]), text.strip())


class Queued(Tool):
    name = "queued"
    description = "Reports that it waited a quarter second for a sandbox worker."

    def run(self):
        return ToolOutput(text="ran", queue_wait_s=0.25)


class QueuedEnv(EchoEnv):
    def __init__(self, **kwargs):
        ToolEnv.__init__(self, tools=[Queued(), Echo()], **kwargs)


def call(name, **arguments):
    return render_tool_call(name, arguments)


def test_a_step_reports_the_summed_queue_wait_of_its_tool_calls():
    env = QueuedEnv()
    env.reset(seed=0)
    _, _, _, _, info = env.step(call("queued") + call("queued") + call("echo", text="x"))
    assert info["tool_calls"] == 3 and info["tool_queue_wait_s"] == 0.5
    _, _, terminated, _, info = env.step(env.item["answer"])
    assert terminated and "tool_queue_wait_s" not in info  # no tools ran in an answer


def test_reset_info_and_prompt_id():
    env = EchoEnv(split="eval")
    obs, info = env.reset(options={"index": 3})
    assert obs == [{"role": "user", "content": "Say 3."}]
    assert info["prompt_id"] == "echo/eval/3" and info["answer"] == "3" and info["index"] == 3
    assert [t["function"]["name"] for t in info["tools"]] == ["echo", "broken", "picture"]
    obs, info = env.reset(options={"item": {"question": "Say x.", "answer": "x"}})
    assert obs[0]["content"] == "Say x." and info["index"] is None
    assert info["prompt_id"].startswith("echo/item/")


def test_reset_rejects_bad_options():
    env = EchoEnv()
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"idx": 1})
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        env.reset(options={"index": 10})
    with pytest.raises(ValueError, match="split must be one of"):
        EchoEnv(split="test")


def test_tool_round_and_final_answer():
    env = EchoEnv(max_tool_rounds=3)
    env.reset(options={"index": 7})
    action = call("echo", text="hi") + call("echo", text="yo")
    obs, reward, terminated, truncated, info = env.step(action)
    assert obs == [{"role": "tool", "name": "echo", "content": "hi"},
                   {"role": "tool", "name": "echo", "content": "yo"}]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == 2 and info["tool_errors"] == 0 and info["tool_rounds"] == 1
    obs, reward, terminated, truncated, info = env.step("7")
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info["correct"] and info["answer"] == "7" and info["extracted"] == "7"
    with pytest.raises(RuntimeError, match="is over"):
        env.step("again")


def test_wrong_answer_gets_zero():
    env = EchoEnv()
    env.reset(options={"index": 7})
    assert env.step("8")[1:3] == (0.0, True)


def test_every_tool_round_is_readable_and_the_next_call_truncates_without_running():
    """max_tool_rounds=2: both rounds' results come back for the model to read; a third turn
    with a tool call is not run (the tool is called twice in all) and truncates."""
    env = EchoEnv(max_tool_rounds=2)
    calls = []
    echo = env.tools[0]
    echo.run = lambda text, _run=echo.run: calls.append(text) or _run(text)
    env.reset(seed=0)
    for text in ("a", "b"):
        obs, _, terminated, truncated, info = env.step(call("echo", text=text))
        assert obs[0]["content"] == text and not truncated and not terminated
    obs, reward, terminated, truncated, info = env.step(call("echo", text="c"))
    assert (obs, reward, terminated, truncated) == ([], 0.0, False, True)
    assert calls == ["a", "b"] and info["tool_calls"] == 0 and info["tool_rounds"] == 2
    with pytest.raises(RuntimeError, match="is over"):
        env.step("again")


def test_an_answer_after_the_last_tool_round_is_verified():
    env = EchoEnv(max_tool_rounds=1)
    env.reset(options={"index": 7})
    assert env.step(call("echo", text="a"))[3] is False
    assert env.step("7")[1:4] == (1.0, True, False)


def test_step_before_reset_and_non_str_action_raise():
    env = EchoEnv()
    with pytest.raises(RuntimeError, match="has not started"):
        env.step("x")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="must be the assistant's text"):
        env.step(b"x")


def test_unknown_tool_bad_arguments_and_exceptions_are_tool_messages():
    env = EchoEnv()
    env.reset(seed=0)
    action = (call("nope") + call("echo", txt="x") + call("echo", text=5) + call("broken"))
    obs, _, _, _, info = env.step(action)
    assert info["error_kinds"] == ["unknown_tool", "bad_arguments", "bad_arguments",
                                   "tool_exception"]
    assert info["tool_calls"] == 4 and info["tool_errors"] == 4
    assert "there is no tool named 'nope'; available: broken, echo, picture." in obs[0]["content"]
    assert "missing required argument 'text'; unexpected argument 'txt'" in obs[1]["content"]
    assert "argument 'text' must be of type string, got int" in obs[2]["content"]
    assert obs[3] == {"role": "tool", "name": "broken", "content":
                      "Error (tool_exception): the tool 'broken' failed: ZeroDivisionError: boom"}


def test_image_output_becomes_parts_and_long_text_is_truncated():
    env = EchoEnv(max_tool_output_chars=30)
    env.reset(seed=0)
    obs = env.step(call("picture") + call("echo", text="z" * 100))[0]
    parts = obs[0]["content"]
    assert [p["type"] for p in parts] == ["image", "text"] and parts[1]["text"] == "a picture"
    assert parts[0]["image"].size == (2, 2)
    assert "[... output truncated: 70 characters omitted ...]" in obs[1]["content"]


def test_seeded_resets_pick_the_same_item():
    a, b = EchoEnv(), EchoEnv()
    picks_a = [a.reset(seed=s)[1]["index"] for s in range(5)]
    picks_b = [b.reset(seed=s)[1]["index"] for s in range(5)]
    assert picks_a == picks_b


def test_spaces():
    text = TextSpace(max_length=10, seed=0)
    assert text.contains("<tool_call>é") is False and text.contains("é中") is True
    assert all(text.contains(text.sample()) for _ in range(20))
    messages = MessagesSpace(seed=0)
    assert messages.contains([{"role": "tool", "name": "x", "content": [
        {"type": "image", "image": None}, {"type": "text", "text": "t"}]}])
    assert not messages.contains([{"role": "bot", "content": "x"}])
    assert messages.contains(messages.sample())
