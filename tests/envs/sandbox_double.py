"""A test double of the code sandbox: runs a program in a plain subprocess with a timeout.

It exists only to exercise environment logic (tool calls, verifiers, gold trajectories). It
isolates nothing; the real sandboxes are tested in ``tests/sandbox``.
"""

from __future__ import annotations

import subprocess
import sys
import time

from reopold_agent.sandbox.base import Sandbox, SandboxLimit, SandboxResult


class SubprocessSandbox(Sandbox):
    """Runs code with ``python -I -S -c`` and a wall-clock timeout (no isolation: tests only)."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self.calls = 0

    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> SandboxResult:
        self.calls += 1
        limit_s = self.timeout_s if timeout_s is None else timeout_s
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], input=stdin,
                                  capture_output=True, text=True, timeout=limit_s)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return SandboxResult(out, "", None, SandboxLimit.WALL_TIMEOUT,
                                 time.perf_counter() - start)
        return SandboxResult(proc.stdout, proc.stderr, proc.returncode, SandboxLimit.NONE,
                             time.perf_counter() - start)
