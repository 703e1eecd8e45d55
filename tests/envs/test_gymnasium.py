"""The built-ins the way gymnasium users make them: ``import reopold_agent``, ``gym.make(id)``
with no arguments (a code-running env builds its own sandbox lazily), and gymnasium's own
``check_env``."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import reopold_agent
from reopold_agent.sandbox import LazySandbox, LocalSandbox, SandboxConfig, SandboxUnavailable
from reopold_agent.tasks import TASKS
from reopold_agent.tool_protocol import assistant_text
from tests.envs.sandbox_double import SubprocessSandbox

ENV_IDS = [task.env_id for task in TASKS.values()]
CODE_ENV_IDS = ["reopold_agent/ToolMath-v0", "reopold_agent/Code-v0"]
REPO = Path(__file__).resolve().parents[2]
PYTHON_CALL = '<tool_call>{"name": "python", "arguments": {"code": "print(6*7)"}}</tool_call>'


def _isolation_or_skip() -> None:
    try:
        LocalSandbox(SandboxConfig(warm_workers=0)).close()
    except SandboxUnavailable as exc:
        pytest.skip(f"the default local sandbox cannot run here: {exc}")


def test_importing_the_package_is_all_gym_make_needs():
    code = ("import gymnasium as gym, reopold_agent\n"
            "gym.register_envs(reopold_agent)\n"
            f"for env_id in {ENV_IDS!r}:\n"
            "    env = gym.make(env_id)\n"
            "    print(type(env.unwrapped).__name__, env.reset(seed=0)[1]['prompt_id'])\n"
            "    env.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [r[0] for r in rows] == ["ToolMathEnv", "CodeEnv", "VisualQAEnv"]
    assert [r[1].split("/")[:2] for r in rows] == [["tool_math", "train"], ["code", "train"], ["visual_qa", "train"]]


def test_a_code_env_made_without_arguments_builds_its_sandbox_at_the_first_tool_call():
    _isolation_or_skip()
    env = gym.make("reopold_agent/ToolMath-v0")
    own = env.unwrapped.sandbox
    assert isinstance(own, LazySandbox) and env.unwrapped.owns_sandbox
    env.reset(seed=0)
    assert not own.built  # listing and resetting start no sandbox
    obs, reward, terminated, truncated, info = env.step(PYTHON_CALL)
    assert obs == [{"role": "tool", "name": "python", "content": "42"}] and info["tool_errors"] == 0
    assert own.built and isinstance(own.sandbox(), LocalSandbox) and own.sandbox().isolated
    env.close()
    assert not own.built
    env.close()  # closing twice is allowed (gymnasium's check_env tries it)


def test_code_env_without_arguments_verifies_a_gold_answer_in_its_own_sandbox():
    _isolation_or_skip()
    env = gym.make("reopold_agent/Code-v0").unwrapped
    env.reset(seed=1)
    final = [m for m in env.gold_turns() if m["role"] == "assistant"][-1]
    obs, reward, terminated, _, info = env.step(assistant_text(final))
    assert terminated and reward == 1.0 and info["correct"] is True
    env.close()


@pytest.mark.parametrize("env_id", CODE_ENV_IDS)
def test_where_isolation_is_impossible_the_first_tool_call_refuses_clearly(env_id):
    env = gym.make(env_id).unwrapped
    env.sandbox.factory = lambda: LocalSandbox(SandboxConfig(), unshare_path="/nonexistent/unshare")
    env.reset(seed=0)
    with pytest.raises(SandboxUnavailable, match=f"^{env_id} was made without sandbox=.*refusing to run code"):
        env.step(PYTHON_CALL)
    env.close()


def test_a_passed_sandbox_is_used_and_left_to_its_owner():
    class Recording(SubprocessSandbox):
        closed = False

        def close(self) -> None:
            self.closed = True

    sandbox = Recording()
    env = gym.make("reopold_agent/ToolMath-v0", sandbox=sandbox)
    env.reset(seed=0)
    assert env.step(PYTHON_CALL)[0][0]["content"] == "42" and sandbox.calls == 1
    env.close()
    assert env.unwrapped.sandbox is sandbox and not env.unwrapped.owns_sandbox and not sandbox.closed


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_check_env_passes_without_a_warning(env_id):
    """Every check of ``gymnasium.utils.env_checker.check_env`` runs (docs/environments.md says
    which ones have nothing to test on a text environment); a warning would fail the test."""
    _isolation_or_skip()
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
        obs, info = env.reset(seed=0)  # gym.make's passive checker on the wrapped env too
        env.step("no tool call, so a final answer: \\boxed{0}")
    env.close()


def test_register_envs_accepts_the_package():
    gym.register_envs(reopold_agent)
    assert all(env_id in gym.registry for env_id in ENV_IDS)
