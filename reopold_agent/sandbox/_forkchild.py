"""One execution of a warm worker: the forked child that becomes the program; stdlib only.

Imported by ``_forkserver.py`` (never by the host). The server forks this child from its
pristine interpreter; it never calls ``exec``. Before any user code runs, it:

1. starts its own session (so ``kill(0, ...)`` reaches only its own process group);
2. enters a fresh IPC namespace (SysV and POSIX IPC objects of an execution vanish with it
   when its last process dies), gives the worker's tmpfs ``/tmp`` (empty: the server emptied
   it after the previous execution, see ``_launcher.reset_workdir``) to the execution's uid
   and writes the program there as ``main.py``;
3. puts the execution's pipes on fds 0, 1, 2 and closes every other fd;
4. sets the rlimits, then drops privileges like ``setpriv`` does: empty capability bounding
   set (inherited: the server emptied its own), no inheritable/permitted/effective/ambient
   capabilities, the execution's uid and gid and no supplementary groups (as root), or
   locked ``noroot`` securebits (in a user namespace), then ``no_new_privs``;
5. installs the seccomp filter (no kernel keyrings, no socket family but AF_UNIX, no
   io_uring; see ``_launcher.syscall_filter``).

Then it runs the program as ``python -I -u main.py`` would: a fresh ``__main__`` module,
``sys.argv == ["main.py"]``, tracebacks, ``SystemExit`` codes, non-daemon threads joined and
``atexit`` handlers run at the end. Differences from a fresh interpreter (see local.py):
the modules the server imported are already in ``sys.modules``, the str hash seed is the
worker's, and objects are not finalized at exit (``os._exit`` after ``atexit``).

A setup failure is written as one JSON line to ``status_fd`` (closed before user code runs)
and the child exits 127.
"""

import atexit
import builtins
import ctypes
import json
import os
import signal
import sys
from importlib.machinery import SourceFileLoader

import _launcher

_CLONE_NEWIPC = 0x08000000
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_NO_NEW_PRIVS = 38
_USERNS_SECUREBITS = 0x2F
"""noroot, noroot_locked, no_setuid_fixup, no_setuid_fixup_locked, keep_caps_locked."""
_CAP_VERSION_3 = 0x20080522
_MAX_FD = 65536


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _call(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _capabilities(libc) -> list:
    """The calling thread's capability sets, as two 32-bit halves."""
    data = (_CapData * 2)()
    _call(libc.capget(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data), "capget")
    return [(d.effective, d.permitted, d.inheritable) for d in data]


def drop_bounding_set(libc, cap_last: int) -> None:
    """Empty the calling process's capability bounding set (what ``execve`` could regain).

    Run once by the server, which never execs, so its forked programs inherit an empty set;
    the capabilities the server itself holds are not affected.
    """
    for cap in range(cap_last + 1):
        _call(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")


def drop_privileges(libc, uid: int, user_namespace: bool) -> None:
    """Leave this process without any capability, as ``uid`` (root) or noroot (userns).

    The bounding set is already empty (inherited from the server, see
    :func:`drop_bounding_set`).

    Raises:
        OSError: a step failed, or capabilities remain afterwards.
    """
    if user_namespace:
        _call(libc.prctl(_PR_SET_SECUREBITS, _USERNS_SECUREBITS, 0, 0, 0), "securebits")
    else:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    empty = (_CapData * 2)()
    _call(libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), empty), "capset(0)")
    _call(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    if any(any(half) for half in _capabilities(libc)) or os.getresuid() != (uid,) * 3:
        raise OSError("privileges remain after the drop")
    _call(libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable")  # like a fresh process


def _read_all(fd: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _setup(spec: dict, request: dict, fds: list, status_fd: int, libc) -> str:
    """Everything before user code; returns the path of main.py."""
    stdin_r, stdout_w, stderr_w, code_fd = fds
    os.setsid()
    _call(libc.unshare(_CLONE_NEWIPC), "unshare(ipc)")
    uid = request["uid"]
    workdir = _launcher.write_program(uid, _read_all(code_fd))
    for target, fd in enumerate((stdin_r, stdout_w, stderr_w)):
        os.dup2(fd, target)
    os.closerange(3, status_fd)
    os.closerange(status_fd + 1, _MAX_FD)
    os.chdir(workdir)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    _launcher.set_rlimits(spec["rlimits"])
    drop_privileges(libc, uid, spec["user_namespace"])
    _launcher.block_syscalls(libc, spec["syscall_filter"])
    return os.path.join(workdir, "main.py")


def _exit_status(exc: SystemExit) -> int:
    """The status ``python`` exits with for an uncaught ``SystemExit``."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except Exception:  # noqa: BLE001 - like the interpreter: the exit status still counts
        pass
    return 1


def _run_program(path: str) -> int:
    """Execute ``path`` as ``__main__``; return the process exit status."""
    main = type(sys)("__main__")
    main.__file__, main.__cached__, main.__spec__ = path, None, None
    main.__loader__, main.__builtins__ = SourceFileLoader("__main__", path), builtins
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    sys.orig_argv = [sys.executable, "-I", "-u", "main.py"]
    try:
        with open(path, "rb") as f:
            code = compile(f.read(), path, "exec")
    except BaseException as exc:  # noqa: BLE001 - SyntaxError and friends, as python shows them
        sys.excepthook(type(exc), exc.with_traceback(None), None)
        return 1
    try:
        exec(code, main.__dict__)
    except SystemExit as exc:
        return _exit_status(exc)
    except BaseException as exc:  # noqa: BLE001 - an uncaught exception of the program
        exc = exc.with_traceback(exc.__traceback__.tb_next)  # from the program's frame on
        sys.excepthook(type(exc), exc, exc.__traceback__)
        if isinstance(exc, KeyboardInterrupt):
            return -signal.SIGINT
        return 1
    return 0


def _finish(status: int) -> None:
    """Shut down like the interpreter (threads, atexit, flush), then exit. Never returns."""
    threading = sys.modules.get("threading")
    try:
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001 - the exit status stays the program's
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - python exits 120 when it cannot flush
            status = status or 120
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status)


_WARM_UP_PROGRAM = "numbers = [n * 7 for n in range(3)]\nprint(sum(numbers), numbers, 'warm-up')\n"


def warm_up(libc) -> None:
    """Run once in the server before it serves, so that its children need not.

    A program's first steps create state that then lives for the interpreter's life: the
    compiler's and the printing path's first-use allocations, the ctypes functions of the
    setup. Created in the server, the forked children share it instead of each building it
    again on freshly faulted pages (64 executions at a time: ~15% less CPU). The program is
    a fixed one of ours; it imports nothing and prints to the server's standard output
    (``/dev/null``), so programs see the same ``sys.modules`` and a fresh ``__main__``.
    """
    for name in ("unshare", "capget", "capset", "prctl", "llistxattr"):
        getattr(libc, name)
    namespace = {"__name__": "__warm_up__", "__builtins__": builtins}
    exec(compile(_WARM_UP_PROGRAM, "warm_up.py", "exec"), namespace)
    sys.stdout.flush()


def run_child(spec: dict, request: dict, fds: list, status_fd: int, libc) -> None:
    """In the forked child: set up, drop privileges and run the program. Never returns."""
    try:
        path = _setup(spec, request, fds, status_fd, libc)
    except BaseException as exc:  # noqa: BLE001 - report anything, then die
        try:
            os.write(status_fd, (json.dumps({"setup_error": repr(exc)}) + "\n").encode())
        finally:
            os._exit(127)
    os.close(status_fd)
    _finish(_run_program(path))
