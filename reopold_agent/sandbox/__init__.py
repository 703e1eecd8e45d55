"""Code execution for tool-using agents: one interface, two backends.

* ``local`` (default): Linux namespaces + unprivileged identity + rlimits; fail-closed
  (:class:`SandboxUnavailable` when isolation does not work, unless ``allow_unisolated``).
  By default a pool of ``warm_workers`` fork-server workers runs the programs (several times
  the throughput of fresh namespaces per execution, ``warm_workers=0``); call ``close()``.
* ``e2b``: E2B cloud sandboxes; needs an API key.

Example:
    >>> sandbox = make_sandbox(SandboxConfig(timeout_s=5))
    >>> sandbox.run("print(input()[::-1])", stdin="abc").stdout
    'cba\\n'
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from reopold_agent.sandbox.base import Sandbox, SandboxLimit, SandboxResult, SandboxUnavailable
from reopold_agent.sandbox.config import SandboxConfig
from reopold_agent.sandbox.e2b_backend import E2BSandbox
from reopold_agent.sandbox.lazy import LazySandbox
from reopold_agent.sandbox.local import LocalSandbox

__all__ = [
    "E2BSandbox",
    "LazySandbox",
    "LocalSandbox",
    "Sandbox",
    "SandboxConfig",
    "SandboxLimit",
    "SandboxResult",
    "SandboxUnavailable",
    "make_sandbox",
]


def make_sandbox(config: SandboxConfig | None = None,
                 env: Mapping[str, str] = os.environ) -> Sandbox:
    """Build the backend named by ``config.backend``.

    This is the one place of the sandbox package that consults the environment: for the e2b
    backend, ``E2B_API_KEY`` from ``env`` fills in a missing ``config.e2b_api_key``.

    Args:
        config: backend and limits; defaults to ``SandboxConfig()`` (local).
        env: where to look up ``E2B_API_KEY`` (pass ``{}`` to ignore the environment).

    Raises:
        SandboxUnavailable: the backend cannot run here (see the backends).
    """
    config = config if config is not None else SandboxConfig()
    if config.backend == "e2b":
        api_key = config.e2b_api_key or env.get("E2B_API_KEY") or None
        return E2BSandbox(config, api_key=api_key)
    return LocalSandbox(config)

