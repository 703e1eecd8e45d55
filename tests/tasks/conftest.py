"""Fixtures for task tests: the subprocess sandbox double and a gold-episode player.

The double (tests/envs/sandbox_double.py) only exercises env and verifier logic; the real
sandboxes are tested in tests/sandbox.
"""

import pytest

from reopold_agent.envs.checker import data_equal
from reopold_agent.tool_protocol import assistant_text
from tests.envs.sandbox_double import SubprocessSandbox


@pytest.fixture(scope="session")
def sandbox() -> SubprocessSandbox:
    return SubprocessSandbox(timeout_s=10.0)


@pytest.fixture
def play_gold():
    """Plays env.gold_turns() through env.step, checking each tool result equals the gold one.

    Returns a function ``(env, **reset_kwargs) -> final reward``.
    """
    def play(env, **reset_kwargs):
        env.reset(**reset_kwargs)
        gold = env.gold_turns()
        terminated, reward = False, None
        for i, message in enumerate(gold):
            if message["role"] != "assistant":
                continue
            obs, reward, terminated, _, info = env.step(assistant_text(message))
            assert data_equal(obs, [m for m in gold[i + 1:i + 2] if m["role"] == "tool"])
            assert info["tool_errors"] == 0
        assert terminated
        return reward

    return play
