"""Bounded I/O with one sandboxed process tree: feed stdin, capture output, enforce the clock.

Everything happens in the calling thread with one ``selectors`` loop, so concurrent
executions share no state. The same loop serves both execution paths of the local backend:
a spawned ``unshare`` tree (status pipe, ends at end of file) and a warm worker (status
lines on its control socket, ends when the line of this execution arrived); they differ
only in the :class:`Channels` they pass. At most ``max_bytes`` of each output stream are
kept; one byte more stops the program (``overflow``), so gigabytes of output cost neither
memory nor time.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
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


@dataclass
class Channels:
    """The parent's side of one execution: its pipe ends and how to stop it."""

    stdin: int
    """Write end of the program's standard input."""
    stdout: int
    """Read end of the program's standard output."""
    stderr: int
    """Read end of the program's standard error."""
    status: int
    """Where the launcher or worker reports the end of the program (JSON lines)."""
    kill: Callable[[], None]
    """Kills the whole process tree of the execution (idempotent)."""
    close_stdin: Callable[[], None]
    """Closes ``stdin`` (idempotent): end of file for the program."""
    status_done: Callable[[bytearray], bool] | None = None
    """True once the status bytes are complete; None: complete at end of file."""


class _Streams:
    """The parent's ends of stdin, stdout, stderr and the status channel, in one selector."""

    def __init__(self, channels: Channels, stdin: bytes) -> None:
        self.sel = selectors.DefaultSelector()
        self.stdin = memoryview(stdin)
        self.names: dict[int, str] = {}
        self.close_stdin = channels.close_stdin
        for name, fd in (("stdout", channels.stdout), ("stderr", channels.stderr),
                         ("status", channels.status)):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
            self.names[fd] = name
        self.stdin_fd = channels.stdin
        if stdin:
            os.set_blocking(self.stdin_fd, False)
            self.sel.register(self.stdin_fd, selectors.EVENT_WRITE)
        else:
            self._close_stdin()

    def readers_open(self) -> set[str]:
        return {self.names[k.fd] for k in self.sel.get_map().values() if k.fd in self.names}

    def drop(self, fd: int) -> None:
        self.sel.unregister(fd)

    def write_stdin(self) -> None:
        try:
            n = os.write(self.stdin_fd, self.stdin[:_CHUNK])
        except BlockingIOError:
            n = 0
        except OSError:  # the program closed stdin or exited: drop the rest
            n = len(self.stdin)
        self.stdin = self.stdin[n:]
        if not self.stdin:
            self.drop(self.stdin_fd)
            self._close_stdin()

    def _close_stdin(self) -> None:
        self.close_stdin()  # EOF for the program
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


def _read(fd: int) -> bytes | None:
    """One chunk (one message for a socket); None when nothing is there after all."""
    try:
        return os.read(fd, _CHUNK)
    except BlockingIOError:
        return None
    except ConnectionResetError:  # a worker's control socket whose peer vanished
        return b""


def pump(channels: Channels, stdin: bytes, deadline: float, max_bytes: int) -> PumpOutcome:
    """Drive one execution until its output ends, killing it at ``deadline`` or on overflow.

    Args:
        channels: the parent's pipe ends and callbacks (the caller closes the fds).
        stdin: bytes fed to the program's standard input.
        deadline: ``time.monotonic()`` value at which the tree is killed.
        max_bytes: bytes kept per output stream.

    Returns:
        The captured output and which parent-side limit fired.
    """
    out = PumpOutcome()
    streams = _Streams(channels, stdin)
    hard_stop = None
    try:
        while streams.readers_open():
            now = time.monotonic()
            if hard_stop is None and now >= deadline:
                out.timed_out = True
                channels.kill()
                hard_stop = now + _KILL_GRACE_S
            if hard_stop is not None and now >= hard_stop:
                break
            wait = (hard_stop if hard_stop is not None else deadline) - now
            for key, _ in streams.sel.select(timeout=max(wait, 0.0)):
                if key.fd == streams.stdin_fd:
                    streams.write_stdin()
                    continue
                name = streams.names[key.fd]
                data = _read(key.fd)
                if data is None:
                    continue
                if data and _take(out, name, data, max_bytes) and hard_stop is None:
                    out.overflow = True
                    channels.kill()
                    hard_stop = time.monotonic() + _KILL_GRACE_S
                ended = not data or (name == "status" and channels.status_done is not None
                                     and channels.status_done(out.status))
                if ended:
                    streams.drop(key.fd)
                    if name == "status" and hard_stop is None:
                        hard_stop = time.monotonic() + _EXIT_GRACE_S
    finally:
        streams.close()
    return out
