"""Local, fail-closed sandbox: Linux namespaces, an unprivileged identity and rlimits.

Each execution runs as::

    unshare --pid --fork --kill-child --mount-proc --net --ipc --uts [--user --map-root-user]
        python -I -S _launcher.py SPEC        # pid 1 of the new pid namespace
          └─ setpriv (drop uid/caps, no_new_privs) python -I -u main.py   # pid 2

* Root caller: no user namespace; the program runs as a uid drawn from
  ``[uid_base, uid_base + uid_count)``, distinct for concurrent executions of one sandbox
  (so RLIMIT_NPROC counts per execution), with no groups and no capabilities.
* Ordinary caller: ``--user --map-root-user``; the program is uid 0 of its own user namespace
  (the caller's uid outside) with an empty capability bounding set and securebits that keep
  it so; RLIMIT_NPROC counts per user namespace, i.e. per execution.
* Both: a new network namespace (no interface up, so no loopback and no route), empty tmpfs
  over ``hide_paths`` (home directories, ``/run``, ``/var/tmp``, ``/dev/shm``, ...: private
  files and the world-writable places where host unix sockets live; the interpreter's own
  prefix is bound back when it lies under one), every mount read-only, a private
  size-limited tmpfs as ``/tmp`` (the working directory and ``HOME``), rlimits on CPU,
  address space, file size, open files, processes and core files, and a seccomp filter that
  denies the kernel key syscalls (keyrings belong to a uid and outlive processes), every
  socket family but ``AF_UNIX`` and io_uring (see ``_launcher.syscall_filter``).

Known limits of this design (docs/sandbox.md lists what a program sees): host files outside
the hidden directories stay readable (read-only) as far as the program's uid may read them;
a world-writable unix socket outside the hidden directories remains reachable; RLIMIT_AS is
per process, so one execution may use up to ``max_processes * memory_mb`` plus its tmpfs;
RLIMIT_NPROC also counts threads. Put the trainer in a cgroup for a hard total.
* The wall-clock timeout and the output limit kill the process group of ``unshare``; with
  ``--kill-child`` that kills the namespace init and so every process in the namespace,
  including ones that called ``setsid``. The namespace also dies when the program exits.

If the self-test (:data:`_verdict.PROBE_CODE`) fails at construction, the sandbox raises
:class:`SandboxUnavailable`, unless ``allow_unisolated`` is set: then programs run with only
rlimits, the timeout and a temporary directory, which is NOT a security boundary.

Warm workers (``warm_workers > 0``, the default; isolated only): up to that many long-lived
namespace sets like the one above, whose pid 1 is a fork server; each program is forked from
its warm interpreter into a fresh IPC namespace, with the worker's ``/tmp`` (emptied after
every execution), the same rlimits and the same privilege drop (as root: a pool uid per
execution). Every process of an execution is killed before its result is reported. What
executions of one worker share, and what forking without ``exec`` means for a program: see
``_warm.py``. If the warm self-test fails, the sandbox logs a warning and spawns per
execution (``warm`` is then False). A call's wall limit counts from the call: waiting for a
busy worker uses it up (``SandboxResult.queue_wait_s``), and a call that waited all of it
returns a WALL_TIMEOUT result without running.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from reopold_agent.sandbox._pump import Channels, PumpOutcome, kill_tree, pump
from reopold_agent.sandbox._warm import Call, NoFreeWorker, WarmPool, WarmWorker, WorkerError
from reopold_agent.sandbox._verdict import PROBE_CODE, build_result, probe_failure
from reopold_agent.sandbox.base import Sandbox, SandboxLimit, SandboxResult, SandboxUnavailable
from reopold_agent.sandbox.config import SandboxConfig
from reopold_agent.sandbox.visibility import exposed_paths, hidden_paths

logger = logging.getLogger(__name__)

_PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3")
_PROBE_TIMEOUT_S = 20.0
_MIB = 1024 * 1024
_PROGRAM_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
                "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
"""Environment of a warm worker's server, hence of every program it forks."""
_USERNS_SECUREBITS = "+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked," \
                     "+keep_caps_locked"

Probe = Callable[["LocalSandbox"], None]
"""An isolation self-test: returns if isolation works, raises SandboxUnavailable if not."""


class _UidPool:
    """Hands out distinct uids from a range to concurrent executions; thread-safe."""

    def __init__(self, base: int, count: int) -> None:
        self._base, self._count = base, count
        self._busy: set[int] = set()
        self._cond = threading.Condition()

    def acquire(self) -> int:
        """Take a free uid (random, so separate sandboxes rarely collide), waiting if none."""
        with self._cond:
            while len(self._busy) >= self._count:
                self._cond.wait()
            for _ in range(8):
                uid = self._base + secrets.randbelow(self._count)
                if uid not in self._busy:
                    break
            else:
                uid = next(u for u in range(self._base, self._base + self._count)
                           if u not in self._busy)
            self._busy.add(uid)
            return uid

    def release(self, uid: int) -> None:
        with self._cond:
            self._busy.discard(uid)
            self._cond.notify()


def _resolve_python(config: SandboxConfig) -> str:
    candidates = (config.python_executable,) if config.python_executable else _PYTHON_CANDIDATES
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise SandboxUnavailable(
        f"no Python interpreter for the sandbox at {', '.join(candidates)}; set "
        "SandboxConfig.python_executable to one an unprivileged user can run")


def probe_isolation(sandbox: LocalSandbox) -> None:
    """Default probe: run :data:`PROBE_CODE` isolated and check what it saw.

    Raises:
        SandboxUnavailable: a tool is missing, the kernel refused a namespace, or a check
            (pid/net namespace, read-only root, no capabilities, unprivileged uid) failed.
    """
    for tool in (sandbox.unshare_path, sandbox.setpriv_path):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            raise SandboxUnavailable(f"{tool} is missing or not executable (util-linux)")
    result = sandbox._execute(PROBE_CODE, "", _PROBE_TIMEOUT_S, isolate=True)
    problem = probe_failure(result, expect_root_inside=sandbox.user_namespace)
    if problem:
        raise SandboxUnavailable(problem)


def _not_started(why: object, start: float) -> SandboxResult:
    return SandboxResult(stdout="", stderr=f"sandbox could not start: {why}\n", exit_code=None,
                         limit=SandboxLimit.NONE, duration_s=time.monotonic() - start)


class LocalSandbox(Sandbox):
    """Runs Python programs in Linux namespaces on this machine. Thread-safe."""

    def __init__(self, config: SandboxConfig | None = None, *,
                 unshare_path: str = "/usr/bin/unshare", setpriv_path: str = "/usr/bin/setpriv",
                 user_namespace: bool | None = None, probe: Probe | None = None) -> None:
        """Check that isolation works here (or that running without it was allowed).

        Args:
            config: limits; ``backend`` is ignored. Defaults to ``SandboxConfig()``.
            unshare_path: the util-linux ``unshare`` binary.
            setpriv_path: the util-linux ``setpriv`` binary.
            user_namespace: use a user namespace; None means exactly when not running as root
                (True is refused as root; False as an ordinary user makes isolation fail).
            probe: isolation self-test, :func:`probe_isolation` by default.

        Raises:
            SandboxUnavailable: isolation does not work and ``config.allow_unisolated`` is
                False, or no usable Python interpreter was found.
            ValueError: ``user_namespace=True`` while running as root.
        """
        self.config = config if config is not None else SandboxConfig()
        self.python = _resolve_python(self.config)
        self.unshare_path, self.setpriv_path = unshare_path, setpriv_path
        is_root = os.geteuid() == 0
        if user_namespace and is_root:
            raise ValueError("user_namespace=True as root would keep root's file access and "
                             "escape RLIMIT_NPROC; as root the sandbox drops to a pooled uid")
        self.user_namespace = not is_root if user_namespace is None else user_namespace
        self._launcher = str(Path(__file__).with_name("_launcher.py"))
        self.hidden = hidden_paths(self.config)
        """Host directories covered by an empty tmpfs inside (``~`` expanded)."""
        self.exposed = exposed_paths(self.hidden, self.python)
        """Interpreter prefixes under a hidden directory, bound back read-only."""
        self._uids = _UidPool(self.config.uid_base, self.config.uid_count)
        self.isolated = True
        """False only when isolation failed and ``allow_unisolated`` let us run without it."""
        self.warm = False
        """True when runs go to warm workers (``warm_workers > 0``, isolated, self-test ok)."""
        self._pool: WarmPool | None = None
        try:
            (probe or probe_isolation)(self)
        except SandboxUnavailable as exc:
            if not self.config.allow_unisolated:
                raise SandboxUnavailable(
                    f"refusing to run code: isolated execution is unavailable here ({exc}). "
                    "Running without isolation is unsafe; set "
                    "SandboxConfig.allow_unisolated=True to accept that (rlimits, timeout and a "
                    "temp dir only).") from exc
            logger.warning("sandbox isolation unavailable (%s); running UNISOLATED as allowed "
                           "by allow_unisolated=True", exc)
            self.isolated = False
        if self.isolated and self.config.warm_workers > 0:
            self._start_warm()

    def _start_warm(self) -> None:
        """Create the worker pool and self-test it; on failure keep the spawn path."""
        self._pool = WarmPool(self.config.warm_workers, self._new_worker)
        self._close_pool = weakref.finalize(self, self._pool.close)
        result = self._execute_warm(self._pool, PROBE_CODE, "", _PROBE_TIMEOUT_S)
        problem = probe_failure(result, expect_root_inside=self.user_namespace, warm=True)
        if problem is None:
            self.warm = True
            return
        logger.warning("warm sandbox workers unavailable (%s); spawning one namespace set per "
                       "execution instead", problem)
        self.close()

    def _new_worker(self) -> WarmWorker:
        spec = {"hide_paths": self.hidden, "expose_paths": self.exposed,
                "workdir_mb": self.config.workdir_mb,
                "rlimits": self._rlimits(True),
                "user_namespace": self.user_namespace}
        server = str(Path(__file__).with_name("_forkserver.py"))
        return WarmWorker([*self._namespaces(), self.python, "-I", "-u", server], spec,
                          dict(_PROGRAM_ENV))

    def close(self) -> None:
        """Stop the warm workers (no process of them remains); later runs use spawning."""
        pool, self._pool, self.warm = self._pool, None, False
        if pool is not None:
            self._close_pool.detach()
            pool.close()

    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> SandboxResult:
        """Run ``code`` as ``__main__`` under the configured limits.

        Args:
            code: Python source.
            stdin: text fed to standard input.
            timeout_s: wall-clock limit in seconds; None uses ``config.timeout_s``. It counts
                from this call: time spent waiting for a free warm worker is part of it
                (reported in ``queue_wait_s``), and a call that waited all of it returns a
                WALL_TIMEOUT result without running the program.

        Returns:
            The result; limits that fired are reported in ``limit``, never raised.
        """
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        if not isinstance(code, str) or not isinstance(stdin, str):
            raise TypeError("code and stdin must be str")
        pool = self._pool
        if pool is not None:
            return self._execute_warm(pool, code, stdin, float(timeout))
        return self._execute(code, stdin, float(timeout), isolate=self.isolated)

    def _rlimits(self, isolate: bool) -> dict[str, tuple[int, int]]:
        cfg = self.config
        # In a user namespace pid 1 (the launcher, or a warm worker's server) has the
        # program's uid: leave it one slot.
        extra = 1 if isolate and self.user_namespace else 0
        nproc = cfg.max_processes + extra
        return {
            "RLIMIT_CPU": (cfg.cpu_time_s, cfg.cpu_time_s + 1),
            "RLIMIT_AS": (cfg.memory_mb * _MIB, cfg.memory_mb * _MIB),
            "RLIMIT_FSIZE": (cfg.file_size_mb * _MIB, cfg.file_size_mb * _MIB),
            "RLIMIT_NOFILE": (cfg.max_open_files, cfg.max_open_files),
            "RLIMIT_NPROC": (nproc, nproc),
            "RLIMIT_CORE": (0, 0),
        }

    def _priv_prefix(self, isolate: bool, uid: int) -> list[str]:
        if not isolate:
            return []
        common = ["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
        if self.user_namespace:
            return [self.setpriv_path, *common, f"--securebits={_USERNS_SECUREBITS}", "--"]
        return [self.setpriv_path, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                *common, "--"]

    def _namespaces(self) -> list[str]:
        namespaces = [self.unshare_path, "--pid", "--fork", "--kill-child", "--mount-proc",
                      "--net", "--ipc", "--uts"]
        if self.user_namespace:
            namespaces += ["--user", "--map-root-user"]
        return [*namespaces, "--"]

    def _command(self, spec: dict, isolate: bool) -> list[str]:
        launcher = [self.python, "-I", "-S", self._launcher,
                    json.dumps(spec, separators=(",", ":"))]
        return [*self._namespaces(), *launcher] if isolate else launcher

    def _execute_warm(self, pool: WarmPool, code: str, stdin: str, timeout_s: float
                      ) -> SandboxResult:
        """Run one program on a borrowed warm worker (spawn instead if the pool was closed).

        The wall limit counts from now: waiting for a free worker uses it up, and a call
        that waited all of it returns a WALL_TIMEOUT result without running the program.
        """
        call = Call(time.monotonic(), timeout_s)
        uid = 0 if self.user_namespace else self._uids.acquire()
        try:
            result = self._on_worker(pool, code, stdin.encode("utf-8"), uid, call)
        finally:
            if not self.user_namespace:
                self._uids.release(uid)
        if result is not None:
            return result
        started = time.monotonic()
        if started >= call.deadline:
            return call.ran_out("waiting for the closing sandbox used")
        spawned = self._execute(code, stdin, call.deadline - started, isolate=True)
        return replace(spawned, queue_wait_s=started - call.start)

    def _on_worker(self, pool: WarmPool, code: str, stdin: bytes, uid: int, call: Call
                   ) -> SandboxResult | None:
        """One execution on a borrowed worker, on a new one if handing over fails (nothing
        ran then); None if the pool is closed."""
        failure: WorkerError | None = None
        for _ in range(2):
            try:
                worker = pool.borrow(call.deadline)
            except NoFreeWorker as exc:
                return call.ran_out(f"{exc} for")
            except WorkerError as exc:
                return _not_started(exc, call.start)
            except RuntimeError:  # closed
                return None
            start = time.monotonic()
            try:
                if start >= call.deadline:
                    return call.ran_out("starting a sandbox worker took")
                out = worker.execute(code, stdin, uid, call.deadline,
                                     self.config.max_output_bytes)
                result = self._warm_result(out, time.monotonic() - start)
                return replace(result, queue_wait_s=start - call.start)
            except WorkerError as exc:
                failure = exc
            finally:
                pool.give_back(worker)
        return _not_started(failure, call.start)

    def _warm_result(self, out: PumpOutcome, duration_s: float) -> SandboxResult:
        if not out.status and not (out.timed_out or out.overflow):
            out.status += b'{"setup_error": "the sandbox worker died during the execution"}\n'
        return build_result(out, None, duration_s, self.config.cpu_time_s)

    def _execute(self, code: str, stdin: str, timeout_s: float, *, isolate: bool
                 ) -> SandboxResult:
        """Run one program; the whole process tree is gone when this returns."""
        pooled = isolate and not self.user_namespace
        uid = self._uids.acquire() if pooled else (0 if isolate else os.getuid())
        host_dir = tempfile.mkdtemp(prefix="reopold-sandbox-")
        try:
            code_path = os.path.join(host_dir, "main.py")
            with open(code_path, "w", encoding="utf-8") as f:
                f.write(code)
            spec = {"code_path": code_path, "isolate": isolate, "uid": uid,
                    "workdir_mb": self.config.workdir_mb,
                    "hide_paths": self.hidden, "expose_paths": self.exposed,
                    "rlimits": self._rlimits(isolate),
                    "priv_prefix": self._priv_prefix(isolate, uid), "python": self.python}
            return self._spawn_and_pump(spec, stdin.encode("utf-8"), timeout_s)
        finally:
            shutil.rmtree(host_dir, ignore_errors=True)
            if pooled:
                self._uids.release(uid)

    def _spawn_and_pump(self, spec: dict, stdin: bytes, timeout_s: float) -> SandboxResult:
        status_r, status_w = os.pipe()
        spec["status_fd"] = status_w
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                self._command(spec, spec["isolate"]), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(status_w,),
                start_new_session=True, cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        except OSError as exc:
            os.close(status_r)
            return SandboxResult(stdout="", stderr=f"sandbox could not start: {exc}\n",
                                 exit_code=None, limit=SandboxLimit.NONE,
                                 duration_s=time.monotonic() - start)
        finally:
            os.close(status_w)
        channels = Channels(stdin=proc.stdin.fileno(), stdout=proc.stdout.fileno(),
                            stderr=proc.stderr.fileno(), status=status_r,
                            kill=lambda: kill_tree(proc), close_stdin=proc.stdin.close)
        try:
            out = pump(channels, stdin, start + timeout_s, self.config.max_output_bytes)
        finally:
            kill_tree(proc)  # nothing of this execution may outlive run()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                stream.close()
            os.close(status_r)
        return build_result(out, proc.returncode, time.monotonic() - start,
                            self.config.cpu_time_s)
