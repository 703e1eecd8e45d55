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
    assert 1.0 <= elapsed < 3.0, f"4 runs of 0.5 s on 2 workers took {elapsed:.2f} s"
    assert len(sandbox._pool._idle) == 2


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
                       ).stdout == "3\n"  # server, supervisor, program
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


def test_the_work_directory_is_emptied_between_executions(warm):
    """Executions of a worker share its tmpfs /tmp: the supervisor empties and resets it."""
    sandbox = warm()
    seed = sandbox.run(SEED).stdout
    assert sandbox.run(_LITTER).stdout == "littered\n"
    looked = sandbox.run(_INSPECT)
    assert looked.stdout.splitlines() == ["['main.py'] 0o700 True", "[] True"], looked.stderr
    assert os.path.isdir("/etc")  # the symbolic link was removed, not followed
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


@pytest.mark.skipif(not IS_ROOT, reason="killing the supervisor from outside needs root")
def test_a_worker_whose_supervisor_died_is_retired(warm):
    """If /tmp may not have been emptied, the worker serves no further execution."""
    sandbox = warm()
    seed = sandbox.run(SEED).stdout
    server = _server_pid(sandbox)

    def kill_supervisor() -> None:
        with open(f"/proc/{server}/task/{server}/children") as f:
            for pid in f.read().split():
                os.kill(int(pid), signal.SIGKILL)

    threading.Timer(0.5, kill_supervisor).start()
    result = sandbox.run("import time\nprint('started')\ntime.sleep(30)", timeout_s=10)
    assert result.exit_code is None and "supervisor died" in result.stderr
    assert sandbox.run(SEED).stdout != seed  # a new worker
