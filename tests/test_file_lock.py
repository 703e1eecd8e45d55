import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from reopold_agent.file_lock import FileLock, LockHeld, read_holder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _holder_process(path, *, hold_s: float = 60.0) -> subprocess.Popen:
    """A separate process that takes the lock, prints "held", and keeps it for ``hold_s``."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from reopold_agent.file_lock import FileLock
        lock = FileLock({str(path)!r}).acquire()
        print("held", flush=True)
        time.sleep({hold_s})
        lock.release()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_taker_is_refused_naming_the_holder_and_release_removes_the_file(tmp_path):
    path = tmp_path / ".lock"
    first = FileLock(path).acquire()
    assert read_holder(path).pid == os.getpid()
    with pytest.raises(LockHeld, match=f"held by pid {os.getpid()}"):
        FileLock(path).acquire()
    first.release()
    assert not path.exists()
    with FileLock(path) as again:
        assert again.held and again.stale_pid is None


def test_the_lock_of_a_killed_holder_is_taken_over_and_reported(tmp_path):
    path = tmp_path / ".lock"
    proc = _holder_process(path)
    with pytest.raises(LockHeld, match=f"pid {proc.pid}"):
        FileLock(path).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.exists()  # the dead holder could not remove it
    lock = FileLock(path).acquire()
    assert lock.stale_pid == proc.pid and read_holder(path).pid == os.getpid()
    lock.release()


def test_a_waiting_taker_gets_the_lock_when_the_holder_ends(tmp_path):
    path = tmp_path / ".lock"
    proc = _holder_process(path, hold_s=1.0)
    waited = []
    start = time.monotonic()
    lock = FileLock(path).acquire(wait=True, poll_s=0.05, on_wait=waited.append)
    assert time.monotonic() - start > 0.3
    assert [h.pid for h in waited] == [proc.pid]
    assert lock.stale_pid is None  # the holder released cleanly
    lock.release()
    proc.wait()


def test_takers_racing_a_release_never_hold_the_lock_together(tmp_path):
    """Threads take and release one lock file many times; at most one holds it at any moment."""
    path = tmp_path / ".lock"
    inside, overlaps = [0], []
    guard = threading.Lock()

    def worker():
        for _ in range(40):
            lock = FileLock(path).acquire(wait=True, poll_s=0.001)
            with guard:
                inside[0] += 1
                overlaps.append(inside[0])
            time.sleep(0.0005)
            with guard:
                inside[0] -= 1
            lock.release()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 120 and max(overlaps) == 1
