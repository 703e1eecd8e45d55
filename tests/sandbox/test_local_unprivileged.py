"""LocalSandbox used by an ordinary user: a driver dropped to uid 65534 runs hostile cases.

Once per mode: spawning namespaces per execution, and on warm workers (whose server is
uid 0 of its own user namespace, like every program it runs).

The driver (unprivileged_driver.py) runs under the system Python, since a virtual
environment under /root is not readable by uid 65534. Skips only when this cannot be shown:
not root (nobody to drop from), no system Python, repository unreadable by uid 65534, or a
kernel that forbids unprivileged user namespaces; a skip is announced once as an
:class:`UnprivilegedTestsSkipped` warning in the summary, saying why and how to run them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import uuid
import warnings
from pathlib import Path

import pytest

from .conftest import MODES

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("unprivileged_driver.py")
SYSTEM_PYTHON = "/usr/bin/python3"
_AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def _as_nobody(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*_AS_NOBODY, *argv], capture_output=True, text=True, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, timeout=timeout)


class UnprivilegedTestsSkipped(UserWarning):
    """These tests could not run here: the message says why and how to run them."""


_USERNS_HOW = ("allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
               "user.max_user_namespaces > 0, and on Ubuntu "
               "kernel.apparmor_restrict_unprivileged_userns=0)")


@functools.lru_cache(maxsize=None)
def _skip_reason() -> tuple[str, str] | None:
    """(why these tests cannot run here, what to do about it), or None when they can."""
    if os.geteuid() != 0:
        return ("they need root to drop to uid 65534",
                "run this file as root, e.g. sudo .venv/bin/python -m pytest "
                "tests/sandbox/test_local_unprivileged.py (the rest of the suite already runs "
                "the sandbox as this ordinary user)")
    if not os.access("/home", os.W_OK):
        return ("/home is not writable (the private file of uid 65534 goes there)",
                "run them where /home is writable")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no system Python at {SYSTEM_PYTHON}", f"install python3 at {SYSTEM_PYTHON}"
    for knob in ("/proc/sys/kernel/unprivileged_userns_clone",
                 "/proc/sys/user/max_user_namespaces"):
        if os.path.exists(knob) and Path(knob).read_text().strip() == "0":
            return f"the kernel forbids unprivileged user namespaces ({knob} = 0)", _USERNS_HOW
    probe = _as_nobody("unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc",
                       "--net", "true", timeout=30)
    if probe.returncode != 0:
        return (f"the kernel forbids unprivileged user namespaces: {probe.stderr.strip()}",
                _USERNS_HOW)
    imp = _as_nobody(SYSTEM_PYTHON, "-I", "-B", "-c",
                     f"import sys; sys.path.insert(0, {str(DRIVER.parent)!r}); import unprivileged_driver as d; "
                     f"d.import_sandbox({str(REPO)!r})",
                     timeout=30)
    if imp.returncode != 0:
        return (f"uid 65534 cannot import the repository at {REPO}: "
                f"{imp.stderr.strip()[-300:]}",
                "put the clone where uid 65534 can read it (every parent directory o+x, the "
                "files o+r: e.g. under /opt or /srv, not inside a private home directory)")
    return None


_announced: set[tuple[str, str]] = set()
"""Skip reasons already announced as a warning (once per session, not once per mode)."""


def _skip_loudly(reason: tuple[str, str]) -> None:
    """Skip, warning the first time with why and how, so the summary shows it once."""
    why, how = reason
    message = (f"the unprivileged-sandbox tests (tests/sandbox/test_local_unprivileged.py) "
               f"were skipped: {why}. To run them: {how}.")
    if reason not in _announced:
        _announced.add(reason)
        warnings.warn(UnprivilegedTestsSkipped(message), stacklevel=2)
    pytest.skip(message)


def test_a_skip_is_announced_once_with_why_and_how():
    reason = ("a reason for this test only", "a remedy for this test only")
    with pytest.warns(UnprivilegedTestsSkipped) as record:
        for _ in range(2):
            with pytest.raises(pytest.skip.Exception, match="skipped: a reason for this test"):
                _skip_loudly(reason)
    assert len(record) == 1
    assert str(record[0].message).endswith(
        "skipped: a reason for this test only. To run them: a remedy for this test only.")


@pytest.fixture(scope="module", params=list(MODES))
def report(request) -> dict:
    reason = _skip_reason()
    if reason:
        _skip_loudly(reason)
    marker = f"reopold-nobody-{uuid.uuid4().hex}"
    home = Path(f"/home/{marker}")  # stands for nobody's home: private to uid 65534
    home.mkdir(mode=0o700)
    private = home / "key"
    private.write_text("private key")
    private.chmod(0o600)
    for path in (home, private):
        os.chown(path, NOBODY, NOBODY)
    try:
        done = _as_nobody(SYSTEM_PYTHON, "-I", "-B", str(DRIVER), str(REPO), marker,
                          str(MODES[request.param]), str(private))
    finally:
        shutil.rmtree(home)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    data["marker"], data["mode"] = marker, request.param
    return data


def test_runs_isolated_in_a_user_namespace(report):
    assert report["euid"] == NOBODY
    assert report["user_namespace"] and report["isolated"]
    assert report["warm"] == (report["mode"] == "warm")
    case = report["cases"]["identity"]
    uid, pid, visible = case["stdout"].split()
    assert uid == "0" and int(visible) <= 3  # own pid namespace, mapped root
    assert (int(pid) >= 2) if report["warm"] else (pid == "2")  # warm: the server forks many


def test_the_program_cannot_signal_pid_1(report):
    """pid 1 (the launcher, or the warm server, with the program's uid) installs no handler:
    the kernel drops signals to it from inside, SIGKILL and SIGSTOP included."""
    sent, after = report["cases"]["signal_server"], report["cases"]["after_signals"]
    assert sent["exit_code"] == 0 and after["exit_code"] == 0, (sent, after)
    if report["warm"]:
        assert after["stdout"] == sent["stdout"]  # the same worker served the next execution


def test_fork_bomb(report):
    assert report["cases"]["fork_bomb"]["limit"] == "processes"


def test_memory(report):
    assert report["cases"]["memory"]["limit"] == "memory"


def test_sleep_past_timeout(report):
    case = report["cases"]["sleep"]
    assert case["limit"] == "wall_timeout" and case["duration_s"] < 3


def test_network(report):
    assert report["cases"]["network"]["stdout"] == "blocked 1\n"  # EPERM: IP sockets denied


def test_the_callers_private_files_are_hidden(report):
    """The program is the caller (uid 65534) in its user namespace: only hiding /home keeps
    the caller's own 0600 file out of its reach."""
    assert report["cases"]["private"]["stdout"] == "hidden 2\n"


def test_root_only_file(report):
    assert "PermissionError" in report["cases"]["shadow"]["stderr"]


def test_writes_to_world_writable_host_dirs_fail(report):
    case = report["cases"]["writes"]
    # EROFS where the path is visible read-only; ENOENT where the private /tmp hides it (a
    # checkout under /tmp); either way nothing is written on the host.
    lines = case["stdout"].split("\n")[:3]
    assert lines[:2] == ["denied 30"] * 2 and lines[2] in ("denied 30", "denied 2"), lines
    for where in ("/var/tmp", "/dev/shm", str(REPO)):
        assert not os.path.exists(f"{where}/{report['marker']}")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="uses x86_64 key syscalls")
def test_nothing_of_one_execution_reaches_the_next(report, assert_gone):
    assert report["cases"]["plant"]["stdout"] == "-1 1\n"  # add_key denied (EPERM)
    # pid 1 (the server or the launcher) and itself
    assert report["cases"]["look"]["stdout"] == "['main.py'] None 2 False\n"
    assert_gone(marker=report["marker"])


def test_setsid_escape(report, assert_gone):
    case = report["cases"]["escape"]
    assert case["stdout"] == "parent done\n" and case["limit"] == "none"
    assert_gone(marker=report["marker"])
