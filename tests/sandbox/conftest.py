"""Fixtures of the sandbox tests: one isolated sandbox per module, host-side process checks."""

from __future__ import annotations

import os
import time

import pytest

from reopold_agent.sandbox import LocalSandbox, SandboxConfig, SandboxUnavailable

FAST = SandboxConfig(timeout_s=5.0, cpu_time_s=5, max_output_bytes=4096)
"""Limits of the shared test sandbox: small enough that every hostile case ends quickly."""


def _make_isolated(config: SandboxConfig = FAST, **kwargs: object) -> LocalSandbox:
    try:
        return LocalSandbox(config, **kwargs)
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace isolation unavailable on this machine: {exc}")


@pytest.fixture(scope="session")
def make_isolated():
    """Build an isolated LocalSandbox(config, **kwargs), or skip if this machine cannot."""
    return _make_isolated


@pytest.fixture(scope="module")
def sandbox() -> LocalSandbox:
    """An isolated sandbox with the FAST limits."""
    return _make_isolated()


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
