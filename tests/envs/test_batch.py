"""Tests of envs/batch.py: a slow tool delays only its own env; failures become outcomes."""

import time

import pytest

from reopold_agent.envs import StepOutcome, Tool, ToolEnv, ToolOutput, Verdict, step_concurrently
from reopold_agent.tool_protocol import render_tool_call

SLOW_S = 1.5


class Sleep(Tool):
    name = "sleep"
    description = "Sleep, then report when it finished."
    parameters = {"type": "object", "properties": {"seconds": {"type": "number"}},
                  "required": ["seconds"]}

    def run(self, seconds):
        time.sleep(seconds)
        return ToolOutput(text=f"{time.perf_counter():.6f}")


class SleepEnv(ToolEnv):
    task_name = "sleep"

    def __init__(self, **kwargs):
        super().__init__(tools=[Sleep()], **kwargs)

    def num_items(self):
        return 1

    def load_item(self, index):
        return {"answer": "done"}

    def prompt(self, item):
        return [{"role": "user", "content": "Sleep."}]

    def verify(self, item, text):
        return Verdict(float(text == "done"))


class ExplodingEnv(SleepEnv):
    def step(self, action):
        raise RuntimeError("env exploded")


def sleep_call(seconds):
    return render_tool_call("sleep", {"seconds": seconds})


def started(n, cls=SleepEnv):
    envs = [cls() for _ in range(n)]
    for env in envs:
        env.reset(seed=0)
    return envs


def test_slow_tool_does_not_delay_the_others():
    envs = started(8)
    actions = [sleep_call(SLOW_S)] + [sleep_call(0.01)] * 7
    start = time.perf_counter()
    outcomes = step_concurrently(envs, actions)
    total = time.perf_counter() - start
    finished_at = [float(o.observation[0]["content"]) - start for o in outcomes]
    assert all(o.error is None for o in outcomes)
    assert max(finished_at[1:]) < 0.5, finished_at
    assert SLOW_S <= finished_at[0] < SLOW_S + 0.5
    assert total < SLOW_S + 0.5
    assert outcomes[0].duration_s >= SLOW_S and max(o.duration_s for o in outcomes[1:]) < 0.5


def test_deadline_turns_a_hanging_step_into_an_error_outcome():
    envs = started(4)
    start = time.perf_counter()
    outcomes = step_concurrently(envs, [sleep_call(SLOW_S)] + [sleep_call(0)] * 3, deadline_s=0.3)
    assert time.perf_counter() - start < 1.0
    assert outcomes[0].error.startswith("step did not finish within the 0.3 s deadline")
    assert outcomes[0].truncated and outcomes[0].observation == []
    assert all(o.error is None and o.observation for o in outcomes[1:])


def test_raising_env_becomes_an_error_outcome_and_the_batch_goes_on():
    envs = started(2) + started(1, ExplodingEnv)
    outcomes = step_concurrently(envs, ["done", sleep_call(0), "anything"], max_workers=2)
    assert outcomes[0].reward == 1.0 and outcomes[0].terminated and outcomes[0].error is None
    assert outcomes[1].observation[0]["name"] == "sleep"
    bad = outcomes[2]
    assert isinstance(bad, StepOutcome) and bad.error.startswith("RuntimeError: env exploded")
    assert (bad.reward, bad.terminated, bad.truncated) == (0.0, False, True)


def test_misuse_raises():
    envs = started(2)
    with pytest.raises(ValueError, match="2 envs but 1 actions"):
        step_concurrently(envs, ["x"])
    with pytest.raises(ValueError, match="appears twice"):
        step_concurrently([envs[0], envs[0]], ["x", "y"])
    assert step_concurrently([], []) == []
