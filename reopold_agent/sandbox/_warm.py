"""Host side of warm sandbox workers: one worker per namespace set, a pool of them.

A :class:`WarmWorker` is one ``unshare ... python -I -u _forkserver.py`` process tree (see
``_forkserver.py``) and the host end of its SOCK_SEQPACKET control socket. One execution:
the host creates the stdin/stdout/stderr pipes and a memfd holding the code, passes the
worker's ends over the socket (``SCM_RIGHTS``) and pumps its own ends exactly like the
spawn path; the wall timeout and the output limit send ``{"kill": rid}``. The worker answers
with one status line once every process of the execution is dead. A worker that does not
answer within the kill grace, dies, or breaks the protocol is killed as a whole (its
namespaces die with it) and never reused; its execution is reported as a failure.

:class:`WarmPool` lends workers to threads: it starts them lazily up to ``size``, replaces
dead ones, and makes callers wait when all are busy (a program that sleeps until its
timeout holds its worker that long); a caller waits at most until its own deadline.

Isolation, compared with spawning per execution (``local.py``). The server keeps its
privileges inside its namespaces (like the spawn path's launcher, but for the worker's
life); the program drops them exactly as there. Per execution: a fresh IPC namespace (SysV
and POSIX IPC objects die with it), a uid from the pool as root (distinct for concurrent
executions), the kernel key syscalls denied (seccomp), every other process of the pid
namespace killed and reaped, and the worker's tmpfs ``/tmp`` emptied and reset (owner, mode,
extended attributes, times) before the result is reported; if that fails, the worker is
retired. Shared by the executions of one worker, one at a time: that
``/tmp`` (its size limit; no mount is made or torn down per execution, since tearing a mount
down waits for an RCU grace period, which on a loaded 2-vCPU VM sometimes stalls every
worker for ~230 ms), the mount namespace (read-only mounts), the network namespace (no
interface up), the uts namespace, and with a user namespace the uid (0 inside,
no capabilities; RLIMIT_NPROC then also counts the server, and the program cannot signal
it: the kernel drops signals to a namespace's pid 1 from inside unless it has a handler).
The server is non-dumpable: no ptrace, ``/proc/1/mem``, ``environ`` or ``fd`` access.

Forking without ``exec`` (the source of the speed) means, for a program:

* ``sys.modules`` starts with what the server imported (stdlib only: ``ctypes``, ``json``,
  ``socket``, ``select`` and their dependencies) plus ``_forkchild`` and ``_launcher``, and
  its address space starts ~2-3 MiB larger than a fresh interpreter's (RLIMIT_AS counts it);
  before serving, the server compiles and runs one fixed program of ours
  (``_forkchild.warm_up``: it imports nothing), so first-use state is shared, not rebuilt;
* every program of a worker sees the same str hash seed and address-space layout
  (``random`` is not imported by the server, so its seed is fresh per program);
* objects are not finalized at exit (``atexit`` handlers and non-daemon threads do run);
* the server never reads a program, its input or output (they travel as fds between the
  host and the program) nor a name it left in ``/tmp`` (a short-lived helper removes
  those), so the memory a program inherits holds nothing of earlier executions but
  request numbers, uids and exit statuses.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reopold_agent.sandbox._pump import Channels, PumpOutcome, pump
from reopold_agent.sandbox.base import SandboxLimit, SandboxResult

_READY_TIMEOUT_S = 30.0
_CLOSE_WAIT_S = 1.0
_MAX_MESSAGE = 4096


class WorkerError(RuntimeError):
    """A warm worker could not start or stopped following the protocol."""


class NoFreeWorker(TimeoutError):
    """Every worker stayed busy until the caller's deadline."""


class _Fds:
    """Host-side fds of one execution; each closed exactly once."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        self.open.update((r, w))
        return r, w

    def close(self, fd: int) -> None:
        if fd in self.open:
            self.open.discard(fd)
            os.close(fd)

    def close_all(self) -> None:
        for fd in list(self.open):
            self.close(fd)


@dataclass(frozen=True)
class Call:
    """When one ``run`` call began and how long it may take in all."""

    start: float
    """``time.monotonic()`` at the call."""
    timeout_s: float
    """The call's wall limit in seconds, waiting for a worker included."""

    @property
    def deadline(self) -> float:
        return self.start + self.timeout_s

    def ran_out(self, what: str) -> SandboxResult:
        """The result of a call whose wall limit ran out before its program started."""
        waited = time.monotonic() - self.start
        return SandboxResult(
            stdout="", stderr=f"the program did not run: {what} its whole wall limit of "
            f"{self.timeout_s:g} s\n", exit_code=None, limit=SandboxLimit.WALL_TIMEOUT,
            duration_s=0.0, queue_wait_s=waited)


class WarmWorker:
    """One fork-server worker. Not thread-safe: one execution at a time (see WarmPool)."""

    def __init__(self, argv: list[str], spec: dict, env: dict[str, str]) -> None:
        """Start the worker and wait until it is ready.

        Args:
            argv: the ``unshare ... python -I -u _forkserver.py`` prefix (spec appended).
            spec: the worker spec (``hide_paths``, ``workdir_mb``, ``rlimits``, ...).
            env: the environment of the server, hence of every program it runs.

        Raises:
            WorkerError: the worker did not start or reported a setup error.
        """
        self._ctrl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._rid = 0
        self.healthy = True
        spec = {**spec, "ctrl_fd": theirs.fileno()}
        try:
            self.proc = subprocess.Popen(
                [*argv, json.dumps(spec, separators=(",", ":"))], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),),
                start_new_session=True, cwd="/", env=env)
        except OSError as exc:
            self._ctrl.close()
            raise WorkerError(f"could not start a warm worker: {exc}") from exc
        finally:
            theirs.close()
        try:
            self._await_ready()
        except BaseException:
            self.close()
            raise
        self.proc.stderr.close()  # only needed to explain a failed start

    def _await_ready(self) -> None:
        ready, _, _ = select.select([self._ctrl], [], [], _READY_TIMEOUT_S)
        message = self._ctrl.recv(_MAX_MESSAGE) if ready else b""
        try:
            reply = json.loads(message) if message else {}
        except ValueError:
            reply = {"setup_error": f"unreadable reply {message[:100]!r}"}
        if reply.get("ready") is True:
            self._ctrl.setblocking(False)
            return
        self._kill()
        why = reply.get("setup_error") or self.proc.stderr.read().decode("utf-8", "replace")
        raise WorkerError(f"the warm worker did not start: {why.strip() or 'no reason given'}")

    def hang_up(self) -> None:
        """Close the control socket: the worker kills what it runs and exits."""
        self.healthy = False
        self._ctrl.close()

    def alive(self) -> bool:
        return self.healthy and self.proc.poll() is None

    def execute(self, code: str, stdin: bytes, uid: int, deadline: float,
                max_bytes: int) -> PumpOutcome:
        """Run one program; every process of it is gone when this returns.

        Raises:
            WorkerError: the request could not be handed over (nothing ran; the worker is
                unhealthy now).
        """
        self._rid += 1
        rid, fds = self._rid, _Fds()
        try:
            stdin_r, stdin_w = fds.pipe()
            stdout_r, stdout_w = fds.pipe()
            stderr_r, stderr_w = fds.pipe()
            code_fd = os.memfd_create("main.py", os.MFD_CLOEXEC)
            fds.open.add(code_fd)
            os.write(code_fd, code.encode("utf-8"))
            self._hand_over(rid, uid, [stdin_r, stdout_w, stderr_w, code_fd])
            for fd in (stdin_r, stdout_w, stderr_w, code_fd):
                fds.close(fd)
            channels = Channels(stdin=stdin_w, stdout=stdout_r, stderr=stderr_r,
                                status=self._ctrl.fileno(), kill=lambda: self._request_kill(rid),
                                close_stdin=lambda: fds.close(stdin_w),
                                status_done=lambda buf: _has_rid(buf, rid))
            out = pump(channels, stdin, deadline, max_bytes)
        finally:
            if not self.healthy:
                self._kill()
            fds.close_all()
        out.status = _lines_of(out.status, rid)
        if not out.status:  # no answer: the worker died or stalled; it takes the blame
            self.healthy = False
            self._kill()
        elif any(json.loads(line).get("retire_worker") for line in out.status.splitlines()):
            self.healthy = False  # /tmp could not be emptied: no next execution here
        return out

    def _hand_over(self, rid: int, uid: int, fds: list[int]) -> None:
        message = json.dumps({"rid": rid, "uid": uid}).encode()
        try:
            socket.send_fds(self._ctrl, [message], fds)
        except OSError as exc:
            self.healthy = False
            raise WorkerError(f"the warm worker is gone: {exc}") from exc

    def _request_kill(self, rid: int) -> None:
        try:
            self._ctrl.send(json.dumps({"kill": rid}).encode())
        except OSError:
            self.healthy = False
            self._kill()

    def _kill(self) -> None:
        """SIGKILL unshare and the server; the namespace, with everything in it, dies."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """Stop the worker: end of file first (it cleans up), SIGKILL if that is slow."""
        self.hang_up()
        try:
            self.proc.wait(_CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def _lines_of(raw: bytes | bytearray, rid: int) -> bytearray:
    """The status lines about request ``rid`` (a stale line of another request is dropped)."""
    kept = bytearray()
    for line in bytes(raw).splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and item.get("rid") == rid:
            kept += line + b"\n"
    return kept


def _has_rid(raw: bytes | bytearray, rid: int) -> bool:
    return bool(_lines_of(raw, rid))


class WarmPool:
    """Lends warm workers to threads; at most ``size`` exist, started when first needed."""

    def __init__(self, size: int, factory: Callable[[], WarmWorker]) -> None:
        self._size, self._factory = size, factory
        self._idle: list[WarmWorker] = []
        self._live = 0
        self._closed = False
        self._cond = threading.Condition()

    def borrow(self, deadline: float | None = None) -> WarmWorker:
        """Take an idle worker, start one if fewer than ``size`` exist, or wait.

        Args:
            deadline: ``time.monotonic()`` after which to stop waiting for a busy worker to
                come back; None waits as long as it takes. Starting a new worker is not
                interrupted by it.

        Raises:
            NoFreeWorker: every worker was still busy at ``deadline``.
            WorkerError: a new worker could not start.
            RuntimeError: the pool is closed.
        """
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("the sandbox is closed")
                if self._idle:
                    worker = self._idle.pop()
                    if worker.alive():
                        return worker
                    self._live -= 1
                    worker.close()
                    continue
                if self._live < self._size:
                    self._live += 1
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NoFreeWorker(f"all {self._size} sandbox workers were busy")
                self._cond.wait(left)
        try:
            return self._factory()
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def give_back(self, worker: WarmWorker) -> None:
        """Return a borrowed worker; an unhealthy one (or any, once closed) is stopped."""
        with self._cond:
            keep = worker.alive() and not self._closed
            if keep:
                self._idle.append(worker)
            else:
                self._live -= 1
            self._cond.notify()
        if not keep:
            worker.close()

    def close(self) -> None:
        """Stop the idle workers now and borrowed ones when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for worker in idle:
            worker.hang_up()  # all at once; then wait for each
        for worker in idle:
            worker.close()
