"""reopold_agent/PromptDataset-v0: a user's prompts with callable tools and an optional verifier."""

from __future__ import annotations

import json

import gymnasium
import pytest

from reopold_agent.envs import PromptDatasetEnv, check_tool_env, make_env
from reopold_agent.envs.prompt_dataset import ENV_ID
from reopold_agent.tasks.prompt_data import load_prompt_items
from reopold_agent.tool_protocol import tool_call_message, assistant_text

LINES = [
    {"prompt": "What is 2+3?", "answer": "5",
     "reference": [{"role": "assistant", "content": "", "tool_calls": [
         {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
         {"role": "tool", "name": "add", "content": "5"},
         {"role": "assistant", "content": "\\boxed{5}"}]},
    {"messages": [{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "Capital of Italy?"}], "answer": "Rome"},
    {"prompt": "What is 4+4?", "answer": "8", "split": "eval"},
]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    return str(path)


def test_registered_and_passes_the_contract_checks(prompts):
    env = make_env(ENV_ID, prompts=prompts, tools=["tests.envs.prompt_tools:add"])
    assert isinstance(env, PromptDatasetEnv)
    check_tool_env(env)
    assert gymnasium.make(ENV_ID, prompts=prompts).unwrapped.num_items() == 2


def test_splits_prompts_tools_and_exact_match(prompts):
    env = PromptDatasetEnv(prompts=prompts, tools=["tests.envs.prompt_tools:add"], system_prompt="Use tools.")
    assert env.num_items() == 2 and not env.eval_is_train
    obs, info = env.reset(options={"index": 0})
    assert obs == [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "What is 2+3?"}]
    assert info["prompt_id"] == "prompts/train/0" and info["answer"] == "5"
    assert [t["function"]["name"] for t in info["tools"]] == ["add"]
    call = assistant_text(tool_call_message("", [("add", {"a": 2, "b": 3})]))
    obs, reward, terminated, _, _ = env.step(call)
    assert obs == [{"role": "tool", "name": "add", "content": "5"}] and not terminated
    obs, reward, terminated, _, info = env.step("It is \\boxed{5}")
    assert (reward, terminated, info["extracted"]) == (1.0, True, "5")
    obs, _ = env.reset(options={"index": 1})
    assert obs[0] == {"role": "system", "content": "Answer in one word."}  # the item's own system message
    assert env.step("Paris")[1] == 0.0
    held_out = PromptDatasetEnv(prompts=prompts, split="eval")
    assert held_out.num_items() == 1 and held_out.load_item(0)["answer"] == "8"


def test_a_custom_verifier_scores_the_reply(prompts):
    env = PromptDatasetEnv(prompts=prompts, verifier="tests.envs.prompt_tools:lenient")
    env.reset(options={"index": 1})
    assert env.step("I think Rome, yes")[1] == 0.75
    env.reset(options={"index": 1})
    assert env.step("No idea")[1] == 0.25


def test_eval_replays_train_items_when_nothing_is_held_out(prompts, tmp_path):
    items = [i for i in load_prompt_items(prompts) if i["split"] == "train"]
    env = PromptDatasetEnv(items=items, split="eval")
    assert env.eval_is_train and env.num_items() == 2
    extra = tmp_path / "eval.jsonl"
    extra.write_text(json.dumps({"prompt": "3+3?", "answer": 6}) + "\n")
    with_extra = PromptDatasetEnv(items=items, eval_prompts=str(extra), split="eval")
    assert not with_extra.eval_is_train and with_extra.load_item(0)["answer"] == "6"


def test_reference_solutions_are_the_gold_turns(prompts):
    env = PromptDatasetEnv(prompts=prompts, tools=["tests.envs.prompt_tools:add"])
    env.reset(options={"index": 0})
    turns = env.gold_turns()
    assert [m["role"] for m in turns] == ["assistant", "tool", "assistant"]
    env.reset(options={"index": 1})
    with pytest.raises(NotImplementedError, match="no reference"):
        env.gold_turns()


def test_misuse_is_a_clear_error(prompts, tmp_path):
    with pytest.raises(ValueError, match="exactly one of prompts= "):
        PromptDatasetEnv()
    with pytest.raises(ValueError, match=r"tools\[0\]: tool 'nope' must look like module:name"):
        PromptDatasetEnv(prompts=prompts, tools=["nope"])
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_v'"):
        PromptDatasetEnv(prompts=prompts, verifier="no_such_mod_v:check")
    only_eval = tmp_path / "eval_only.jsonl"
    only_eval.write_text(json.dumps({"prompt": "a", "split": "eval"}) + "\n")
    with pytest.raises(ValueError, match="no train items"):
        PromptDatasetEnv(prompts=str(only_eval))


def test_the_python_tool_gets_the_run_sandbox(prompts):
    sandbox = object()
    env = PromptDatasetEnv(prompts=prompts, tools=["python"], sandbox=sandbox)
    assert env.tools[0].sandbox is sandbox and not env.owns_sandbox
    own = PromptDatasetEnv(prompts=prompts, tools=["python"])
    assert own.owns_sandbox  # a lazy default sandbox, built at the first call, closed by close()
    own.close()
