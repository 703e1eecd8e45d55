"""Warm sandbox worker: a fork server that is pid 1 of its namespaces; standard library only.

Run by :mod:`reopold_agent.sandbox._warm` as ``python -I -u _forkserver.py SPEC_JSON`` under
``unshare --pid --fork --kill-child --mount-proc --net --ipc --uts [--user --map-root-user]``.
The server (pid 1, "Z") refuses to run anywhere but as pid 1, ignores INT/TERM/HUP (the
kernel already drops other signals sent to a namespace init from inside), makes itself
non-dumpable (no ptrace, no /proc/1/mem or fd access for the program), makes every mount
read-only, hides ``hide_paths``, mounts the worker's tmpfs on ``/tmp``, empties its
capability bounding set (it never execs; its programs inherit the empty set), warms up (see
``_forkchild.warm_up``) and says ``{"ready": true}`` on the control socket (the fd
``ctrl_fd``, a SOCK_SEQPACKET socket shared with the host). Then, per request
``{"rid": n, "uid": u}`` carrying the fds stdin-read, stdout-write, stderr-write and a memfd
with the code, Z:

* forks the program (``_forkchild.run_child``) and waits for it to end or for
  ``{"kill": n}`` from the host (wall timeout, output limit);
* kills every other process of the pid namespace (``kill(-1, SIGKILL)`` from pid 1 spares
  only pid 1) and reaps them all until none is left;
* empties ``/tmp`` (``_launcher.reset_workdir``: a program that left nothing but
  ``main.py`` costs an unlink and a reset; anything else is removed by a short-lived forked
  helper, so Z never reads a name the program chose);
* only then sends one line ``{"rid": n, "wait_status": .., "cpu_s": ..}`` (or
  ``{"rid": n, "setup_error": ..}``), with ``"retire_worker": true`` if ``/tmp`` could not be
  emptied.

Z never reads a program, its input, its output or a name it left (all travel as fds between
the host and the program), so the interpreter the programs are forked from holds nothing of
earlier executions but request numbers, uids and exit statuses. As pid 1 it cannot be
signalled from inside the namespace (it installs no signal handler, so the kernel drops
them), not even by a program with its uid (user-namespace mode). One fork per execution:
an earlier design forked a supervisor per execution that forked the program, which cost a
third of the CPU of a short execution (a second fork, exit and copy-on-write faults).

End of file on the control socket (the host closed it or died) makes Z kill everything and
exit, which takes the whole namespace down.
"""

import ctypes
import json
import os
import select
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _forkchild  # noqa: E402 - located through the line above
import _launcher  # noqa: E402

del sys.path[0]  # programs see the sys.path of ``python -I main.py``

_PR_SET_DUMPABLE = 4
_MAX_MESSAGE = 4096
_REQUEST_FDS = 4


def _send(ctrl: socket.socket, payload: dict) -> None:
    ctrl.send((json.dumps(payload) + "\n").encode())


def kill_all() -> None:
    """SIGKILL every process of the namespace but pid 1 and the caller; reap until none."""
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return  # nothing else is left in the namespace
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue


def _wait_program(ctrl: socket.socket, pid: int, rid: int) -> tuple:
    """Wait for the program ``pid``, killing the namespace on request or host EOF."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(ctrl.fileno(), select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == pidfd:
                _, status, usage = os.wait4(pid, 0)
                return status, usage.ru_utime + usage.ru_stime
            message = ctrl.recv(_MAX_MESSAGE)
            if not message:  # the host is gone: nothing to report to
                kill_all()
                os._exit(0)
            if _is_kill(message, rid):
                os.kill(-1, signal.SIGKILL)  # the program and all of its descendants


def _is_kill(message: bytes, rid: int) -> bool:
    try:
        request = json.loads(message)
    except ValueError:
        return False
    return isinstance(request, dict) and request.get("kill") == rid


def _serve_one(spec: dict, ctrl: socket.socket, libc) -> bool:
    """Handle one message; False at end of file."""
    message, fds, _, _ = socket.recv_fds(ctrl, _MAX_MESSAGE, _REQUEST_FDS)
    if not message:
        return False
    try:
        request = json.loads(message)
        valid = len(fds) == _REQUEST_FDS and isinstance(request.get("rid"), int) and \
            isinstance(request.get("uid"), int)
    except ValueError:
        valid = False
    if not valid:  # a stale kill, or garbage: nothing to run
        for fd in fds:
            os.close(fd)
        return True
    rid = request["rid"]
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(status_r)
        ctrl.detach()  # closed by the child's fd sweep; the object must not own it
        _forkchild.run_child(spec, request, fds, status_w, libc)
    os.close(status_w)
    for fd in fds:
        os.close(fd)
    status, cpu_s = _wait_program(ctrl, pid, rid)
    kill_all()
    emptied = _launcher.reset_workdir(libc, spec["empty_size"])
    os.set_blocking(status_r, False)
    try:
        problem = os.read(status_r, 65536)
    except BlockingIOError:
        problem = b""
    os.close(status_r)
    if problem:
        reply = {"rid": rid, **json.loads(problem)}
    else:
        reply = {"rid": rid, "wait_status": status, "cpu_s": cpu_s}
    _send(ctrl, reply if emptied else {**reply, "retire_worker": True})
    return True


def _start(spec: dict) -> object:
    """Checks and one-time setup of the worker; returns libc."""
    if os.getpid() != 1:
        raise RuntimeError("the fork server must be pid 1 of a new pid namespace")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")
    _launcher.harden_mounts(spec["hide_paths"], spec["expose_paths"])
    _launcher.mount_workdir(libc, spec["workdir_mb"])
    spec["empty_size"] = _launcher.entry_counting_size()
    with open("/proc/sys/kernel/cap_last_cap") as f:
        _forkchild.drop_bounding_set(libc, int(f.read()))
    spec["syscall_filter"] = _launcher.syscall_filter(os.uname().machine)
    return libc


def main() -> int:
    """Serve requests until the host closes the control socket."""
    spec = json.loads(sys.argv[1])
    ctrl = socket.socket(fileno=spec["ctrl_fd"])
    os.set_inheritable(ctrl.fileno(), False)
    try:
        libc = _start(spec)
    except BaseException as exc:  # noqa: BLE001 - tell the host why, then give up
        _send(ctrl, {"setup_error": repr(exc)})
        return 1
    _forkchild.warm_up(libc)
    _send(ctrl, {"ready": True})
    while _serve_one(spec, ctrl, libc):
        pass
    kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
