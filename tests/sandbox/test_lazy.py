"""LazySandbox: built once at the first run, a refusal kept, closed by close()."""

from __future__ import annotations

import threading

import pytest

from reopold_agent.sandbox import LazySandbox, LocalSandbox, SandboxConfig, SandboxUnavailable
from tests.envs.sandbox_double import SubprocessSandbox


class Counting:
    """A factory of subprocess sandboxes that counts builds and records closes."""

    def __init__(self):
        self.built: list[SubprocessSandbox] = []
        self.closed = 0

    def __call__(self) -> SubprocessSandbox:
        factory = self

        class Closable(SubprocessSandbox):
            def close(self) -> None:
                factory.closed += 1

        self.built.append(Closable(timeout_s=10.0))
        return self.built[-1]


def test_builds_nothing_until_the_first_run_then_exactly_once_across_threads():
    factory = Counting()
    lazy = LazySandbox(factory)
    assert not lazy.built and factory.built == []
    outputs = []
    threads = [threading.Thread(target=lambda: outputs.append(lazy.run("print(6*7)").stdout)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outputs == ["42\n"] * 4 and len(factory.built) == 1 and lazy.built
    assert factory.built[0].calls == 4


def test_close_closes_what_was_built_once_and_a_later_run_builds_again():
    factory = Counting()
    lazy = LazySandbox(factory)
    lazy.close()
    assert factory.closed == 0  # nothing built, nothing to close
    lazy.run("pass")
    lazy.close()
    lazy.close()
    assert factory.closed == 1 and not lazy.built
    assert lazy.run("print(1)").stdout == "1\n" and len(factory.built) == 2


def test_a_refusal_names_the_owner_and_is_raised_again_without_rebuilding():
    attempts = []

    def no_isolation():
        attempts.append(1)
        return LocalSandbox(SandboxConfig(), unshare_path="/nonexistent/unshare")

    lazy = LazySandbox(no_isolation, owner="acme/Env-v0")
    for _ in range(2):
        with pytest.raises(SandboxUnavailable) as info:
            lazy.run("print(1)")
        message = str(info.value)
        assert message.startswith("acme/Env-v0 was made without sandbox=")
        assert "isolated execution is unavailable" in message and "Pass a sandbox" in message
    assert len(attempts) == 1 and not lazy.built
