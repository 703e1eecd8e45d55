"""The docs/environments.md example (example_env.py) works as documented."""

from pathlib import Path

from reopold_agent.envs import check_tool_env, make_env
from reopold_agent.tool_protocol import render_tool_call
from tests.envs import example_env  # noqa: F401 - registers example/Units-v0


def test_example_env_passes_the_checker_and_plays_a_gold_episode():
    env = make_env("example/Units-v0")
    check_tool_env(env)
    obs, info = env.reset(options={"index": 0})
    assert obs[1]["content"] == "How many metres are 3.5 miles?" and info["answer"] == "5633"
    call = render_tool_call("convert", {"value": 3.5, "unit_from": "mile", "unit_to": "m"})
    tool_obs, reward, terminated, truncated, info = env.step(call)
    assert tool_obs == [{"role": "tool", "name": "convert", "content": "5633"}]
    assert (reward, terminated, truncated, info["tool_errors"]) == (0.0, False, False, 0)
    assert env.step("\\boxed{5633}")[1:3] == (1.0, True)
    env.reset(options={"index": 1})
    bad = env.step(render_tool_call("convert", {"value": 12, "unit_from": "m", "unit_to": "yd"}))
    assert bad[4]["error_kinds"] == ["bad_arguments"]
    assert env.step("\\boxed{40}")[1] == 0.0


def test_docs_show_the_same_example_code():
    code = (Path(__file__).parent / "example_env.py").read_text()
    body = code.split('"""', 2)[2].strip()  # without the module docstring
    assert body in (Path(__file__).parents[2] / "docs/environments.md").read_text()
    assert len(body.splitlines()) < 40
