"""Tests of tasks/tool_math.py and its environment (envs/tool_math.py)."""

import json

import pytest

from reopold_agent.envs import make_env
from reopold_agent.tasks import tool_math
from reopold_agent.tasks.data import TaskDataError, split_of
from reopold_agent.tool_protocol import assistant_text


def test_splits_are_disjoint_and_assigned_by_hash():
    train = [tool_math.make_item("train", i)["question"] for i in range(300)]
    evals = [tool_math.make_item("eval", i)["question"] for i in range(200)]
    assert not set(train) & set(evals)
    assert {split_of(q) for q in train} == {"train"} and {split_of(q) for q in evals} == {"eval"}
    assert len(set(evals)) == 200


def test_items_are_deterministic_by_seed():
    assert tool_math.make_item("train", 5, seed=1) == tool_math.make_item("train", 5, seed=1)
    assert tool_math.make_item("train", 5, seed=1) != tool_math.make_item("train", 5, seed=2)


@pytest.mark.parametrize("level", [1, 2, 3])
def test_levels_have_large_numbers_and_matching_code(level):
    for i in range(20):
        item = tool_math.make_item("train", i, levels=(level,))
        assert item["difficulty"] == level and int(item["answer"]) >= 100
        assert item["code"].startswith("print(") and item["code"].endswith(")")


def test_gold_trajectory_format_is_short_and_regular():
    item = {"question": "A shop sells 37 boxes of 245 pens. How many pens?", "answer": "9065",
            "code": "print(37*245)"}
    turns = tool_math.gold_turns(item)
    assert [assistant_text(m) if m["role"] == "assistant" else m for m in turns] == [
        '<tool_call>\n{"name": "python", "arguments": {"code": "print(37*245)"}}\n</tool_call>',
        {"role": "tool", "name": "python", "content": "9065"},
        "\\boxed{9065}",
    ]


@pytest.mark.parametrize("split, index", [("train", 0), ("train", 1), ("eval", 0), ("eval", 7)])
def test_gold_trajectory_earns_full_reward(sandbox, play_gold, split, index):
    env = make_env("reopold_agent/ToolMath-v0", sandbox=sandbox, split=split)
    assert play_gold(env, options={"index": index}) == 1.0


@pytest.mark.parametrize("text, reward", [
    ("\\boxed{9065}", 1.0), ("The answer is \\boxed{9,065}.", 1.0), ("\\boxed{9065.0}", 1.0),
    ("\\boxed{ 9 065 }", 1.0), ("\\boxed{\\$9065}", 1.0), ("\\boxed{1} then \\boxed{9065}", 1.0),
    ("\\boxed{9066}", 0.0), ("\\boxed{9065.5}", 0.0), ("9065", 0.0), ("\\boxed{9065 pens}", 0.0),
    ("\\boxed{}", 0.0), ("\\boxed{9065", 0.0),
])
def test_verifier_edge_cases(text, reward):
    assert tool_math.verify({"answer": "9065"}, text).reward == reward


def test_user_jsonl_items(tmp_path, sandbox, play_gold):
    path = tmp_path / "math.jsonl"
    rows = [{"question": "What is 2+2?", "answer": 4},
            {"question": "What is 6*7?", "answer": "42", "code": "print(6*7)"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    env = make_env("reopold_agent/ToolMath-v0", sandbox=sandbox, data_path=str(path))
    assert env.num_items() == 2
    _, info = env.reset(options={"index": 0})
    assert info["answer"] == "4" and env.gold_turns() == [
        {"role": "assistant", "content": "\\boxed{4}"}]
    assert play_gold(env, options={"index": 1}) == 1.0


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": 1}\n{"question": "q2"\n', r"math.jsonl:2: not valid JSON"),
    ('{"question": "q"}\n', r"math.jsonl:1: missing key 'answer'"),
    ('[1, 2]\n', r"math.jsonl:1: expected a JSON object, got list"),
    ('{"question": 3, "answer": 1}\n', r"math.jsonl:1: key 'question' has type int"),
    ("\n", "has no items"),
])
def test_bad_jsonl_lines_name_the_line(tmp_path, content, message):
    path = tmp_path / "math.jsonl"
    path.write_text(content)
    with pytest.raises(TaskDataError, match=message):
        tool_math.load_items(path)


def test_missing_data_file():
    with pytest.raises(TaskDataError, match="does not exist"):
        tool_math.load_items("/nonexistent/file.jsonl")


def test_reset_with_an_item_option(sandbox):
    env = make_env("reopold_agent/ToolMath-v0", sandbox=sandbox)
    obs, info = env.reset(options={"item": {"question": "What is 3*3?", "answer": 9}})
    assert obs[1] == {"role": "user", "content": "What is 3*3?"} and info["answer"] == "9"
    assert env.step("\\boxed{9}")[1] == 1.0
