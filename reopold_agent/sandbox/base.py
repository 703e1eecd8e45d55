"""The code-sandbox interface shared by every backend (local namespaces, E2B).

A sandbox runs one Python program and returns a :class:`SandboxResult`. Limits that fire are
reported as data (``limit``), never raised: hostile or broken model code is an observation.
Only configuration problems (isolation unavailable, missing API key) raise
:class:`SandboxUnavailable`, before anything runs.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class SandboxLimit(str, enum.Enum):
    """Which limit stopped a program (``NONE`` when it exited on its own)."""

    NONE = "none"
    WALL_TIMEOUT = "wall_timeout"
    CPU_TIME = "cpu_time"
    MEMORY = "memory"
    FILE_SIZE = "file_size"
    PROCESSES = "processes"
    OUTPUT = "output"


class SandboxUnavailable(RuntimeError):
    """The requested sandbox cannot run here (no isolation, no API key, ...)."""


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed execution."""

    stdout: str
    """Captured standard output, truncated to the configured limit."""
    stderr: str
    """Captured standard error, truncated to the configured limit."""
    exit_code: int | None
    """Process exit status; negative for a signal; None if it never started."""
    limit: SandboxLimit
    """The limit that fired, or SandboxLimit.NONE."""
    duration_s: float
    """Wall-clock seconds from the program's start to the end of its process tree."""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    queue_wait_s: float = 0.0
    """Seconds the call waited for a free worker before the program started; they count
    against the wall limit, so ``queue_wait_s + duration_s`` stays within it (plus the time
    to stop the program)."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.limit is SandboxLimit.NONE


class Sandbox(abc.ABC):
    """Runs untrusted Python code. Implementations must be safe to call from many threads."""

    @abc.abstractmethod
    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> SandboxResult:
        """Run ``code`` as a Python program and return what happened.

        Args:
            code: Python source to execute as ``__main__``.
            stdin: text fed to the program's standard input.
            timeout_s: wall-clock limit overriding the configured default, counted from
                this call (time spent waiting for a free worker is part of it).
        """

    def close(self) -> None:  # pragma: no cover - backends with resources override
        """Release backend resources."""
