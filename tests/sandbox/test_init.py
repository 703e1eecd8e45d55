"""make_sandbox: the one place that reads E2B_API_KEY; backend selection."""

from __future__ import annotations

import pytest

from reopold_agent.sandbox import (E2BSandbox, LocalSandbox, SandboxConfig, SandboxUnavailable,
                                   make_sandbox)


def test_e2b_without_key_is_unavailable():
    with pytest.raises(SandboxUnavailable, match="API key"):
        make_sandbox(SandboxConfig(backend="e2b"), env={})


def test_e2b_key_comes_from_env_or_config():
    from_env = make_sandbox(SandboxConfig(backend="e2b"), env={"E2B_API_KEY": "env-key"})
    assert isinstance(from_env, E2BSandbox) and from_env._api_key == "env-key"
    from_config = make_sandbox(SandboxConfig(backend="e2b", e2b_api_key="cfg"),
                               env={"E2B_API_KEY": "env-key"})
    assert from_config._api_key == "cfg"


def test_local_is_the_default():
    try:
        sandbox = make_sandbox(env={})
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace isolation unavailable here: {exc}")
    assert isinstance(sandbox, LocalSandbox) and sandbox.isolated
    assert sandbox.run("print('ok')").stdout == "ok\n"
