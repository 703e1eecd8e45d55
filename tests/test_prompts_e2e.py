"""``reopold-agent sft --prompts`` and ``train --prompts``: warming a student on the reference
solutions of a user's JSON Lines prompts, then distilling on them with a callable tool and a
verifier."""

from __future__ import annotations

import json

import pytest

from reopold_agent.cli import main
from reopold_agent.trajectory_io import read_trajectories
from tests import tiny

LINES = [
    {"prompt": "What is 2+3? Use the add tool.", "answer": "5",
     "reference": [{"role": "assistant", "content": "", "tool_calls": [
         {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
         {"role": "tool", "name": "add", "content": "5"}, {"role": "assistant", "content": "\\boxed{5}"}]},
    {"prompt": "What is 7+1?", "answer": "8", "reference": [{"role": "assistant", "content": "\\boxed{8}"}]},
    {"prompt": "What is 9+9?", "answer": "18", "split": "eval"},
]
TOOLS = ["--set", "task.env_kwargs.tools=[tests.envs.prompt_tools:add]",
         "--set", "task.env_kwargs.verifier=tests.envs.prompt_tools:lenient"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny.save_tool_math_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def warm_student(models, prompts, tmp_path_factory):
    """The nano student after ``sft --prompts`` on the two reference solutions."""
    out = tmp_path_factory.mktemp("warm") / "student"
    assert main(["sft", "--prompts", str(prompts), "--student", str(models[0]), "--steps", "100",
                 "--output-dir", str(out), "--set", "train.lr=3e-3", *TOOLS]) == 0
    return out


def _train_args(student, teacher, prompts, out):
    return ["train", "--prompts", str(prompts), "--student", str(student), "--teacher", str(teacher),
            "--steps", "1", "--output-dir", str(out), *TOOLS,
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=48", "--set", "rollout.max_episode_tokens=256",
            "--set", "eval.num_problems=1", "--set", "eval.samples=1", "--set", "eval.teacher=false",
            "--set", "train.torch_threads=1"]


def test_sft_then_one_train_step_call_the_tool_and_the_verifier(warm_student, models, prompts, tmp_path):
    assert (warm_student / "model.safetensors").is_file()
    out = tmp_path / "run"
    assert main(_train_args(warm_student, models[1], prompts, out)) == 0
    trajectories, errors = read_trajectories(out / "trajectories" / "step_000000.jsonl")
    assert not errors and len(trajectories) == 4
    assert {t.prompt_id for t in trajectories} == {"prompts/train/0", "prompts/train/1"}
    by_item = {i: [t for t in trajectories if t.prompt_id == f"prompts/train/{i}"] for i in (0, 1)}
    # the warmed student calls the add function, which runs in process and answers 5
    assert any({"role": "tool", "name": "add", "content": "5"} in t.messages for t in by_item[0])
    # the verifier's partial credit (0.75 when the answer appears), not exact match's 1.0
    assert [t.reward for t in by_item[1]] == [0.75, 0.75]
    evaluated, _ = read_trajectories(out / "trajectories" / "eval_000001.jsonl")
    assert {t.prompt_id for t in evaluated} == {"prompts/eval/0"}
    config = (out / "config.yaml").read_text()
    assert f"prompts: {prompts}" in config and "eval_size" not in config  # not the preset's env kwargs


def test_a_bad_line_stops_before_any_model_loads(models, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(LINES[1]) + "\n\n" + '{"prompt": "x", "split": "test"}\n')
    assert main(_train_args(models[0], models[1], bad, tmp_path / "run")) == 2
    assert f"error: {bad}:3: \"split\" must be \"train\" or \"eval\", got 'test'" in capsys.readouterr().err
    assert main(_train_args(models[0], models[1], tmp_path / "absent.jsonl", tmp_path / "run")) == 2
    assert "task.prompts: no such file" in capsys.readouterr().err


def test_sft_without_reference_solutions_says_so(models, tmp_path, capsys):
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "a"}) + "\n")
    assert main(["sft", "--prompts", str(bare), "--student", str(models[0]), "--steps", "2",
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert 'no train item has a "reference" solution' in capsys.readouterr().err


@pytest.mark.parametrize("how", ["flag", "config", "set"])
def test_naming_prompts_drops_the_presets_environment_arguments(how, prompts, tmp_path):
    from reopold_agent.cli import build_parser, resolve_config

    extra = {"flag": ["--prompts", str(prompts)], "set": ["--set", f"task.prompts={prompts}"]}.get(how)
    if extra is None:
        own = tmp_path / "own.yaml"
        own.write_text(f"task:\n  prompts: {prompts}\n  env_kwargs:\n    system_prompt: Be brief.\n")
        extra = ["--config", str(own)]
    config = resolve_config(build_parser().parse_args(["train", "--task", "tool_math", *extra]))
    assert config.task.prompts == str(prompts)
    assert config.task.env_kwargs == ({"system_prompt": "Be brief."} if how == "config" else {})


def test_prompts_and_another_environment_are_refused(prompts, capsys):
    assert main(["train", "--prompts", str(prompts), "--env", "reopold_agent/ToolMath-v0"]) == 2
    assert "task.prompts plays reopold_agent/PromptDataset-v0; it cannot be combined with task.env_id" \
        in capsys.readouterr().err
