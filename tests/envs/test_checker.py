"""Tests of envs/checker.py: each broken promise is caught with a message saying what to fix."""

import random

import gymnasium
import pytest
from PIL import Image

from reopold_agent.envs import ToolEnv, ToolEnvCheckError, Verdict, check_tool_env
from reopold_agent.envs.checker import check_garbage_actions, check_seeded_determinism, data_equal
from reopold_agent.envs.tools import Tool, ToolOutput


class Noop(Tool):
    name = "noop"
    description = "Does nothing."

    def run(self):
        return ToolOutput(text="ok")


class GoodEnv(ToolEnv):
    task_name = "good"

    def __init__(self, **kwargs):
        super().__init__(tools=[Noop()], **kwargs)

    def num_items(self):
        return 5

    def load_item(self, index):
        return {"q": f"q{index}", "answer": str(index)}

    def prompt(self, item):
        return [{"role": "user", "content": item["q"]}]

    def verify(self, item, text):
        return Verdict(float(item["answer"] in text))


class UnseededEnv(GoodEnv):
    def load_item(self, index):
        return super().load_item(random.randrange(5) if index == 0 else index)

    def num_items(self):
        return 1


class RaisingVerifierIsSafe(GoodEnv):
    def verify(self, item, text):
        return Verdict(1.0 / len(text.strip()))


class RaisingParseEnv(GoodEnv):
    def step(self, action):
        if "[" in action:
            raise ValueError("cannot parse")
        return super().step(action)


def test_good_env_passes():
    check_tool_env(GoodEnv())


def test_not_a_tool_env():
    with pytest.raises(ToolEnvCheckError, match="subclass reopold_agent.envs.ToolEnv"):
        check_tool_env(gymnasium.make("CartPole-v1"))


def test_unseeded_randomness_is_reported():
    random.seed(1)
    with pytest.raises(ToolEnvCheckError, match="draw every random choice from self.np_random"):
        for _ in range(20):  # the unseeded choice differs on some call
            check_seeded_determinism(UnseededEnv())


def test_step_raising_on_garbage_is_reported():
    with pytest.raises(ToolEnvCheckError, match="step raised ValueError: cannot parse on model "
                                                "output"):
        check_garbage_actions(RaisingParseEnv())


def test_verifier_crash_on_model_text_becomes_reward_zero():
    env = RaisingVerifierIsSafe()
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step("   ")
    assert reward == 0.0 and terminated
    assert info["verify_detail"].startswith("verifier failed: ZeroDivisionError")
    check_tool_env(env)


def test_data_equal_compares_images_by_pixels():
    red, red2, blue = (Image.new("RGB", (2, 2), c) for c in ("red", "red", "blue"))
    assert data_equal([{"image": red}], [{"image": red2}])
    assert not data_equal([{"image": red}], [{"image": blue}])
    assert not data_equal([1], (1,))
