"""Turning what the parent saw into a :class:`SandboxResult`, and the isolation self-test.

Which limit fired is decided from evidence the program cannot forge where possible (our own
timer and output counter, the wait status and CPU time reported by the launcher over a pipe
the program never sees) and otherwise from the error the interpreter printed last
(``MemoryError``, ``EAGAIN`` on fork, ``EFBIG``/``ENOSPC`` on write). A program can fake the
latter only to mislabel its own failure.
"""

from __future__ import annotations

import json
import os
import signal

from reopold_agent.sandbox._pump import PumpOutcome
from reopold_agent.sandbox.base import SandboxLimit, SandboxResult

_CPU_SLACK_S = 0.1
"""A SIGKILL counts as the CPU limit when the program used at least limit - slack seconds."""

_STDERR_MARKERS = {
    "MemoryError": SandboxLimit.MEMORY,
    "[Errno 12] Cannot allocate memory": SandboxLimit.MEMORY,
    "[Errno 11] Resource temporarily unavailable": SandboxLimit.PROCESSES,
    "can't start new thread": SandboxLimit.PROCESSES,
    "[Errno 27] File too large": SandboxLimit.FILE_SIZE,
    "[Errno 28] No space left on device": SandboxLimit.FILE_SIZE,
}

PROBE_CODE = """
import json, os, socket
with open("probe.txt", "w") as f:
    f.write("ok")
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    inet = "allowed"
except OSError as exc:
    inet = exc.errno
print(json.dumps({
    "pid": os.getpid(), "uid": os.getuid(), "cwd": os.getcwd(),
    "procs": sum(name.isdigit() for name in os.listdir("/proc")),
    "ifaces": sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]),
    "inet_socket": inet,
    "root_ro": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    "cap_eff": int(status["CapEff"].strip(), 16), "cap_bnd": int(status["CapBnd"].strip(), 16),
    "no_new_privs": status["NoNewPrivs"].strip() == "1",
    "seccomp": status.get("Seccomp", "").strip(),
}))
"""
"""Run once per sandbox through the real pipeline; its output is checked by probe_failure."""


def parse_status(raw: bytes) -> dict:
    """Merge the JSON lines the launcher wrote; a ``setup_error`` line wins."""
    merged: dict = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            merged = {**item, **merged} if "setup_error" in merged else {**merged, **item}
    return merged


def _limit_from_stderr(stderr: str) -> SandboxLimit:
    best, where = SandboxLimit.NONE, -1
    for marker, limit in _STDERR_MARKERS.items():
        pos = stderr.rfind(marker)
        if pos > where:
            best, where = limit, pos
    return best


def classify(out: PumpOutcome, status: dict, exit_code: int | None, stderr: str,
             cpu_limit_s: int) -> SandboxLimit:
    """Name the limit that stopped the program.

    Args:
        out: the parent's view (timer, output counter).
        status: the launcher's report (``wait_status``, ``cpu_s``).
        exit_code: the program's exit status, negative for a signal.
        stderr: the captured standard error.
        cpu_limit_s: the RLIMIT_CPU soft limit in force.
    """
    if out.timed_out:
        return SandboxLimit.WALL_TIMEOUT
    if out.overflow:
        return SandboxLimit.OUTPUT
    if exit_code is None or exit_code == 0:
        return SandboxLimit.NONE
    used_all_cpu = status.get("cpu_s", 0.0) >= cpu_limit_s - _CPU_SLACK_S
    if exit_code == -signal.SIGXCPU or (exit_code == -signal.SIGKILL and used_all_cpu):
        return SandboxLimit.CPU_TIME
    if exit_code == -signal.SIGXFSZ:
        return SandboxLimit.FILE_SIZE
    return _limit_from_stderr(stderr)


def _decode(data: bytes) -> str:
    return bytes(data).decode("utf-8", "replace")


def build_result(out: PumpOutcome, returncode: int | None, duration_s: float,
                 cpu_limit_s: int) -> SandboxResult:
    """Assemble the structured result of one execution.

    Args:
        out: what the parent captured.
        returncode: exit status of the process the parent started (unshare or launcher).
        duration_s: wall-clock seconds of the execution.
        cpu_limit_s: the RLIMIT_CPU soft limit in force.
    """
    status = parse_status(out.status)
    stderr = _decode(out.stderr)
    if "setup_error" in status:
        stderr = f"{stderr}sandbox setup failed: {status['setup_error']}\n"
        exit_code = None
    elif "wait_status" in status:
        exit_code = os.waitstatus_to_exitcode(status["wait_status"])
    elif out.timed_out or out.overflow:
        exit_code = -signal.SIGKILL
    else:
        exit_code = returncode  # the launcher died before reporting (should not happen)
    limit = classify(out, status, exit_code, stderr, cpu_limit_s)
    return SandboxResult(stdout=_decode(out.stdout), stderr=stderr, exit_code=exit_code,
                         limit=limit, duration_s=duration_s,
                         stdout_truncated=out.stdout_truncated,
                         stderr_truncated=out.stderr_truncated)


def probe_failure(result: SandboxResult, *, expect_root_inside: bool,
                  warm: bool = False) -> str | None:
    """Check the probe's report; return what is wrong, or None if isolation holds.

    Args:
        result: the outcome of running :data:`PROBE_CODE` isolated.
        expect_root_inside: True with a user namespace (the program is uid 0 there, with no
            capabilities), False when root drops to an unprivileged uid.
        warm: the probe ran on a warm worker (its server is pid 1).
    """
    if not result.ok:
        tail = (result.stderr.strip() or result.stdout.strip())[-800:]
        hint = " (is python_executable runnable by an unprivileged uid, outside 0700 " \
               "directories such as /root?)" if result.exit_code in (126, 127) else ""
        return f"the isolated probe failed (exit {result.exit_code}, limit " \
               f"{result.limit.value}): {tail}{hint}"
    try:
        seen = json.loads(result.stdout)
    except ValueError:
        return f"the isolated probe printed {result.stdout[:200]!r}"
    checks = {
        "pid namespace (only the probe and its parent)": seen["procs"] <= 2 and (
            seen["pid"] >= 2 if warm else seen["pid"] == 2),
        "private work directory": seen["cwd"] == "/tmp",
        "network namespace (only 'lo')": seen["ifaces"] in (["lo"], []),
        "read-only root filesystem": seen["root_ro"],
        "no capabilities": seen["cap_eff"] == 0 and seen["cap_bnd"] == 0,
        "no_new_privs": seen["no_new_privs"],
        "seccomp filter": seen.get("seccomp") == "2",
        "socket families other than AF_UNIX denied": seen.get("inet_socket") == 1,
        "unprivileged uid": (seen["uid"] == 0) == expect_root_inside,
    }
    failed = [name for name, ok in checks.items() if not ok]
    return f"isolation checks failed: {', '.join(failed)} (saw {seen})" if failed else None
