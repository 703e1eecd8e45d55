"""Warm workers of LocalSandbox: nothing of one execution reaches the next, pool behaviour.

The hostile suite of test_local.py runs in warm mode too; these tests cover what only a
pool of long-lived workers can get wrong. Sequential runs of one sandbox reuse the same
worker (the idle list is a stack); the shared str hash seed proves it where it matters.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from reopold_agent.sandbox import LocalSandbox, SandboxConfig, SandboxLimit

from .conftest import FAST, _make_isolated

IS_ROOT = os.geteuid() == 0
SEED = "print(hash('reopold-seed'))"
"""Prints the str hash seed fingerprint: equal only for runs on the same worker."""


@pytest.fixture
def warm():
    """Builds warm sandboxes (one worker unless told) and closes them after the test."""
    made: list[LocalSandbox] = []

    def make(**overrides) -> LocalSandbox:
        sandbox = _make_isolated(FAST.with_overrides(**{"warm_workers": 1, **overrides}))
        assert sandbox.warm, "warm workers fell back to spawning"
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in made:
        sandbox.close()


def _same_worker(sandbox: LocalSandbox, first_seed: str) -> None:
    assert sandbox.run(SEED).stdout == first_seed, "the run went to another worker"


_PLANT = """\
import ctypes, os, sys, time
open("planted.txt", "w").write("secret")
os.environ["REOPOLD_PLANTED"] = "1"
os.putenv("REOPOLD_PUTENV", "1")
libc = ctypes.CDLL(None, use_errno=True)
print(libc.shmget(0x5EED, 4096, 0o1666), libc.msgget(0x5EED, 0o1666))  # IPC_CREAT | 0666
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    os._exit(0)
os.wait()
time.sleep(0.3)
"""

_LOOK = """\
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
mine = {str(os.getpid()), str(os.getppid()), "1"}
others = []
for pid in os.listdir("/proc"):
    if pid.isdigit() and pid not in mine:
        others.append(open(f"/proc/{pid}/cmdline", "rb").read())
print(sorted(os.listdir(".")), others)
print(os.environ.get("REOPOLD_PLANTED"), os.environ.get("REOPOLD_PUTENV"))
print(libc.shmget(0x5EED, 0, 0), libc.msgget(0x5EED, 0))
"""


def test_next_execution_sees_nothing_of_the_previous(warm, assert_gone):
    sandbox = warm()
    seed = sandbox.run(SEED).stdout
    marker = f"reopold-leftover-{uuid.uuid4().hex}"
    planted = sandbox.run(_PLANT.format(marker=marker))
    assert planted.ok, planted.stderr
    shm_id, msg_id = planted.stdout.split()
    assert int(shm_id) >= 0 and int(msg_id) >= 0  # the IPC objects did exist
    assert_gone(marker=marker)  # the escaped sleeper died with its execution
    looked = sandbox.run(_LOOK)
    assert looked.stdout.splitlines() == ["['main.py'] []", "None None", "-1 -1"], looked.stderr
    _same_worker(sandbox, seed)


def test_random_state_is_fresh_per_execution(warm):
    sandbox = warm()
    code = "import random\nprint(random.getrandbits(64))"
    assert sandbox.run(code).stdout != sandbox.run(code).stdout


@pytest.mark.skipif(not IS_ROOT, reason="reading another process's memory needs root")
def test_server_memory_never_holds_code_or_input(warm):
    sandbox = warm()
    secret = f"reopold-secret-{uuid.uuid4().hex}"
    result = sandbox.run(f"import sys\nx = {secret!r}\nprint(sys.stdin.read())",
                         stdin=secret[::-1])
    assert result.stdout == secret[::-1] + "\n"
    server = _server_pid(sandbox)
    needles = (secret.encode(), secret[::-1].encode())
    with open(f"/proc/{server}/maps") as maps, open(f"/proc/{server}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            mem.seek(start)
            data = mem.read(end - start)
            assert not any(needle in data for needle in needles), line


def test_program_cannot_reach_or_kill_its_server(warm):
    sandbox = warm()
    seed = sandbox.run(SEED).stdout
    code = """
import os, signal
for path in ("/proc/1/environ", "/proc/1/mem", "/proc/1/fd"):
    try:
        os.listdir(path) if path.endswith("fd") else open(path, "rb").read(1)
        print("read", path)
    except OSError as exc:
        print("denied", exc.errno)
for pid in (1, 0):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""
    result = sandbox.run(code)
    assert result.stdout.splitlines()[:3] == ["denied 13"] * 3
    _same_worker(sandbox, seed)


def test_more_callers_than_workers_wait_for_one(warm):
    sandbox = warm(warm_workers=2)
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: sandbox.run("import time\ntime.sleep(0.5)"),
                                range(4)))
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert all(r.duration_s < 1.0 for r in results)  # waiting is not part of the run
    assert sum(r.queue_wait_s >= 0.4 for r in results) >= 2  # but it is reported
    assert 1.0 <= elapsed < 3.0, f"4 runs of 0.5 s on 2 workers took {elapsed:.2f} s"
    assert len(sandbox._pool._idle) == 2


def test_wall_limit_counts_from_the_call_not_from_a_free_worker(warm):
    """8 sleepers on 2 workers with a 1.5 s limit: all return by about 1.5 s, not 6 s."""
    sandbox = warm(warm_workers=2)
    limit = 1.5
    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda _: sandbox.run("import time\ntime.sleep(30)", timeout_s=limit), range(8)))
    elapsed = time.monotonic() - start
    assert elapsed < limit + 1.5, f"8 sleepers on 2 workers took {elapsed:.2f} s"
    assert all(r.limit is SandboxLimit.WALL_TIMEOUT for r in results)
    assert all(r.queue_wait_s + r.duration_s < limit + 1.0 for r in results)
    never_ran = [r for r in results if r.exit_code is None]
    # both workers are held until about the limit; the waiters' limits end about then, so most
    # wait it out and the few that catch a freshly respawned worker run only for what is left
    assert len(never_ran) >= 2
    assert all(r.queue_wait_s >= limit - 0.1 and r.duration_s == 0.0 for r in never_ran)
    assert "did not run: all 2 sandbox workers were busy" in never_ran[0].stderr
    assert len(sandbox._pool._idle) == 2


def test_the_python_tool_passes_the_wait_on(warm):
    from reopold_agent.envs.tools import PythonTool

    tool = PythonTool(warm(), timeout_s=5.0)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(tool, code="import time\ntime.sleep(0.8)\nprint('a')")
        time.sleep(0.2)  # the first call holds the only worker
        second = pool.submit(tool, code="print('b')").result()
    assert first.result().text == "a" and first.result().queue_wait_s < 0.2
    assert second.text == "b" and 0.3 <= second.queue_wait_s < 1.2


def test_a_waiting_call_runs_for_what_is_left_of_its_limit(warm):
    sandbox = warm()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(sandbox.run, "import time\ntime.sleep(1.0)")
        time.sleep(0.3)  # the first call holds the only worker
        second = pool.submit(sandbox.run, "print('ran', flush=True)\nimport time\n"
                             "time.sleep(30)", timeout_s=1.6).result()
    assert first.result().ok
    assert second.limit is SandboxLimit.WALL_TIMEOUT and second.stdout == "ran\n"
    assert 0.4 <= second.queue_wait_s < 1.0
    assert second.duration_s < 1.6 - second.queue_wait_s + 0.5


def _worker_pid(sandbox: LocalSandbox) -> int:
    return sandbox._pool._idle[0].proc.pid


def _server_pid(sandbox: LocalSandbox) -> int:
    """The fork server: the only child of the idle worker's ``unshare``."""
    unshare = _worker_pid(sandbox)
    with open(f"/proc/{unshare}/task/{unshare}/children") as f:
        return int(f.read().split()[0])


def test_worker_killed_while_idle_is_replaced(warm):
    sandbox = warm()
    first = _worker_pid(sandbox)
    os.killpg(first, signal.SIGKILL)
    sandbox._pool._idle[0].proc.wait(timeout=10)  # dead before the next run, however loaded the machine
    result = sandbox.run("print('still here')")
    assert result.ok and result.stdout == "still here\n"
    assert _worker_pid(sandbox) != first


def test_worker_killed_mid_execution_fails_only_that_execution(warm):
    sandbox = warm()
    victim = _worker_pid(sandbox)
    threading.Timer(0.5, os.killpg, (victim, signal.SIGKILL)).start()
    result = sandbox.run("import time\nprint('started')\ntime.sleep(30)", timeout_s=10)
    assert result.exit_code is None and result.limit is SandboxLimit.NONE
    assert "worker died" in result.stderr and result.duration_s < 3.0
    assert sandbox.run("print('next')").stdout == "next\n"


def test_close_leaves_no_process_and_later_runs_spawn(warm, assert_gone):
    marker = f"/reopold-close-{uuid.uuid4().hex}"  # hidden path: only in the worker's argv
    sandbox = warm(warm_workers=3, hide_paths=("/run", marker))
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: sandbox.run("import time\ntime.sleep(0.3)"), range(3)))
    assert len(sandbox._pool._idle) == 3
    sandbox.close()
    assert_gone(marker=marker)
    assert not sandbox.warm and sandbox.run("print(1)").stdout == "1\n"


def test_timeout_kills_the_tree_and_keeps_the_worker(warm):
    sandbox = warm()
    seed = sandbox.run(SEED).stdout
    code = "import os, time\nos.fork()\nos.fork()\nos.write(1, b'x\\n')\ntime.sleep(60)"
    result = sandbox.run(code, timeout_s=1.0)
    assert result.limit is SandboxLimit.WALL_TIMEOUT and result.stdout == "x\n" * 4
    assert result.duration_s < 3.0
    assert sandbox.run("import os\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))"
                       ).stdout == "2\n"  # server, program
    _same_worker(sandbox, seed)


def test_warm_workers_zero_spawns():
    sandbox = LocalSandbox(SandboxConfig(warm_workers=0), probe=lambda s: None)
    assert not sandbox.warm and sandbox._pool is None


def test_the_servers_warm_up_leaves_programs_a_fresh_start(warm):
    """The server runs a fixed program before serving; programs must not see any of it."""
    sandbox = warm()
    code = ("import builtins, sys\nprint(__name__, sorted(k for k in sys.modules if 'warm' in k),"
            " 'numbers' in dir(builtins), 'numbers' in globals())")
    assert sandbox.run(code).stdout == "__main__ [] False False\n"


_LITTER = """\
import os
os.chmod(".", 0o777)
os.utime(".", (123456789, 123456789))
try:
    os.setxattr(".", "user.reopold", b"planted")
except OSError:
    pass
os.makedirs("closed/inner")
open("closed/inner/secret.txt", "w").write("secret")
os.chmod("closed/inner", 0)
os.chmod("closed", 0)
os.symlink("/etc", "to_etc")
os.mkfifo("fifo")
os.mkdir("deep")
os.chdir("deep")
for _ in range(300):  # deeper than any path or recursion limit would allow at once
    os.mkdir("d")
    os.chdir("d")
open("bottom.txt", "w").write("secret")
print("littered")
"""

_INSPECT = """\
import os
st = os.stat(".")
print(sorted(os.listdir(".")), oct(st.st_mode & 0o7777), st.st_uid == os.getuid())
print(os.listxattr("."), int(st.st_mtime) != 123456789)
"""


_TOUCH = """\
import os
os.chmod(".", 0o777)
os.utime(".", (123456789, 123456789))
os.unlink("main.py")
print("touched")
"""


@pytest.mark.parametrize("program, said", [(_LITTER, "littered"), (_TOUCH, "touched")],
                         ids=["files-left-helper", "only-attributes-fast-path"])
def test_the_work_directory_is_emptied_between_executions(warm, program, said):
    """Executions of a worker share its tmpfs /tmp: the server empties and resets it, itself
    when only attributes changed, through a helper when the program left files."""
    sandbox = warm()
    seed = sandbox.run(SEED).stdout
    assert sandbox.run(program).stdout == f"{said}\n"
    looked = sandbox.run(_INSPECT)
    assert looked.stdout.splitlines() == ["['main.py'] 0o700 True", "[] True"], looked.stderr
    assert os.path.isdir("/etc")  # a symbolic link is removed, not followed
    _same_worker(sandbox, seed)


def test_empty_workdir_removes_any_tree_without_following_links(tmp_path):
    from reopold_agent.sandbox import _launcher

    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    work = tmp_path / "work"
    (work / "a" / "b").mkdir(parents=True)
    (work / "a" / "b" / "f").write_text("x")
    (work / "a" / "b").chmod(0)
    (work / "link").symlink_to(outside)
    (work / "dirlink").symlink_to(tmp_path)
    deep = work / "deep"
    deep.mkdir()
    here = os.getcwd()
    try:
        os.chdir(deep)
        for _ in range(200):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)
    _launcher.empty_workdir(str(work))
    os.chdir(here)
    assert list(work.iterdir()) == [] and outside.read_text() == "keep"
    assert oct(work.stat().st_mode & 0o7777) == "0o700"


@pytest.fixture
def tmpfs_dir():
    """A fresh directory on /dev/shm (a tmpfs: directory sizes count entries), or skip."""
    import shutil
    import tempfile

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    work = tempfile.mkdtemp(dir="/dev/shm")
    yield work
    shutil.rmtree(work)


@pytest.mark.skipif(not IS_ROOT, reason="resets the owner to root")
def test_reset_workdir_forks_a_helper_only_when_more_than_main_py_is_left(tmpfs_dir, monkeypatch):
    import ctypes

    from reopold_agent.sandbox import _launcher

    libc = ctypes.CDLL(None, use_errno=True)
    empty_size = _launcher.entry_counting_size(tmpfs_dir)
    if empty_size is None:
        pytest.skip("/dev/shm is not a tmpfs")
    main_py = os.path.join(tmpfs_dir, "main.py")
    open(main_py, "w").close()
    os.chmod(tmpfs_dir, 0o777)

    def no_fork() -> int:
        raise AssertionError("forked a helper for a work directory holding only main.py")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fork", no_fork)
        assert _launcher.reset_workdir(libc, empty_size, tmpfs_dir)
    assert os.listdir(tmpfs_dir) == [] and oct(os.stat(tmpfs_dir).st_mode & 0o7777) == "0o700"
    assert os.stat(tmpfs_dir).st_mtime == 0
    open(main_py, "w").close()
    open(os.path.join(tmpfs_dir, "left.txt"), "w").close()
    assert _launcher.reset_workdir(libc, empty_size, tmpfs_dir)  # the helper removes it
    assert os.listdir(tmpfs_dir) == []
    os.makedirs(os.path.join(main_py, "inner"))  # main.py replaced by a directory
    assert _launcher.reset_workdir(libc, empty_size, tmpfs_dir)
    assert os.listdir(tmpfs_dir) == []


def test_entry_counting_size_is_none_where_sizes_do_not_count_entries(tmp_path):
    from reopold_agent.sandbox import _launcher

    size = os.stat(tmp_path).st_size
    (tmp_path / "x").touch()
    counts = os.stat(tmp_path).st_size != size
    (tmp_path / "x").unlink()
    if counts:
        pytest.skip("tmp_path is on a filesystem whose directory sizes count entries")
    assert _launcher.entry_counting_size(str(tmp_path)) is None
    assert list(tmp_path.iterdir()) == []  # the probe file is gone


def test_reset_workdir_reports_a_directory_it_could_not_empty(tmp_path):
    import ctypes

    from reopold_agent.sandbox import _launcher

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    assert not _launcher.reset_workdir(ctypes.CDLL(None, use_errno=True), None, str(not_a_directory))


@pytest.mark.skipif(not IS_ROOT, reason="setting the immutable flag from outside needs root")
def test_a_worker_whose_work_directory_could_not_be_emptied_is_retired(warm):
    """If /tmp may still hold something of an execution, the worker serves no further one."""
    import fcntl
    import struct

    sandbox = warm()
    seed = sandbox.run(SEED).stdout
    stuck = f"/proc/{_server_pid(sandbox)}/root/tmp/stuck"
    flags = []

    def make_it_immutable() -> None:  # what no program can do (CAP_LINUX_IMMUTABLE)
        deadline = time.monotonic() + 10
        while not os.path.exists(stuck) and time.monotonic() < deadline:
            time.sleep(0.01)
        fd = os.open(stuck, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, 0x40086602, struct.pack("i", 0x10))  # FS_IOC_SETFLAGS, immutable
            flags.append("set")
        except OSError as exc:
            flags.append(exc)
        finally:
            os.close(fd)

    setter = threading.Thread(target=make_it_immutable)
    setter.start()
    result = sandbox.run("import time\nopen('stuck', 'w').write('x')\ntime.sleep(1)\nprint('done')",
                         timeout_s=10)
    setter.join()
    if flags != ["set"]:
        pytest.skip(f"this kernel's tmpfs has no immutable flag: {flags}")
    assert result.ok and result.stdout == "done\n"  # the execution itself succeeded
    assert sandbox.run(SEED).stdout != seed  # a new worker
