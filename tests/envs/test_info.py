"""ResetInfo and StepInfo: the info keys the engine reads, their defaults and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from reopold_agent.envs import make_env
from reopold_agent.envs.info import EnvInfoError, ResetInfo, StepInfo

TOOL = {"type": "function", "function": {"name": "f", "description": "", "parameters": {"type": "object"}}}


def test_reset_info_needs_only_tools():
    parsed = ResetInfo.from_info({"tools": [TOOL], "extra": 1})
    assert parsed == ResetInfo(tools=[TOOL], task=None, prompt_id=None)
    assert ResetInfo.from_info({"tools": []}).tools == []
    assert ResetInfo.recorded({"tools": [TOOL], "task": "t", "extra": 1}) == {"task": "t", "extra": 1}


@pytest.mark.parametrize("info, message", [
    ({}, "no tools key"),
    ({"tools": "python"}, "'python'"),
    ({"tools": [{"name": "f"}]}, "OpenAI function declarations"),
    ({"tools": [], "prompt_id": 3}, 'reset info\\["prompt_id"\\] must be a string, got 3'),
    ([("tools", [])], "dict info, got list"),
])
def test_reset_info_errors_name_the_key(info, message):
    with pytest.raises(EnvInfoError, match=message):
        ResetInfo.from_info(info)


def test_step_info_defaults_count_the_tool_messages():
    obs = [{"role": "tool", "name": "f", "content": "1"}] * 2
    assert StepInfo.from_info({}, obs) == StepInfo(tool_calls=2)
    parsed = StepInfo.from_info({"tool_calls": np.int64(3), "tool_errors": 1, "error_kinds": ["bad_json"],
                                 "extracted": 42, "correct": True})
    assert parsed == StepInfo(3, 1, ("bad_json",), "42", True)


def test_step_info_reads_the_queue_wait_of_tool_calls():
    assert StepInfo.from_info({"tool_calls": 2, "tool_queue_wait_s": 1}).tool_queue_wait_s == 1.0
    assert StepInfo.from_info({"tool_calls": 2}).tool_queue_wait_s == 0.0
    assert StepInfo(2, tool_queue_wait_s=0.5).to_info()["tool_queue_wait_s"] == 0.5


@pytest.mark.parametrize("info, message", [
    ({"tool_queue_wait_s": -0.5}, 'info\\["tool_queue_wait_s"\\] must be a non-negative number'),
    ({"tool_queue_wait_s": float("nan")}, "tool_queue_wait_s"),
    ({"tool_queue_wait_s": "1"}, "tool_queue_wait_s"),
    ({"tool_calls": -1}, 'info\\["tool_calls"\\] must be a non-negative int, got -1'),
    ({"tool_errors": True}, 'info\\["tool_errors"\\] must be a non-negative int'),
    ({"error_kinds": "bad_json"}, "error_kinds"),
    (None, "info dict, got NoneType"),
])
def test_step_info_errors_name_the_key(info, message):
    with pytest.raises(EnvInfoError, match=message):
        StepInfo.from_info(info)


def test_step_info_keeps_the_verdict_keys_for_final_answers_only():
    assert set(StepInfo(2, 1, ("x",)).to_info()) == {"tool_calls", "tool_errors", "error_kinds",
                                                     "tool_queue_wait_s"}
    assert StepInfo(0, extracted=None, correct=False).to_info() == {
        "tool_calls": 0, "tool_errors": 0, "error_kinds": [], "extracted": None, "correct": False}


def test_tool_env_infos_are_written_from_the_records(sandbox):
    env = make_env("reopold_agent/ToolMath-v0", sandbox=sandbox)
    obs, info = env.reset(seed=0, options={"index": 3})
    assert ResetInfo.from_info(info) == ResetInfo(env.tool_schemas(), task="tool_math", prompt_id="tool_math/train/3")
    call = '<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call><tool_call>{}</tool_call>'
    obs, _, _, _, info = env.step(call)
    assert StepInfo.from_info(info, obs) == StepInfo(2, 1, tuple(info["error_kinds"]))
    _, reward, terminated, _, info = env.step(f"\\boxed{{{info.get('answer', env.item['answer'])}}}")
    assert terminated and StepInfo.from_info(info) == StepInfo(0, 0, (), env.item["answer"], True)
