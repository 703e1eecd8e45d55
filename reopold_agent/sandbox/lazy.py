"""A sandbox built at its first use: what an environment made without ``sandbox=`` runs code in.

``gymnasium.make("reopold_agent/ToolMath-v0")`` must work with no arguments, yet building a
sandbox checks isolation and starts workers, which listing or resetting an environment should
not pay for. :class:`LazySandbox` defers that to the first ``run`` and stays fail-closed: when
the backend refuses (no isolation here), that ``run`` and every later one raise the same
:class:`~reopold_agent.sandbox.base.SandboxUnavailable`, naming what to pass instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from reopold_agent.sandbox.base import Sandbox, SandboxResult, SandboxUnavailable
from reopold_agent.sandbox.config import SandboxConfig

DEFAULT_ENV_SANDBOX = SandboxConfig(warm_workers=1)
"""Settings of the sandbox an environment builds for itself: the local, fail-closed backend
with the default limits and one warm worker (one environment runs one program at a time)."""


def default_local_sandbox() -> Sandbox:
    """The local namespaces sandbox with :data:`DEFAULT_ENV_SANDBOX` (raises if isolation fails)."""
    from reopold_agent.sandbox.local import LocalSandbox

    return LocalSandbox(DEFAULT_ENV_SANDBOX)


class LazySandbox(Sandbox):
    """Builds ``factory()`` at the first :meth:`run`; :meth:`close` closes what was built.

    Safe to call from many threads (the build happens once). A refusal of the factory is kept and
    raised again by later runs, so a machine without isolation fails fast every time. After
    :meth:`close`, a further run builds a new sandbox.
    """

    def __init__(self, factory: Callable[[], Sandbox] = default_local_sandbox, *, owner: str = "") -> None:
        """Args:
            factory: builds the real sandbox (may raise :class:`SandboxUnavailable`).
            owner: who made this sandbox, named in a refusal (e.g. an environment id).
        """
        self.factory = factory
        self.owner = owner
        self._sandbox: Sandbox | None = None
        self._refusal: SandboxUnavailable | None = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        """Whether the real sandbox exists now (built and not closed)."""
        return self._sandbox is not None

    def sandbox(self) -> Sandbox:
        """The real sandbox, built on the first call.

        Raises:
            SandboxUnavailable: the factory refused (now or on an earlier call).
        """
        with self._lock:
            if self._refusal is not None:
                raise self._refusal
            if self._sandbox is None:
                try:
                    self._sandbox = self.factory()
                except SandboxUnavailable as exc:
                    who = f"{self.owner} was made without sandbox= and " if self.owner else ""
                    self._refusal = SandboxUnavailable(
                        f"{who}the default local sandbox cannot run here: {exc} Pass a sandbox "
                        "that can (make_sandbox(SandboxConfig(...)) from reopold_agent.sandbox, "
                        "e.g. backend='e2b').")
                    raise self._refusal from exc
            return self._sandbox

    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> SandboxResult:
        return self.sandbox().run(code, stdin=stdin, timeout_s=timeout_s)

    def close(self) -> None:
        """Close the built sandbox, if any (idempotent)."""
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()
