"""Launcher of one sandboxed program; a standalone script, standard library only.

Run by :mod:`reopold_agent.sandbox.local` as ``python -I -S _launcher.py SPEC_JSON``, inside
fresh pid/net/mount/ipc/uts namespaces created by ``unshare`` (so it is pid 1 there), or
directly when unisolated execution was allowed. It:

1. reads the program from the host work directory;
2. isolated only: makes every mount read-only (``mount_setattr`` with ``AT_RECURSIVE``),
   covers ``hide_paths`` with empty read-only tmpfs, mounts a private size-limited tmpfs on
   ``/tmp`` owned by the sandbox uid and writes the program there;
3. forks; the child (as root: empties the sandbox uid's kernel keyrings, which outlive its
   processes, see :func:`clear_user_keyrings`) sets rlimits, resets signal dispositions and
   execs the privilege-drop prefix (``setpriv ...``) followed by ``python -I -u main.py``;
4. reaps every process (it is the namespace init) until the program exits, then writes one
   JSON line to the status fd: ``{"wait_status": .., "cpu_s": ..}`` or ``{"setup_error": ..}``.

When it exits, the kernel kills whatever is left in the pid namespace. User code never sees
the status fd (it is close-on-exec), so it cannot forge the status. The warm workers
(``_forkserver.py``, ``_forkchild.py``) reuse the mount, rlimit and keyring helpers.
"""

import ctypes
import json
import os
import resource
import signal
import sys

_SYS_MOUNT_SETATTR = 442  # same number on every Linux architecture since 5.12
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
INSIDE_WORKDIR = "/tmp"
_KEYCTL_SYSCALL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "loongarch64": 219,
                   "i686": 288, "armv7l": 311, "ppc64le": 271, "s390x": 280}
_KEYCTL_CLEAR, _KEYCTL_GET_PERSISTENT = 7, 22
_KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING = -4, -5
_ENOSYS, _EOPNOTSUPP = 38, 95


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def harden_mounts(hide_paths: list) -> None:
    """Make every mount read-only and cover ``hide_paths`` with empty read-only tmpfs."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr),
                        ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr(/, RDONLY)")
    hidden_flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    for path in hide_paths:
        if os.path.isdir(path):
            _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", hidden_flags,
                              b"size=4k,nr_inodes=2,mode=0555"), f"mount tmpfs on {path}")


def mount_workdir(uid: int, workdir_mb: int, code: bytes) -> str:
    """Mount a private tmpfs owned by ``uid`` on /tmp, write ``code`` as main.py there."""
    libc = ctypes.CDLL(None, use_errno=True)
    options = f"size={workdir_mb}m,nr_inodes=4096,mode=0700,uid={uid},gid={uid}"
    _check(libc.mount(b"tmpfs", INSIDE_WORKDIR.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                      options.encode()), f"mount tmpfs on {INSIDE_WORKDIR}")
    path = os.path.join(INSIDE_WORKDIR, "main.py")
    with open(path, "wb") as f:
        f.write(code)
    os.chown(path, uid, uid)
    return INSIDE_WORKDIR


def _setup_mounts(spec: dict, code: bytes) -> str:
    """Make the filesystem read-only but for a private tmpfs; return the work directory."""
    harden_mounts(spec["hide_paths"])
    return mount_workdir(spec["uid"], spec["workdir_mb"], code)


def clear_user_keyrings(libc) -> None:
    """Empty the calling uid's user, user-session and persistent keyrings.

    They belong to the uid (in its user namespace), not to a process: without this, keys one
    execution adds are readable by the next execution with the same uid. A kernel without
    keys (ENOSYS) has nothing to clear; on an architecture not in the table this is skipped.

    The persistent keyring is fetched into the user-session keyring (the keyring a process
    without a session keyring searches, so the link makes it clearable by id), cleared, then
    unlinked by clearing the user-session keyring. Fetching it into a new process keyring
    would free that keyring at exit, and every freed key makes the kernel's key collector walk
    all keys of the machine (three per uid ever used: with a pool of 65,536 uids that was about
    half of an execution's kernel time, 8 ms -> 4-6 ms measured).
    """
    number = _KEYCTL_SYSCALL.get(os.uname().machine)
    if number is None:
        return
    keyctl = libc.syscall
    keyctl.restype = ctypes.c_long
    rings = [_KEY_SPEC_USER_KEYRING, _KEY_SPEC_USER_SESSION_KEYRING]
    persistent = keyctl(number, ctypes.c_long(_KEYCTL_GET_PERSISTENT), ctypes.c_long(-1),
                        ctypes.c_long(_KEY_SPEC_USER_SESSION_KEYRING))
    if persistent > 0:
        rings.insert(0, persistent)  # before the user-session keyring that links it
    elif ctypes.get_errno() not in (_ENOSYS, _EOPNOTSUPP):
        _check(-1, "keyctl(GET_PERSISTENT)")
    for ring in rings:
        if keyctl(number, ctypes.c_long(_KEYCTL_CLEAR), ctypes.c_long(ring)) != 0 and \
                ctypes.get_errno() != _ENOSYS:
            _check(-1, f"keyctl(CLEAR, {ring})")


def _clear_keyrings_as(uid: int) -> None:
    """As root: clear ``uid``'s keyrings as that uid, keeping root as the saved uid."""
    os.setresuid(uid, uid, 0)
    try:
        clear_user_keyrings(ctypes.CDLL(None, use_errno=True))
    finally:
        os.setresuid(0, 0, 0)


def set_rlimits(rlimits: dict) -> None:
    for name, (soft, hard) in rlimits.items():
        which = getattr(resource, name)
        _, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
        resource.setrlimit(which, (min(soft, hard), hard))


def _exec_program(spec: dict, workdir: str, status_fd: int) -> None:
    """In the forked child: apply limits and exec the program. Never returns."""
    try:
        os.chdir(workdir)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if spec.get("clear_keyrings"):
            _clear_keyrings_as(spec["uid"])
        set_rlimits(spec["rlimits"])
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        argv = spec["priv_prefix"] + [spec["python"], "-I", "-u", "main.py"]
        os.execve(argv[0], argv, env)
    except BaseException as exc:  # noqa: BLE001 - report anything, then die
        _report(status_fd, {"setup_error": f"exec failed: {exc!r}"})
    os._exit(127)


def _reap_until(pid: int) -> tuple:
    """Reap children (orphans too, as namespace init) until ``pid`` ends."""
    while True:
        try:
            wpid, status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            return 0, None
        if wpid == pid:
            return status, usage


def _report(status_fd: int, payload: dict) -> None:
    os.write(status_fd, (json.dumps(payload) + "\n").encode())


def main() -> int:
    """Run the program described by ``sys.argv[1]`` and report its end on the status fd."""
    spec = json.loads(sys.argv[1])
    status_fd = spec["status_fd"]
    os.set_inheritable(status_fd, False)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        with open(spec["code_path"], "rb") as f:
            code = f.read()
        if spec["isolate"]:
            workdir = _setup_mounts(spec, code)
        else:
            workdir = os.path.dirname(spec["code_path"])
        pid = os.fork()
    except OSError as exc:
        _report(status_fd, {"setup_error": str(exc)})
        return 1
    if pid == 0:
        _exec_program(spec, workdir, status_fd)
    status, usage = _reap_until(pid)
    cpu_s = usage.ru_utime + usage.ru_stime if usage is not None else 0.0
    _report(status_fd, {"wait_status": status, "cpu_s": cpu_s})
    if not spec["isolate"]:
        os.killpg(os.getpgid(0), signal.SIGKILL)  # leftovers of our group (and us)
    return 0


if __name__ == "__main__":
    sys.exit(main())
