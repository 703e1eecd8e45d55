"""Contract tests over every built-in environment: the checker and two-env determinism."""

import random

import pytest

from reopold_agent.envs import check_tool_env, make_env
from reopold_agent.envs.checker import data_equal
from reopold_agent.tasks import TASKS
from reopold_agent.tool_protocol import assistant_text

ENV_IDS = [task.env_id for task in TASKS.values()]


def build(env_id, sandbox, **kwargs):
    return make_env(env_id, sandbox=sandbox, **kwargs)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_tool_env(env_id, sandbox):
    check_tool_env(build(env_id, sandbox))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_two_envs_same_seed_play_the_same_episode(env_id, sandbox):
    a, b = build(env_id, sandbox), build(env_id, sandbox)
    for seed in (0, 1):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert data_equal(obs_a, obs_b) and data_equal(info_a, info_b)
        for message in a.gold_turns():
            if message["role"] != "assistant":
                continue
            step_a = a.step(assistant_text(message))
            step_b = b.step(assistant_text(message))
            assert data_equal(step_a[:4], step_b[:4])
        assert step_a[1] == 1.0


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sequence_of_seeded_resets_is_reproducible(env_id, sandbox):
    a, b = build(env_id, sandbox, split="eval"), build(env_id, sandbox, split="eval")
    ids_a = [a.reset(seed=3)[1]["prompt_id"]] + [a.reset()[1]["prompt_id"] for _ in range(3)]
    ids_b = [b.reset(seed=3)[1]["prompt_id"]] + [b.reset()[1]["prompt_id"] for _ in range(3)]
    assert ids_a == ids_b and len(set(ids_a)) > 1


def _fuzz_actions(seed, n=40):
    rng = random.Random(seed)
    pieces = ["<tool_call>", "</tool_call>", "{", "}", '"name": ', '"arguments": ', '"python"',
              '"zoom"', '"code"', '"bbox"', "[1, 2]", ": ", ", ", "\\boxed{", "\x00", "é", "\n",
              '"print(1)"', '"\\udcff"', "null", "1e999"]
    actions = ['<tool_call>{"name": "python", "arguments": {"code": "print(\'\\udcff\')"}}'
               "</tool_call>",
               '<tool_call>{"name": "zoom", "arguments": {"bbox": [1e308, -1e308, 1e999, 0]}}'
               "</tool_call>"]
    actions += ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30))) for _ in range(n)]
    return actions


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_step_never_raises_on_fuzzed_output(env_id, sandbox):
    env = build(env_id, sandbox)
    for action in _fuzz_actions(0):
        env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(action)
        assert 0.0 <= reward <= 1.0 and isinstance(obs, list)
        assert terminated or len(obs) == info["tool_calls"] > 0
