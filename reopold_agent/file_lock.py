"""An exclusive lock held through a lock file, for one run directory or one model build.

The lock is an ``flock`` on the file, so the kernel drops it when its holder dies, however it
dies (``kill -9`` included): a lock file left behind by a dead process is stale by construction
and the next taker simply takes it, reporting the dead holder (:attr:`FileLock.stale_pid`). The
file holds the holder's pid and host, so a refused taker can say who holds the lock.

Releasing removes the file. A taker that opened the file before it was removed would then hold a
lock on a file no longer at the path while a later taker locks a new one; so after locking, the
taker checks that the path still names the file it locked, and starts over if it does not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path


class LockHeld(Exception):
    """Another live process holds the lock; the message names the file and the holder."""


@dataclass(frozen=True)
class Holder:
    """Who wrote a lock file."""

    pid: int | None
    """Process id (None when the file could not be read)."""
    host: str
    """Host name of the process ("" when unknown)."""

    def __str__(self) -> str:
        if self.pid is None:
            return "another process"
        return f"pid {self.pid}" + (f" on {self.host}" if self.host and self.host != socket.gethostname() else "")


class FileLock:
    """Exclusive lock on ``path`` (a file created beside the thing it protects).

    Use as a context manager or with :meth:`acquire` / :meth:`release`.

    Args:
        path: the lock file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stale_pid: int | None = None
        """Pid written in a lock file whose holder had died, found when the lock was taken."""
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False, poll_s: float = 0.5, on_wait=None) -> "FileLock":
        """Take the lock.

        Args:
            wait: block until the lock is free; otherwise raise :class:`LockHeld` at once.
            poll_s: with ``wait``, seconds between attempts.
            on_wait: with ``wait``, called once with the :class:`Holder` before waiting.

        Raises:
            LockHeld: the lock is held by a live process and ``wait`` is False.
            OSError: the lock file cannot be created (e.g. a read-only folder).
        """
        told = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = read_holder(self.path)
                if not wait:
                    raise LockHeld(f"{self.path} is held by {holder}") from None
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
                time.sleep(poll_s)
                continue
            if not _same_file(fd, self.path):  # released and removed between our open and lock
                os.close(fd)
                continue
            previous = read_holder(self.path)
            if previous.pid is not None and previous.pid != os.getpid():
                self.stale_pid = previous.pid
            _write_holder(fd)
            self._fd = fd
            return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        except OSError:
            pass  # a read-only or vanished folder: the kernel still drops the lock below
        finally:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: str | Path) -> Holder:
    """The pid and host written in a lock file (``Holder(None, "")`` when unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return Holder(None, "")
    pid, _, host = text.strip().partition(" ")
    return Holder(int(pid), host) if pid.isdigit() else Holder(None, "")


def _write_holder(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
