"""Launcher of one sandboxed program; a standalone script, standard library only.

Run by :mod:`reopold_agent.sandbox.local` as ``python -I -S _launcher.py SPEC_JSON``, inside
fresh pid/net/mount/ipc/uts namespaces created by ``unshare`` (so it is pid 1 there), or
directly when unisolated execution was allowed. It:

1. reads the program from the host work directory;
2. isolated only: covers ``hide_paths`` with empty tmpfs (binding ``expose_paths``, the
   interpreter's prefixes, back into them), makes every mount read-only (``mount_setattr``
   with ``AT_RECURSIVE``), mounts a private size-limited tmpfs on
   ``/tmp`` owned by the sandbox uid and writes the program there;
3. forks; the child (isolated: installs the seccomp filter of :func:`syscall_filter`: no
   kernel keyrings, no socket family but AF_UNIX, no io_uring) sets rlimits, resets signal
   dispositions and execs the privilege-drop prefix (``setpriv ...``) followed by
   ``python -I -u main.py``;
4. reaps every process (it is the namespace init) until the program exits, then writes one
   JSON line to the status fd: ``{"wait_status": .., "cpu_s": ..}`` or ``{"setup_error": ..}``.

When it exits, the kernel kills whatever is left in the pid namespace. User code never sees
the status fd (it is close-on-exec), so it cannot forge the status. The warm workers
(``_forkserver.py``, ``_forkchild.py``) reuse the mount, rlimit and seccomp helpers.
"""

import ctypes
import errno
import json
import os
import resource
import signal
import sys

_SYS_MOUNT_SETATTR = 442  # same number on every Linux architecture since 5.12
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MS_BIND, _MS_REC = 0x1000, 0x4000
INSIDE_WORKDIR = "/tmp"
_SYSCALLS = {  # machine: (AUDIT_ARCH_*, (add_key, request_key, keyctl), socket, socketpair,
    #                     socketcall or None, offset of the low 32 bits of args[0])
    "x86_64": (0xC000003E, (248, 249, 250), 41, 53, None, 16),
    "aarch64": (0xC00000B7, (217, 218, 219), 198, 199, None, 16),
    "riscv64": (0xC00000F3, (217, 218, 219), 198, 199, None, 16),
    "loongarch64": (0xC0000102, (217, 218, 219), 198, 199, None, 16),
    "i686": (0x40000003, (286, 287, 288), 359, 360, 102, 16),
    "armv7l": (0x40000028, (309, 310, 311), 281, 288, None, 16),
    "ppc64le": (0xC0000015, (269, 270, 271), 326, 333, 102, 16),
    "s390x": (0x80000016, (278, 279, 280), 359, 360, 102, 20)}
_IO_URING_SYSCALLS = (425, 426, 427)  # io_uring_setup, _enter, _register: one number everywhere
_AF_UNIX = 1
_X32_SYSCALL_BIT = 0x40000000
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_SECCOMP_DATA_NR, _SECCOMP_DATA_ARCH = 0, 4
_SECCOMP_RET_ALLOW, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def harden_mounts(hide_paths: list, expose_paths: list = ()) -> None:
    """Cover ``hide_paths`` with empty tmpfs, bind ``expose_paths`` back into them, then make
    every mount read-only.

    An exposed directory (an interpreter prefix under a hidden home) is opened before the
    tmpfs covers it; its path is then created inside the tmpfs and the directory bound there
    through ``/proc/self/fd`` (recursively: a user namespace refuses a non-recursive bind of
    a mount it inherited).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    kept = {}
    for path in expose_paths:
        try:
            kept[path] = os.open(path, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            continue  # absent: nothing to bind back
    hidden_flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
    for path in hide_paths:
        if os.path.isdir(path):
            _check(libc.mount(b"tmpfs", path.encode(), b"tmpfs", hidden_flags,
                              b"size=64k,nr_inodes=256,mode=0755"), f"mount tmpfs on {path}")
    for path, fd in kept.items():
        os.makedirs(path, mode=0o755, exist_ok=True)
        _check(libc.mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None,
                          _MS_BIND | _MS_REC, None), f"bind {path} back")
        os.close(fd)
    attr = _MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(libc.syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, b"/", _AT_RECURSIVE, ctypes.byref(attr),
                        ctypes.c_size_t(ctypes.sizeof(attr))), "mount_setattr(/, RDONLY)")


def mount_workdir(libc, workdir_mb: int) -> None:
    """Mount a private size-limited tmpfs on /tmp (mode 0700, root's until a program's)."""
    options = f"size={workdir_mb}m,nr_inodes=4096,mode=0700"
    _check(libc.mount(b"tmpfs", INSIDE_WORKDIR.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                      options.encode()), f"mount tmpfs on {INSIDE_WORKDIR}")


def write_program(uid: int, code: bytes) -> str:
    """Give /tmp to ``uid`` and write ``code`` there as main.py; return /tmp."""
    os.chown(INSIDE_WORKDIR, uid, uid)
    path = os.path.join(INSIDE_WORKDIR, "main.py")
    with open(path, "wb") as f:
        f.write(code)
    os.chown(path, uid, uid)
    return INSIDE_WORKDIR


def empty_workdir(workdir: str = INSIDE_WORKDIR) -> None:
    """Return /tmp to the state :func:`mount_workdir` left it in, for the next program.

    As root, once no process of the execution is left: deletes everything under /tmp
    (walking with ``chdir`` and names only: no recursion and no fd per level, so neither a
    deep tree nor odd modes stop it; symbolic links are removed, never followed), then resets
    what the program could have set on /tmp itself: owner, mode, extended attributes (ACLs
    included) and times.
    """
    os.chdir(workdir)
    path = []  # directories entered below workdir
    while True:
        deeper = None
        with os.scandir(".") as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    deeper = entry.name
                    break
                os.unlink(entry.name)
        if deeper is not None:
            os.chdir(deeper)
            path.append(deeper)
        elif path:
            os.chdir("..")
            os.rmdir(path.pop())
        else:
            break
    os.chdir("/")
    for name in os.listxattr(workdir, follow_symlinks=False):
        os.removexattr(workdir, name, follow_symlinks=False)
    _reset_owner_mode_times(workdir)


def _reset_owner_mode_times(workdir: str) -> None:
    """Give ``workdir`` back to root, mode 0700, times 0: as :func:`mount_workdir` left it."""
    os.chown(workdir, 0, 0)
    os.chmod(workdir, 0o700)
    os.utime(workdir, ns=(0, 0))


def entry_counting_size(workdir: str = INSIDE_WORKDIR) -> "int | None":
    """The size of ``workdir`` when empty, if its size counts its entries (tmpfs); else None.

    tmpfs gives a directory a size that grows with every entry, so an empty one is known
    from ``lstat`` alone, without listing it. Checked, not assumed: a probe file must change
    the size (on disk filesystems it usually does not).
    """
    empty = os.lstat(workdir).st_size
    probe = os.path.join(workdir, ".reopold-size-probe")
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    grown = os.lstat(workdir).st_size
    os.unlink(probe)
    return empty if grown != empty and os.lstat(workdir).st_size == empty else None


def reset_workdir(libc, empty_size: "int | None", workdir: str = INSIDE_WORKDIR) -> bool:
    """Return ``workdir`` to its state before a program, without reading a name it chose.

    As root, once no process of the execution is left. Common case, in the caller: unlink
    ``main.py``; if ``workdir`` is then empty (its size is ``empty_size``, see
    :func:`entry_counting_size`) and has no extended attribute, reset its owner, mode and
    times. Otherwise (files left, ``main.py`` replaced by a directory, an xattr, a size that
    does not count entries) a forked child runs :func:`empty_workdir` and exits, so the
    names the program chose never enter the caller's memory (a warm worker's server: what
    it holds, every later program inherits).

    Returns:
        False if ``workdir`` could not be emptied (the worker must not run another program).
    """
    try:
        os.unlink(os.path.join(workdir, "main.py"))
    except FileNotFoundError:
        pass
    except OSError:
        empty_size = None
    try:
        if empty_size is not None and os.lstat(workdir).st_size == empty_size and \
                libc.llistxattr(workdir.encode(), None, 0) == 0:
            _reset_owner_mode_times(workdir)
            return True
    except OSError:
        pass
    pid = os.fork()
    if pid == 0:
        try:
            empty_workdir(workdir)
        except BaseException:  # noqa: BLE001 - the exit status tells the caller
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status == 0


def _setup_mounts(spec: dict, code: bytes) -> str:
    """Make the filesystem read-only but for a private tmpfs; return the work directory."""
    harden_mounts(spec["hide_paths"], spec["expose_paths"])
    mount_workdir(ctypes.CDLL(None, use_errno=True), spec["workdir_mb"])
    return write_program(spec["uid"], code)


def syscall_filter(machine: str) -> list:
    """The seccomp program of every sandboxed program; denied calls fail with EPERM.

    * ``add_key``, ``request_key``, ``keyctl``: kernel keyrings belong to a uid, not to a
      process or a namespace, so keys one execution adds would be readable by the next one
      with the same uid (Docker's default profile denies them too).
    * ``socket`` and ``socketpair`` of any family but ``AF_UNIX`` (and ``socketcall``, the
      multiplexer that hides its arguments from seccomp on some 32-bit ABIs): a network
      namespace cuts off IP, but not every family (``AF_VSOCK`` reaches the hypervisor,
      netlink and packet sockets talk to the kernel).
    * ``io_uring_setup``, ``io_uring_enter``, ``io_uring_register``: a large kernel attack
      surface that also performs operations without the syscalls they stand for.

    Everything else is allowed. Syscalls of another ABI (32-bit ``int 0x80`` on x86_64, x32)
    are denied, so no denied call can be reached under another number.

    Returns:
        [(code, jt, jf, k)] BPF instructions.

    Raises:
        OSError: the syscall numbers of ``machine`` are unknown.
    """
    if machine not in _SYSCALLS:
        raise OSError(f"no seccomp filter for the sandbox's syscalls on {machine!r}; known: "
                      f"{', '.join(sorted(_SYSCALLS))}")
    arch, keys, sock, sockpair, socketcall, arg0 = _SYSCALLS[machine]
    denied = [*keys, *_IO_URING_SYSCALLS, *([socketcall] if socketcall is not None else [])]
    deny = (_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.EPERM)
    allow = (_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW)
    program = [(_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_ARCH), (_BPF_JEQ_K, 1, 0, arch), deny,
               (_BPF_LD_W_ABS, 0, 0, _SECCOMP_DATA_NR)]
    if machine == "x86_64":
        program += [(_BPF_JGE_K, 0, 1, _X32_SYSCALL_BIT), deny]
    # Layout after the checks: the denied numbers (a match jumps to DENY), the two socket
    # calls (a match jumps to FAMILY), ALLOW, DENY, FAMILY: load args[0], AF_UNIX -> ALLOW.
    checks = [*denied, sock, sockpair]
    for i, number in enumerate(checks):
        left = len(checks) - 1 - i  # checks after this one
        target = left + 1 if i < len(denied) else left + 2  # DENY or FAMILY
        program.append((_BPF_JEQ_K, target, 0, number))
    return program + [allow, deny, (_BPF_LD_W_ABS, 0, 0, arg0),
                      (_BPF_JEQ_K, 0, 1, _AF_UNIX), allow, deny]


def block_syscalls(libc, program=None) -> None:
    """Set ``no_new_privs`` and install :func:`syscall_filter` (inherited by children and
    across ``exec``; it cannot be removed).

    Args:
        libc: ``ctypes.CDLL(None, use_errno=True)``.
        program: the filter of this machine, if already built.
    """
    program = syscall_filter(os.uname().machine) if program is None else program
    instructions = (_SockFilter * len(program))(*program)
    fprog = _SockFprog(len(program), instructions)
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
           "prctl(PR_SET_SECCOMP)")


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
        if spec["isolate"]:
            block_syscalls(ctypes.CDLL(None, use_errno=True))
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
