"""E2BSandbox: key handling, mapping of E2B executions, and a live check when a key exists."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from e2b import TimeoutException
from e2b_code_interpreter.models import Execution, ExecutionError, Logs

from reopold_agent.sandbox import E2BSandbox, SandboxConfig, SandboxLimit, SandboxUnavailable


class _FakeCloud:
    """Stands in for an E2B sandbox: runs the wrapped code with a local interpreter."""

    def __init__(self, calls: list, hang: bool = False) -> None:
        self.calls, self.hang, self.killed = calls, hang, False

    def run_code(self, code: str, timeout: float) -> Execution:
        self.calls.append(("run_code", timeout))
        if self.hang:
            raise TimeoutException("Execution timed out")
        done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
        error = None
        if done.returncode != 0:
            error = ExecutionError(name="Error", value="", traceback=done.stderr)
        return Execution(logs=Logs(stdout=[done.stdout] if done.stdout else [],
                                   stderr=[]), error=error)

    def kill(self) -> None:
        self.killed = True


def _sandbox(config: SandboxConfig | None = None, hang: bool = False):
    calls: list = []
    clouds: list[_FakeCloud] = []

    def factory(**kwargs):
        calls.append(("create", kwargs))
        clouds.append(_FakeCloud(calls, hang))
        return clouds[-1]

    config = config or SandboxConfig(backend="e2b", timeout_s=7, e2b_template="my-tpl")
    return E2BSandbox(config, api_key="key-123", factory=factory), calls, clouds


def test_missing_key_is_refused_clearly():
    with pytest.raises(SandboxUnavailable, match="E2B_API_KEY"):
        E2BSandbox(SandboxConfig(backend="e2b"), factory=lambda **kw: None)


def test_run_creates_runs_and_kills():
    sandbox, calls, clouds = _sandbox()
    result = sandbox.run("import sys\nprint(sys.stdin.read().upper())", stdin="abc")
    assert result.ok and result.stdout == "ABC\n"
    assert calls[0] == ("create", {"timeout": 37, "api_key": "key-123", "template": "my-tpl"})
    assert calls[1] == ("run_code", 7)
    assert clouds[0].killed


def test_exit_codes_and_exceptions():
    sandbox, _, _ = _sandbox()
    assert sandbox.run("import sys\nsys.exit(0)").exit_code == 0
    failed = sandbox.run("raise KeyError('k')")
    assert failed.exit_code == 1 and "KeyError: 'k'" in failed.stderr
    assert sandbox.run("import sys\nsys.exit(3)").exit_code == 1


def test_timeout_is_reported():
    sandbox, _, clouds = _sandbox(hang=True)
    result = sandbox.run("while True: pass", timeout_s=1)
    assert result.limit is SandboxLimit.WALL_TIMEOUT and result.exit_code is None
    assert clouds[0].killed


def test_output_is_truncated():
    sandbox, _, _ = _sandbox(SandboxConfig(backend="e2b", max_output_bytes=10))
    result = sandbox.run("print('x' * 100)")
    assert result.stdout == "x" * 10 and result.stdout_truncated
    assert result.limit is SandboxLimit.OUTPUT


@pytest.mark.e2b
def test_live_e2b():
    key = os.environ.get("E2B_API_KEY")
    if not key:
        pytest.skip("E2B_API_KEY is not set")
    sandbox = E2BSandbox(SandboxConfig(backend="e2b", timeout_s=30), api_key=key)
    result = sandbox.run("import sys\nprint(sum(map(int, sys.stdin.read().split())))",
                         stdin="1 2 3")
    assert result.ok and result.stdout.strip() == "6"
