"""Bounded I/O with one sandboxed process tree: feed stdin, capture output, enforce the clock.

Everything happens in the calling thread with one ``selectors`` loop, so concurrent
executions share no state. At most ``max_bytes`` of each output stream are kept; one byte
more stops the program (``overflow``), so gigabytes of output cost neither memory nor time.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass, field

_CHUNK = 65536
_KILL_GRACE_S = 2.0
"""After a kill, how long to wait for the pipes to close before abandoning them."""
_EXIT_GRACE_S = 0.5
"""After the launcher reported, how long stray holders of the pipes may keep them open."""


@dataclass
class PumpOutcome:
    """What one execution produced, as seen from the parent."""

    stdout: bytearray = field(default_factory=bytearray)
    """Up to ``max_bytes`` of standard output."""
    stderr: bytearray = field(default_factory=bytearray)
    """Up to ``max_bytes`` of standard error."""
    status: bytearray = field(default_factory=bytearray)
    """Raw bytes the launcher wrote on the status pipe (JSON lines)."""
    timed_out: bool = False
    """The wall-clock deadline passed and the tree was killed."""
    overflow: bool = False
    """An output stream exceeded ``max_bytes`` and the tree was killed."""
    stdout_truncated: bool = False
    """Standard output had more than ``max_bytes``."""
    stderr_truncated: bool = False
    """Standard error had more than ``max_bytes``."""


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``proc`` (started with ``start_new_session``).

    With ``unshare --kill-child`` that also kills the namespace init, and with it every
    process of the pid namespace, including those that left the group with ``setsid``.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class _Streams:
    """The parent's ends of stdin, stdout, stderr and the status pipe, in one selector."""

    def __init__(self, proc: subprocess.Popen, status_r: int, stdin: bytes) -> None:
        self.sel = selectors.DefaultSelector()
        self.stdin = memoryview(stdin)
        self.names: dict[int, str] = {}
        for name, fd in (("stdout", proc.stdout.fileno()), ("stderr", proc.stderr.fileno()),
                         ("status", status_r)):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
            self.names[fd] = name
        self.stdin_fd = proc.stdin.fileno()
        if stdin:
            os.set_blocking(self.stdin_fd, False)
            self.sel.register(self.stdin_fd, selectors.EVENT_WRITE)
        else:
            self._close_stdin(proc)

    def readers_open(self) -> set[str]:
        return {self.names[k.fd] for k in self.sel.get_map().values() if k.fd in self.names}

    def drop(self, fd: int) -> None:
        self.sel.unregister(fd)

    def write_stdin(self, proc: subprocess.Popen) -> None:
        try:
            n = os.write(self.stdin_fd, self.stdin[:_CHUNK])
        except BlockingIOError:
            n = 0
        except OSError:  # the program closed stdin or exited: drop the rest
            n = len(self.stdin)
        self.stdin = self.stdin[n:]
        if not self.stdin:
            self.drop(self.stdin_fd)
            self._close_stdin(proc)

    def _close_stdin(self, proc: subprocess.Popen) -> None:
        proc.stdin.close()  # EOF for the program
        self.stdin_fd = -1

    def close(self) -> None:
        self.sel.close()


def _take(out: PumpOutcome, name: str, data: bytes, max_bytes: int) -> bool:
    """Append ``data`` to stream ``name``; return True if the stream overflowed."""
    if name == "status":
        out.status += data[: 65536 - len(out.status)]
        return False
    buf = out.stdout if name == "stdout" else out.stderr
    room = max_bytes - len(buf)
    buf += data[:room]
    if len(data) > room:
        setattr(out, f"{name}_truncated", True)
        return True
    return False


def pump(proc: subprocess.Popen, status_r: int, stdin: bytes, deadline: float,
         max_bytes: int) -> PumpOutcome:
    """Drive ``proc`` until its output pipes close, killing it at ``deadline`` or on overflow.

    Args:
        proc: the started process, with stdin/stdout/stderr pipes and its own session.
        status_r: read end of the launcher's status pipe (closed by the caller).
        stdin: bytes fed to the program's standard input.
        deadline: ``time.monotonic()`` value at which the tree is killed.
        max_bytes: bytes kept per output stream.

    Returns:
        The captured output and which parent-side limit fired.
    """
    out = PumpOutcome()
    streams = _Streams(proc, status_r, stdin)
    hard_stop = None
    try:
        while streams.readers_open():
            now = time.monotonic()
            if hard_stop is None and now >= deadline:
                out.timed_out = True
                kill_tree(proc)
                hard_stop = now + _KILL_GRACE_S
            if hard_stop is not None and now >= hard_stop:
                break
            wait = (hard_stop if hard_stop is not None else deadline) - now
            for key, _ in streams.sel.select(timeout=max(wait, 0.0)):
                if key.fd == streams.stdin_fd:
                    streams.write_stdin(proc)
                    continue
                name = streams.names[key.fd]
                try:
                    data = os.read(key.fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    streams.drop(key.fd)
                    if name == "status" and hard_stop is None:
                        hard_stop = time.monotonic() + _EXIT_GRACE_S
                elif _take(out, name, data, max_bytes) and hard_stop is None:
                    out.overflow = True
                    kill_tree(proc)
                    hard_stop = time.monotonic() + _KILL_GRACE_S
    finally:
        streams.close()
    return out
