"""Configuration of the code sandbox, shared by every backend.

Nothing here reads the environment: the E2B key arrives through ``e2b_api_key``, filled in by
:func:`reopold_agent.sandbox.make_sandbox` (or ``cli.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

_BACKENDS = ("local", "e2b")
HOME = "~"
"""Entry of ``hide_paths`` standing for the calling user's home directory."""
DEFAULT_HIDE_PATHS = (HOME, "/home", "/root", "/run", "/var/tmp", "/var/lib", "/var/spool",
                      "/var/mail", "/var/log", "/var/cache", "/var/backups", "/dev/shm",
                      "/dev/mqueue", "/mnt", "/media", "/srv", "/boot", "/lost+found")
"""What the local sandbox hides by default: private files of users (their home directories,
the caller's wherever it is), system state and logs, world-writable places that can hold unix
sockets or shared memory (``/tmp`` is replaced by the sandbox's own), and mount points."""
_MAX_UID = 2**32 - 2


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"SandboxConfig.{name} {message}")


def _positive_int(value: object, name: str, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    _require(ok, name, f"must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class SandboxConfig:
    """How code runs: which backend and which limits. Validated on construction."""

    backend: Literal["local", "e2b"] = "local"
    """Which backend runs the code: "local" (namespaces) or "e2b" (E2B cloud)."""
    timeout_s: float = 10.0
    """Default wall-clock limit of one execution in seconds (``run`` may override it)."""
    cpu_time_s: int = 10
    """RLIMIT_CPU of each sandboxed process in seconds (local backend)."""
    memory_mb: int = 1024
    """RLIMIT_AS (address space) of each sandboxed process in MiB (local backend)."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: the largest file a program may write, in MiB (local backend)."""
    workdir_mb: int = 64
    """Size of the private tmpfs mounted as the working directory, in MiB (local backend)."""
    max_open_files: int = 64
    """RLIMIT_NOFILE of each sandboxed process (local backend)."""
    max_processes: int = 32
    """RLIMIT_NPROC: processes one execution may have at once (local backend)."""
    max_output_bytes: int = 16384
    """Bytes kept of stdout and of stderr each; more output stops the program (limit OUTPUT)."""
    warm_workers: int = 4
    """Local backend: long-lived isolated workers that fork each program from a warm
    interpreter (several times the throughput of one ``unshare`` per execution; see
    ``local.py`` for what executions of one worker share). 0 spawns fresh namespaces and a
    fresh interpreter per execution. More concurrent runs than workers wait for one; the
    wait counts against their wall limit."""
    allow_unisolated: bool = False
    """If namespaces are unavailable, run anyway with only rlimits, timeout and a temp dir.
    UNSAFE: the code can then read and write whatever the calling user can, and reach the
    network. Off by default: without isolation the local backend refuses to run."""
    python_executable: str | None = None
    """Interpreter that runs the code; None picks /usr/bin/python3 or /usr/local/bin/python3.
    When the caller is root it must be usable by an unprivileged uid (not under /root)."""
    uid_base: int = 1_500_000_000
    """First uid of the range the root-run local backend draws one uid per execution from."""
    uid_count: int = 65536
    """Size of that uid range (no two concurrent executions of one sandbox share a uid)."""
    hide_paths: tuple[str, ...] = DEFAULT_HIDE_PATHS
    """Directories covered by an empty read-only tmpfs inside the sandbox (local backend):
    absolute paths, or ``"~"`` for the calling user's home directory (from the password
    database). The default hides home directories, world-writable spool and temp places
    (unix sockets there are reachable through a network namespace) and mount points; see
    ``docs/sandbox.md`` for what a program can see. A YAML list is accepted (kept as a tuple).
    The interpreter's own prefix stays visible read-only even under a hidden directory."""
    e2b_template: str | None = None
    """E2B template name or id; None uses the code-interpreter default."""
    e2b_api_key: str | None = field(default=None, repr=False)
    """E2B API key; None makes the e2b backend refuse with SandboxUnavailable."""

    def __post_init__(self) -> None:
        _require(self.backend in _BACKENDS, "backend", f"must be one of {_BACKENDS}, "
                 f"got {self.backend!r}")
        timeout_ok = isinstance(self.timeout_s, (int, float)) and not isinstance(
            self.timeout_s, bool) and math.isfinite(self.timeout_s) and self.timeout_s > 0
        _require(timeout_ok, "timeout_s", f"must be a finite number > 0, got {self.timeout_s!r}")
        _positive_int(self.cpu_time_s, "cpu_time_s")
        _positive_int(self.memory_mb, "memory_mb", minimum=64)
        _positive_int(self.file_size_mb, "file_size_mb")
        _positive_int(self.workdir_mb, "workdir_mb")
        _positive_int(self.max_open_files, "max_open_files", minimum=16)
        _positive_int(self.max_processes, "max_processes")
        _positive_int(self.max_output_bytes, "max_output_bytes")
        _positive_int(self.warm_workers, "warm_workers", minimum=0)
        _require(isinstance(self.allow_unisolated, bool), "allow_unisolated",
                 f"must be a bool, got {self.allow_unisolated!r}")
        _require(self.python_executable is None or (
            isinstance(self.python_executable, str) and self.python_executable.startswith("/")),
            "python_executable", f"must be None or an absolute path, got "
            f"{self.python_executable!r}")
        _positive_int(self.uid_base, "uid_base")
        _positive_int(self.uid_count, "uid_count")
        _require(self.uid_base + self.uid_count - 1 <= _MAX_UID, "uid_count",
                 f"puts the uid range past {_MAX_UID}")
        if isinstance(self.hide_paths, list):  # as YAML writes it
            object.__setattr__(self, "hide_paths", tuple(self.hide_paths))
        paths_ok = isinstance(self.hide_paths, tuple) and all(
            isinstance(p, str) and (p == HOME or (p.startswith("/") and p != "/"))
            for p in self.hide_paths)
        _require(paths_ok, "hide_paths", f"must be a list of absolute paths other than '/' "
                 f"(or '~'), got {self.hide_paths!r}")
        for name in ("e2b_template", "e2b_api_key"):
            value = getattr(self, name)
            _require(value is None or (isinstance(value, str) and value != ""), name,
                     "must be None or a non-empty string")

    def with_overrides(self, **changes: object) -> SandboxConfig:
        """Return a copy with ``changes`` applied (validated like the original).

        Args:
            **changes: field names and their new values.
        """
        from dataclasses import replace

        return replace(self, **changes)
