"""Fixtures of the sandbox tests: one isolated sandbox per module, host-side process checks."""

from __future__ import annotations

import os
import time

import pytest

from reopold_agent.sandbox import LocalSandbox, SandboxConfig, SandboxUnavailable

FAST = SandboxConfig(timeout_s=5.0, cpu_time_s=5, max_output_bytes=4096)
"""Limits of the shared test sandbox: small enough that every hostile case ends quickly."""

MODES = {"spawn": 0, "warm": 4}
"""Execution paths of LocalSandbox and the ``warm_workers`` that selects each."""


def _make_isolated(config: SandboxConfig = FAST, **kwargs: object) -> LocalSandbox:
    try:
        return LocalSandbox(config, **kwargs)
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace isolation unavailable on this machine: {exc}")


@pytest.fixture(scope="module", params=list(MODES))
def mode(request) -> str:
    """"spawn" (fresh namespaces per execution) or "warm" (a pool of fork-server workers)."""
    return request.param


@pytest.fixture(scope="module")
def make_isolated(mode):
    """Build an isolated LocalSandbox(config, **kwargs) in ``mode``, or skip if impossible.

    The ``warm_workers`` of ``config`` is kept in warm mode unless it is 0 there; every
    sandbox is closed when the module ends.
    """
    made: list[LocalSandbox] = []

    def make(config: SandboxConfig = FAST, **kwargs: object) -> LocalSandbox:
        workers = MODES[mode] if mode == "spawn" or config.warm_workers == 0 \
            else config.warm_workers
        sandbox = _make_isolated(config.with_overrides(warm_workers=workers), **kwargs)
        made.append(sandbox)
        assert sandbox.warm == (mode == "warm"), "warm workers fell back to spawning"
        return sandbox

    yield make
    for sandbox in made:
        sandbox.close()


@pytest.fixture(scope="module")
def sandbox(make_isolated) -> LocalSandbox:
    """An isolated sandbox with the FAST limits, in each mode."""
    return make_isolated()


def _processes_matching(marker: str | None = None, uid: int | None = None) -> list[int]:
    """Host pids whose command line contains ``marker`` or whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if marker is not None:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            if uid is not None and os.stat(f"/proc/{entry}").st_uid == uid:
                found.append(int(entry))
        except OSError:
            continue
    return found


def _assert_gone(marker: str | None = None, uid: int | None = None, within_s: float = 1.0) -> None:
    """Fail unless no host process matches within ``within_s`` (the kernel reaps async)."""
    end = time.monotonic() + within_s
    while (left := _processes_matching(marker, uid)) and time.monotonic() < end:
        time.sleep(0.05)
    assert not left, f"processes survived the sandbox: {left}"


@pytest.fixture(scope="session")
def assert_gone():
    """``assert_gone(marker=None, uid=None)``: no host process matches after the run."""
    return _assert_gone
