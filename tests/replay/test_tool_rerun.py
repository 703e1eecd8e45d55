import pytest

from reopold_agent.replay.tool_rerun import (
    max_output_chars_from_run, rerun_tool_call, sandbox_config_from_run)
from reopold_agent.replay.turns import ToolCallView
from reopold_agent.sandbox import SandboxUnavailable, make_sandbox


@pytest.fixture(scope="module")
def sandbox():
    try:
        box = make_sandbox(sandbox_config_from_run({"sandbox": {"timeout_s": 5.0, "bogus": 1}}))
        box.run("pass", timeout_s=5)
    except SandboxUnavailable as exc:
        pytest.skip(f"no sandbox here: {exc}")
    return box


def _call(code, output, name="python"):
    return ToolCallView(1, 0, name, {"code": code}, None, output)


def test_same_program_matches_the_recording(sandbox):
    result = rerun_tool_call(_call("print(37*245)", "9065"), sandbox)
    assert (result.ran, result.matches, result.output) == (True, True, "9065")
    assert "MATCHES" in result.headline()


def test_changed_output_is_reported_with_a_diff(sandbox):
    result = rerun_tool_call(_call("print(37*245)", "9064"), sandbox)
    assert (result.ran, result.matches) == (True, False)
    assert "-9064" in result.diff and "+9065" in result.diff


def test_errors_are_formatted_like_the_environment(sandbox):
    result = rerun_tool_call(_call("raise SystemExit(3)", "exit code 3"), sandbox)
    assert result.matches and result.output == "exit code 3"


def test_calls_that_cannot_run():
    assert not rerun_tool_call(ToolCallView(1, 0, None, None, "bad_json", "x"), None).ran
    assert "only python" in rerun_tool_call(_call("1", "x", name="zoom"), None).output
    assert max_output_chars_from_run({"task": {"env_kwargs": {"max_tool_output_chars": 9}}}) == 9
