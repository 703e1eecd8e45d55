"""Which limit fired, from hand-made evidence; parsing of the launcher's status."""

from __future__ import annotations

import json
import signal

import pytest

from reopold_agent.sandbox._pump import PumpOutcome
from reopold_agent.sandbox._verdict import build_result, classify, parse_status, probe_failure
from reopold_agent.sandbox.base import SandboxLimit, SandboxResult


def _status(**kw) -> bytearray:
    return bytearray(json.dumps(kw).encode() + b"\n")


@pytest.mark.parametrize(("exit_code", "cpu_s", "stderr", "expected"), [
    (0, 0.1, "MemoryError", SandboxLimit.NONE),                   # caught, exited 0
    (-signal.SIGXCPU, 2.0, "", SandboxLimit.CPU_TIME),
    (-signal.SIGKILL, 2.95, "", SandboxLimit.CPU_TIME),           # hard limit: 3 - 0.05 >= 3 - 0.1
    (-signal.SIGKILL, 0.5, "", SandboxLimit.NONE),                # killed by someone else
    (-signal.SIGXFSZ, 0.0, "", SandboxLimit.FILE_SIZE),
    (1, 0.0, "Traceback ...\nMemoryError\n", SandboxLimit.MEMORY),
    (1, 0.0, "BlockingIOError: [Errno 11] Resource temporarily unavailable",
     SandboxLimit.PROCESSES),
    (1, 0.0, "RuntimeError: can't start new thread", SandboxLimit.PROCESSES),
    (1, 0.0, "OSError: [Errno 27] File too large", SandboxLimit.FILE_SIZE),
    (1, 0.0, "OSError: [Errno 28] No space left on device", SandboxLimit.FILE_SIZE),
    (1, 0.0, "MemoryError\n...\nOSError: [Errno 27] File too large", SandboxLimit.FILE_SIZE),
    (1, 0.0, "ValueError: x", SandboxLimit.NONE),
])
def test_classify(exit_code, cpu_s, stderr, expected):
    assert classify(PumpOutcome(), {"cpu_s": cpu_s}, exit_code, stderr, 3) is expected


def test_parent_side_limits_win():
    assert classify(PumpOutcome(timed_out=True, overflow=True), {}, -9, "MemoryError", 3) \
        is SandboxLimit.WALL_TIMEOUT
    assert classify(PumpOutcome(overflow=True), {}, -9, "", 3) is SandboxLimit.OUTPUT


def test_parse_status_setup_error_wins():
    raw = b'{"setup_error": "mount failed"}\nnot json\n{"wait_status": 256, "cpu_s": 0.1}\n'
    assert parse_status(raw)["setup_error"] == "mount failed"
    assert parse_status(b'{"wait_status": 256}\n') == {"wait_status": 256}


def test_build_result_decodes_wait_status():
    out = PumpOutcome(stdout=bytearray(b"hi\n"), status=_status(wait_status=3 << 8, cpu_s=0.0))
    result = build_result(out, 0, 0.5, 3)
    assert (result.stdout, result.exit_code, result.limit) == ("hi\n", 3, SandboxLimit.NONE)
    killed = build_result(PumpOutcome(status=_status(wait_status=signal.SIGXCPU)), 0, 1.0, 3)
    assert (killed.exit_code, killed.limit) == (-signal.SIGXCPU, SandboxLimit.CPU_TIME)


def test_build_result_setup_error_never_started():
    result = build_result(PumpOutcome(status=_status(setup_error="mount: EPERM")), 1, 0.1, 3)
    assert result.exit_code is None and "sandbox setup failed: mount: EPERM" in result.stderr


def test_build_result_timeout_without_report_is_sigkill():
    result = build_result(PumpOutcome(timed_out=True), -9, 1.0, 3)
    assert (result.exit_code, result.limit) == (-signal.SIGKILL, SandboxLimit.WALL_TIMEOUT)


def _probe_result(**seen) -> SandboxResult:
    base = {"pid": 2, "procs": 2, "uid": 1500000000, "cwd": "/tmp", "ifaces": ["lo"],
            "root_ro": True, "cap_eff": 0, "cap_bnd": 0, "no_new_privs": True,
            "seccomp": "2", "inet_socket": 1}
    return SandboxResult(json.dumps({**base, **seen}), "", 0, SandboxLimit.NONE, 0.1)


def test_probe_failure_checks_each_property():
    assert probe_failure(_probe_result(), expect_root_inside=False) is None
    assert "pid namespace" in probe_failure(_probe_result(pid=4711), expect_root_inside=False)
    assert "network" in probe_failure(_probe_result(ifaces=["eth0", "lo"]),
                                      expect_root_inside=False)
    assert "read-only" in probe_failure(_probe_result(root_ro=False), expect_root_inside=False)
    assert "capabilities" in probe_failure(_probe_result(cap_bnd=1), expect_root_inside=False)
    assert "unprivileged uid" in probe_failure(_probe_result(uid=0), expect_root_inside=False)
    assert "seccomp" in probe_failure(_probe_result(seccomp="0"), expect_root_inside=False)
    assert "AF_UNIX" in probe_failure(_probe_result(inet_socket="allowed"),
                                      expect_root_inside=False)
    assert probe_failure(_probe_result(uid=0), expect_root_inside=True) is None


def test_probe_failure_of_a_warm_worker():
    assert probe_failure(_probe_result(pid=9, procs=2), expect_root_inside=False,
                         warm=True) is None
    assert "pid namespace" in probe_failure(_probe_result(pid=9, procs=3),  # one process too many
                                            expect_root_inside=False, warm=True)
    assert "pid namespace" in probe_failure(_probe_result(pid=9, procs=40),
                                            expect_root_inside=False, warm=True)
    assert "pid namespace" in probe_failure(_probe_result(pid=1, procs=1),
                                            expect_root_inside=False, warm=True)
    assert "work directory" in probe_failure(_probe_result(pid=9, procs=2, cwd="/"),
                                             expect_root_inside=False, warm=True)
