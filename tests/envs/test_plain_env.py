"""``reopold-agent train --env`` on a plain ``gymnasium.Env`` (tests/envs/plain_env.py): it
trains for a step, evaluates over fixed reset seeds and says so once."""

from __future__ import annotations

import re

import pytest

from reopold_agent.cli import main
from reopold_agent.envs.registry import accepted_keywords
from reopold_agent.evaluation import evaluate
from reopold_agent.rollout.backend import Generation, GenerationBackend
from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.rollout.engine import EpisodeRequest, RolloutEngine
from reopold_agent.run_logging import read_metrics
from reopold_agent.tool_protocol import render_tool_call
from reopold_agent.trajectory_io import read_trajectories
from tests import tiny
from tests.envs.plain_env import AdderEnv

ENV = "tests.envs.plain_env:plain/Adder-v0"


class Solver(GenerationBackend):
    """A scripted model: turn 0 calls ``add`` on the question's numbers, turn 1 answers their sum
    plus ``offset`` (0: right, else wrong)."""

    def __init__(self, offset: int = 0):
        self.tok, self.offset = tiny.tokenizer(), offset

    def generate(self, prompts, max_new_tokens, params, *, seeds, extra_inputs=None, on_row_done=None):
        out = []
        for prompt, budget in zip(prompts, max_new_tokens):
            text = self.tok.decode(prompt)
            a, b = map(int, re.search(r"What is (\d+) \+ (\d+)\?", text).groups())
            first = text.count("<|im_start|>assistant") == 1
            reply = render_tool_call("add", {"a": a, "b": b}) if first else f"\\boxed{{{a + b + self.offset}}}<|im_end|>"
            ids = self.tok(reply, add_special_tokens=False)["input_ids"][:budget]
            out.append(Generation(ids, [-0.5] * len(ids), [1.0] * len(ids), "stop"))
        return out


def _engine(offset=0):
    return RolloutEngine(Solver(offset), tiny.tokenizer(), RolloutConfig(max_turn_tokens=96, max_episode_tokens=1024))


def test_the_engine_plays_a_plain_env_with_its_typed_infos():
    right, wrong = _engine().run([AdderEnv(), AdderEnv()], [EpisodeRequest(3, {}), EpisodeRequest(4, {})], seed=0)
    wrong_again = _engine(offset=1).run([AdderEnv()], [EpisodeRequest(4, {})], seed=0)[0]
    for traj, seed in ((right, 3), (wrong, 4)):
        a, b = map(int, traj.info["question"].split("+"))
        assert traj.end_reason == "answered" and traj.reward == 1.0
        assert traj.prompt_id == f"seed/{seed}" and "tools" not in traj.info
        assert traj.tool_calls == 1 and traj.tool_errors == 0  # counted from the tool messages
        assert traj.messages[3] == {"role": "tool", "name": "add", "content": str(a + b)}
        assert traj.info["outcome"]["extracted"] == str(a + b)
    assert wrong_again.reward == 0.0 and wrong_again.prompt_id == "seed/4"


def test_evaluation_of_a_plain_env_plays_the_same_fixed_seeds_in_both_passes():
    metrics, trajs = evaluate(_engine(), AdderEnv, [0, 1], samples=2, greedy=True, batch_episodes=4, seed=7)
    assert sorted(t.prompt_id for t in trajs) == ["seed/7"] * 3 + ["seed/8"] * 3
    assert metrics["eval/greedy_accuracy"] == metrics["eval/pass@2"] == metrics["eval/maj@2"] == 1.0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain_models")
    for name, seed in (("student", 0), ("teacher", 1)):
        tiny.model("nano", seed=seed).save_pretrained(root / name)
        tiny.tokenizer().save_pretrained(root / name)
    return root / "student", root / "teacher"


def _argv(models, out, env=ENV):
    return ["train", "--env", env, "--student", str(models[0]), "--teacher", str(models[1]),
            "--steps", "1", "--output-dir", str(out),
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=16", "--set", "rollout.max_episode_tokens=160",
            "--set", "eval.num_problems=2", "--set", "eval.samples=2", "--set", "eval.every=0",
            "--set", "eval.batch_episodes=4", "--set", "eval.teacher=false",
            "--set", "train.torch_threads=1", "--set", "train.save_every=1"]


def test_only_the_keywords_a_plain_constructor_takes_are_passed():
    assert accepted_keywords(ENV, ("split", "sandbox")) == ()
    assert accepted_keywords("reopold_agent/ToolMath-v0", ("split", "sandbox")) == ("split", "sandbox")
    assert accepted_keywords("tests.envs.example_env:example/Units-v0", ("split",)) == ("split",)


def test_a_plain_gymnasium_env_trains_for_a_step(models, tmp_path, capsys):
    out = tmp_path / "adder"
    assert main(_argv(models, out)) == 0
    printed = capsys.readouterr().out
    assert printed.count("has no numbered items") == 1, printed
    assert "not held out from training" in printed
    trajs, errors = read_trajectories(out / "trajectories" / "step_000000.jsonl")
    assert not errors and len(trajs) == 4
    ids = [t.prompt_id for t in trajs]
    assert ids[0] == ids[1] != ids[2] == ids[3] and ids[0].startswith("seed/")  # groups share a problem
    assert all(t.info["question"] and "tools" not in t.info for t in trajs)
    evals, _ = read_trajectories(out / "trajectories" / "eval_000000.jsonl")
    greedy = [t.prompt_id for t in evals if t.sample_index == 0][:2]
    assert sorted({t.prompt_id for t in evals}) == sorted(greedy)  # both passes play the same seeds
    assert len({t.info["question"] for t in evals if t.prompt_id == greedy[0]}) == 1
    metrics = read_metrics(out)
    assert any(m["step"] == 0 and "objective/loss" in m and m["rollout/episodes"] == 4 for m in metrics)
    assert any("eval/greedy_accuracy" in m for m in metrics) and any("eval/pass@2" in m for m in metrics)


def test_a_plain_env_that_breaks_the_contract_is_one_line(models, tmp_path, capsys):
    assert main(_argv(models, tmp_path / "x", env="tests.envs.plain_env:plain/NoTools-v0")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "does not follow the tool-environment contract" in err and 'info["tools"]' in err
