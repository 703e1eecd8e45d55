"""LocalSandbox without isolation: fail-closed refusal, the injectable probe, allow_unisolated."""

from __future__ import annotations

import pytest

from reopold_agent.sandbox import LocalSandbox, SandboxConfig, SandboxLimit, SandboxUnavailable


def _broken_probe(sandbox: LocalSandbox) -> None:
    raise SandboxUnavailable("simulated: kernel refused CLONE_NEWPID")


@pytest.mark.parametrize("unshare_path", ["/nonexistent/unshare", "/bin/false"])
def test_refuses_when_unshare_is_missing_or_fails(unshare_path):
    with pytest.raises(SandboxUnavailable, match="allow_unisolated") as info:
        LocalSandbox(SandboxConfig(), unshare_path=unshare_path)
    message = str(info.value)
    assert "refusing to run code" in message and "isolated execution is unavailable" in message


def test_refuses_an_interpreter_the_sandbox_uid_cannot_run(tmp_path):
    with pytest.raises(SandboxUnavailable, match="python_executable"):
        LocalSandbox(SandboxConfig(python_executable=str(tmp_path / "python3")))


def test_refusal_names_the_reason_from_the_probe():
    with pytest.raises(SandboxUnavailable, match="kernel refused CLONE_NEWPID"):
        LocalSandbox(SandboxConfig(), probe=_broken_probe)


def test_passing_probe_keeps_isolation_on():
    sandbox = LocalSandbox(SandboxConfig(), probe=lambda s: None)
    assert sandbox.isolated


@pytest.fixture(scope="module")
def unisolated() -> LocalSandbox:
    config = SandboxConfig(allow_unisolated=True, timeout_s=5, cpu_time_s=1)
    return LocalSandbox(config, unshare_path="/nonexistent/unshare")


def test_allow_unisolated_runs_without_isolation(unisolated):
    assert not unisolated.isolated
    result = unisolated.run("import sys, os\nprint(sys.stdin.read(), os.getcwd() != '/tmp')",
                            stdin="hi")
    assert result.ok and result.stdout == "hi True\n"


def test_unisolated_keeps_rlimits_and_timeout(unisolated):
    assert unisolated.run("x = bytearray(10 * 1024**3)").limit is SandboxLimit.MEMORY
    assert unisolated.run("while True: pass").limit is SandboxLimit.CPU_TIME
    slept = unisolated.run("import time\ntime.sleep(30)", timeout_s=1)
    assert slept.limit is SandboxLimit.WALL_TIMEOUT and slept.duration_s < 3


def test_unisolated_uses_a_private_temp_dir_that_is_removed(unisolated):
    import os

    result = unisolated.run("import os\nopen('f', 'w').write('x')\nprint(os.getcwd())")
    workdir = result.stdout.strip()
    assert os.path.basename(workdir).startswith("reopold-sandbox-")
    assert not os.path.exists(workdir)
