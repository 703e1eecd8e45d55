"""LocalSandbox: ordinary programs, hostile programs (each contained and reported), threads.

Runs as whoever runs pytest: as root the program gets a pooled unprivileged uid, as an
ordinary user a user namespace (test_local_unprivileged.py covers that from root too). Every
test that takes the ``sandbox`` or ``make_isolated`` fixture runs in both modes (see
conftest.py): ``spawn`` (fresh namespaces per execution) and ``warm`` (fork-server workers).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from reopold_agent.sandbox import LocalSandbox, SandboxConfig, SandboxLimit, _launcher

from .conftest import FAST

IS_ROOT = os.geteuid() == 0


def _own_uid_config(**kwargs) -> SandboxConfig:
    """A config whose single pooled uid no other test run uses (runs may overlap)."""
    return SandboxConfig(uid_base=1_600_000_000 + secrets.randbelow(10**8), uid_count=1,
                         **kwargs)


def test_normal_program_returns_stdout_and_exit_zero(sandbox):
    result = sandbox.run("print(6 * 7)")
    assert (result.stdout, result.stderr, result.exit_code) == ("42\n", "", 0)
    assert result.limit is SandboxLimit.NONE and result.ok
    assert 0.0 < result.duration_s < 5.0


def test_stdin_is_fed_to_the_program(sandbox):
    result = sandbox.run("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc\ndef")
    assert result.stdout == "fed\ncba\n"


def test_large_stdin_is_fed_without_deadlock(sandbox):
    data = "x" * 1_000_000
    result = sandbox.run("import sys\nprint(len(sys.stdin.read()))", stdin=data)
    assert result.stdout == "1000000\n"


def test_exception_gives_stderr_and_nonzero_exit(sandbox):
    result = sandbox.run("raise ValueError('bad value')")
    assert result.exit_code == 1 and not result.ok
    assert result.stderr.rstrip().endswith("ValueError: bad value")
    assert result.limit is SandboxLimit.NONE


def test_exit_status_is_passed_through(sandbox):
    assert sandbox.run("import sys\nsys.exit(3)").exit_code == 3


def test_program_runs_unprivileged_in_private_tmp(sandbox):
    code = ("import os\nopen('note.txt', 'w').write('hi')\n"
            "print(os.getcwd(), os.getuid(), sorted(os.listdir('.')))")
    cwd, uid, files = sandbox.run(code).stdout.split(" ", 2)
    assert cwd == "/tmp" and files.strip() == "['main.py', 'note.txt']"
    if IS_ROOT:
        config = sandbox.config
        assert config.uid_base <= int(uid) < config.uid_base + config.uid_count


_CAPABILITIES = """\
caps = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines()
            if line.startswith("Cap"))
print(sorted(name for name, value in caps.items() if int(value, 16)))
"""


def test_program_holds_no_capability_in_any_set(sandbox):
    for _ in range(2):  # warm: the second execution is forked from a server that served one
        result = sandbox.run(_CAPABILITIES)
        assert result.stdout == "[]\n", result.stderr


def test_infinite_loop_stopped_by_cpu_limit(make_isolated):
    sandbox = make_isolated(SandboxConfig(timeout_s=10, cpu_time_s=1))
    result = sandbox.run("while True: pass")
    assert result.limit is SandboxLimit.CPU_TIME
    assert result.exit_code == -signal.SIGXCPU
    assert result.duration_s < 5


def test_infinite_loop_stopped_by_wall_timeout(sandbox):
    result = sandbox.run("while True: pass", timeout_s=1.0)
    assert result.limit is SandboxLimit.WALL_TIMEOUT and result.exit_code == -signal.SIGKILL
    assert 1.0 <= result.duration_s < 3.0


def test_sleep_past_timeout_keeps_earlier_output(sandbox):
    result = sandbox.run("import time\nprint('before')\ntime.sleep(60)", timeout_s=1.0)
    assert result.limit is SandboxLimit.WALL_TIMEOUT
    assert result.stdout == "before\n"
    assert result.duration_s < 3.0


def test_ten_gigabyte_allocation_stopped_by_memory_limit(sandbox):
    result = sandbox.run("x = bytearray(10 * 1024**3)\nprint('allocated')")
    assert result.limit is SandboxLimit.MEMORY
    assert "MemoryError" in result.stderr and result.stdout == ""


def test_fork_bomb_stopped_by_process_limit(make_isolated, assert_gone):
    config = _own_uid_config(timeout_s=5, max_processes=16)
    sandbox = make_isolated(config)
    result = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert result.limit is SandboxLimit.PROCESSES
    assert "Resource temporarily unavailable" in result.stderr
    assert result.duration_s < 4.0
    if IS_ROOT:
        assert_gone(uid=config.uid_base)


def test_fork_bomb_that_ignores_errors_ends_at_timeout(make_isolated, assert_gone):
    config = _own_uid_config(timeout_s=1.5, max_processes=16)
    sandbox = make_isolated(config)
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = sandbox.run(code)
    assert result.limit is SandboxLimit.WALL_TIMEOUT
    assert result.duration_s < 4.0
    if IS_ROOT:
        assert_gone(uid=config.uid_base)


_ESCAPE = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    os._exit(0)
os.wait()
time.sleep(0.5)
print("parent done")
{tail}
"""


@pytest.mark.parametrize("tail", ["", "time.sleep(60)"], ids=["parent-exits", "parent-hangs"])
def test_setsid_escape_dies_with_the_sandbox(sandbox, assert_gone, tail):
    marker = f"reopold-escape-{uuid.uuid4().hex}"
    result = sandbox.run(_ESCAPE.format(marker=marker, tail=tail), timeout_s=2.0)
    assert result.stdout == "parent done\n"
    expected = SandboxLimit.WALL_TIMEOUT if tail else SandboxLimit.NONE
    assert result.limit is expected
    assert result.duration_s < 4.0  # the escaped sleeper did not hold the pipes open
    assert_gone(marker=marker)


_KEY_SYSCALLS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}
_KEYS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
add_key, request_key, keyctl = {numbers}
attempts = [
    (add_key, b"user", b"reopold-key", b"secret", 6, ctypes.c_long(-4)),  # into the user keyring
    (request_key, b"user", b"reopold-key", None, 0),
    (keyctl, 0, ctypes.c_long(-4), 1),  # KEYCTL_GET_KEYRING_ID, create if missing
    (keyctl, 22, ctypes.c_long(-1), ctypes.c_long(-2)),  # KEYCTL_GET_PERSISTENT
    (keyctl | {x32_bit}, 0, ctypes.c_long(-4), 1),  # the x32 ABI's keyctl (x86_64 only)
]
for args in attempts:
    print(libc.syscall(*args), ctypes.get_errno())
"""


@pytest.mark.skipif(os.uname().machine not in _KEY_SYSCALLS, reason="syscall numbers unknown")
def test_kernel_keyrings_are_out_of_reach(make_isolated):
    """Keyrings belong to a uid and outlive processes: the key syscalls must fail (EPERM)."""
    sandbox = make_isolated(_own_uid_config(timeout_s=5))
    x32_bit = 0x40000000 if os.uname().machine == "x86_64" else 0
    code = _KEYS.format(numbers=_KEY_SYSCALLS[os.uname().machine], x32_bit=x32_bit)
    assert sandbox.run(code).stdout == f"-1 {errno.EPERM}\n" * 5


def test_the_syscall_filter_is_refused_on_an_unknown_machine():
    with pytest.raises(OSError, match="no seccomp filter for the sandbox's syscalls on 'vax'"):
        _launcher.syscall_filter("vax")


_FAMILIES = """
import socket
def attempt(make):
    try:
        make().close()
        return "ok"
    except OSError as exc:
        return exc.errno
print(attempt(lambda: socket.socket(socket.AF_UNIX)), attempt(lambda: socket.socketpair()[0]))
for family, kind in [(40, socket.SOCK_STREAM), (socket.AF_INET6, socket.SOCK_DGRAM),
                     (socket.AF_NETLINK, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW),
                     (socket.AF_INET, socket.SOCK_STREAM)]:  # 40: AF_VSOCK
    print(attempt(lambda: socket.socket(family, kind)), end=" ")
print(attempt(lambda: socket.socketpair(socket.AF_INET)[0]))
"""


def test_socket_families_other_than_unix_are_denied(sandbox):
    """AF_VSOCK reaches the hypervisor past a network namespace; netlink and packet sockets
    talk to the kernel: only AF_UNIX sockets may be created (EPERM from seccomp)."""
    lines = sandbox.run(_FAMILIES).stdout.splitlines()
    assert lines == ["ok ok", f"{errno.EPERM} " * 5 + str(errno.EPERM)]


_IO_URING = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
for args in [(425, 8, params), (426, 0, 1, 0, 0, None, 0), (427, 0, 0, None, 0)]:
    print(libc.syscall(*args), ctypes.get_errno())
"""


def test_io_uring_is_denied(sandbox):
    assert sandbox.run(_IO_URING).stdout == f"-1 {errno.EPERM}\n" * 3


@pytest.mark.parametrize("folder", ["/var/tmp", "/dev/shm"])
def test_world_writable_host_unix_sockets_are_out_of_reach(sandbox, folder):
    """A 0777 socket in a world-writable host directory: the directory is hidden inside."""
    if not os.access(folder, os.W_OK):
        pytest.skip(f"{folder} is not writable here")
    path = f"{folder}/reopold-test-{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(1)
    code = f"import socket\ntry:\n    socket.socket(socket.AF_UNIX).connect({path!r})\n" \
           f"    print('connected')\nexcept OSError as exc:\n    print('blocked', exc.errno)"
    try:
        assert sandbox.run(code).stdout == f"blocked {errno.ENOENT}\n"
    finally:
        server.close()
        os.unlink(path)


def test_a_program_holds_only_its_standard_streams(sandbox):
    code = ("import os\nopen_fds = []\nfor fd in range(3, 1024):\n    try:\n        os.fstat(fd)\n"
            "    except OSError:\n        continue\n    open_fds.append(fd)\nprint(open_fds)")
    assert sandbox.run(code).stdout == "[]\n"


def test_no_network_not_even_loopback(sandbox):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    code = f"""
import socket
for addr in [("127.0.0.1", {port}), ("192.0.2.1", 80)]:
    try:
        s = socket.socket()
        s.settimeout(3)
        s.connect(addr)
        print("connected", addr)
    except OSError as exc:
        print("blocked", exc.errno)
print(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]))
"""
    try:
        result = sandbox.run(code)
    finally:
        listener.close()
    # The seccomp filter refuses IP sockets; the network namespace has only a down 'lo'.
    assert result.stdout.splitlines() == [f"blocked {errno.EPERM}"] * 2 + ["['lo']"]
    assert result.duration_s < 3.0  # refused at once: there is no route at all


def test_writes_outside_the_work_dir_fail_and_leave_nothing(sandbox):
    name = f"reopold-write-{uuid.uuid4().hex}"
    here = os.path.dirname(os.path.abspath(__file__))  # writable on the host
    targets = [f"/etc/{name}", f"/root/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}",
               f"/{name}", f"{here}/{name}"]
    code = f"""
for path in {targets!r}:
    try:
        open(path, "w").write("x")
        print("wrote", path)
    except OSError as exc:
        print("denied", exc.errno)
open("/tmp/{name}", "w").write("x")  # /tmp is the sandbox's own tmpfs
"""
    result = sandbox.run(code)
    assert result.ok, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(targets) and all(line.startswith("denied") for line in lines)
    for path in [*targets, f"/tmp/{name}"]:
        assert not os.path.exists(path), path


@pytest.mark.skipif(not IS_ROOT, reason="root-only files are readable by their owner")
def test_reading_root_only_files_is_denied(sandbox):
    code = """
try:
    open("/etc/shadow").read()
    print("read")
except PermissionError:
    print("denied")
print(__import__("os").listdir("/root"))  # hidden by default: an empty directory
"""
    assert sandbox.run(code).stdout == "denied\n[]\n"


def test_gigabytes_of_stdout_are_cut_off(sandbox):
    code = "import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(4096):\n" \
           "    sys.stdout.buffer.write(chunk)"
    result = sandbox.run(code, timeout_s=30)
    assert result.limit is SandboxLimit.OUTPUT and result.stdout_truncated
    assert len(result.stdout) == sandbox.config.max_output_bytes
    assert result.duration_s < 3.0  # stopped at the limit, not after 4 GiB


def test_stderr_flood_is_cut_off(sandbox):
    result = sandbox.run("import sys\nwhile True:\n    sys.stderr.write('e' * 1000)")
    assert result.limit is SandboxLimit.OUTPUT and result.stderr_truncated
    assert len(result.stderr) == sandbox.config.max_output_bytes


def test_big_file_stopped_by_file_size_limit(make_isolated):
    sandbox = make_isolated(SandboxConfig(file_size_mb=1))
    result = sandbox.run("open('big', 'wb').write(b'x' * (2 << 20))")
    assert result.limit is SandboxLimit.FILE_SIZE
    assert "File too large" in result.stderr


def test_many_files_stopped_by_workdir_size(make_isolated):
    sandbox = make_isolated(SandboxConfig(file_size_mb=4, workdir_mb=8))
    result = sandbox.run("for i in range(100):\n    open(f'f{i}', 'wb').write(b'x' * (3 << 20))")
    assert result.limit is SandboxLimit.FILE_SIZE
    assert "No space left on device" in result.stderr


def test_hide_paths_covers_directories(make_isolated):
    sandbox = make_isolated(SandboxConfig(hide_paths=("/home", "/root", "/var")))
    code = "import os\nprint([os.listdir(p) for p in ('/home', '/root', '/var')])"
    assert sandbox.run(code).stdout == "[[], [], []]\n"


@pytest.fixture
def home_folder():
    """A fresh world-readable folder in /home standing for another user's home (removed)."""
    if not (os.path.isdir("/home") and os.access("/home", os.W_OK)):
        pytest.skip("/home is not writable here")
    path = f"/home/reopold-test-{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_home_directories_are_hidden_by_default(sandbox, home_folder):
    """A file every uid may read, in a home directory: the default hide list covers /home."""
    secret = os.path.join(home_folder, "secret.txt")
    with open(secret, "w") as f:
        f.write("private")
    os.chmod(secret, 0o644)
    code = f"import os\nprint(os.listdir('/home'))\ntry:\n    print(open({secret!r}).read())\n" \
           f"except OSError as exc:\n    print('hidden', exc.errno)"
    assert sandbox.run(code).stdout == f"[]\nhidden {errno.ENOENT}\n"


def test_an_interpreter_under_a_hidden_home_still_runs(make_isolated, home_folder):
    """A virtual environment in a home directory: its prefix is bound back read-only, the
    rest of that home stays hidden."""
    venv = os.path.join(home_folder, "venv")
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], check=True)
    with open(os.path.join(home_folder, "secret.txt"), "w") as f:
        f.write("private")
    sandbox = make_isolated(FAST.with_overrides(python_executable=f"{venv}/bin/python3"))
    assert sandbox.exposed == [venv]
    code = (f"import os, sys\nprint(sys.prefix, sorted(os.listdir({home_folder!r})))\n"
            f"try:\n    open({venv!r} + '/planted', 'w')\nexcept OSError as exc:\n"
            f"    print('read-only', exc.errno)")
    result = sandbox.run(code)
    assert result.stdout == f"{venv} ['venv']\nread-only {errno.EROFS}\n", result.stderr
    assert not os.path.exists(os.path.join(venv, "planted"))


@pytest.mark.skipif(not IS_ROOT, reason="creating a socket in /run needs root")
def test_unix_sockets_in_run_are_hidden_by_default(sandbox):
    path = f"/run/reopold-test-{uuid.uuid4().hex[:8]}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o666)  # world-writable, like the D-Bus system bus
    server.listen(1)
    code = f"import socket\ntry:\n    socket.socket(socket.AF_UNIX).connect({path!r})\n" \
           f"    print('connected')\nexcept OSError as exc:\n    print('blocked', exc.errno)"
    try:
        assert sandbox.run(code).stdout == "blocked 2\n"
    finally:
        server.close()
        os.unlink(path)


def test_eight_concurrent_sleeps_overlap(sandbox):  # warm: 4 workers, so two rounds
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: sandbox.run("import time\ntime.sleep(1)"), range(8)))
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert elapsed < 3.0, f"8 parallel 1 s sleeps took {elapsed:.2f} s (serial: 8 s)"


def test_hanging_program_does_not_delay_the_others(sandbox):
    finished: dict[int, float] = {}
    start = time.monotonic()

    def job(i: int):
        code = "import time\ntime.sleep(60)" if i == 0 else "import time\ntime.sleep(0.3)"
        result = sandbox.run(code, timeout_s=4.0)
        finished[i] = time.monotonic() - start
        return result

    threads = [threading.Thread(target=job, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(finished[i] for i in range(1, 5)) < 2.5
    assert 4.0 <= finished[0] < 7.0


def test_timeout_must_be_positive(sandbox):
    with pytest.raises(ValueError, match="timeout_s"):
        sandbox.run("print(1)", timeout_s=0)


def test_user_namespace_is_refused_as_root():
    if not IS_ROOT:
        pytest.skip("only root is refused a user namespace")
    with pytest.raises(ValueError, match="user_namespace"):
        LocalSandbox(SandboxConfig(), user_namespace=True)
