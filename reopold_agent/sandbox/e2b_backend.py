"""E2B cloud backend: each execution gets a fresh E2B code-interpreter sandbox.

Departures from the local backend, forced by E2B's ``run_code`` (a Jupyter kernel):

* the program runs through ``exec`` in a fresh ``__main__`` namespace of the kernel, with
  ``sys.stdin`` replaced by the given text; ``sys.exit(0)`` counts as success, any other
  ``SystemExit`` or uncaught exception as exit status 1;
* limits other than the wall clock and the output size are E2B's own; only ``WALL_TIMEOUT``
  and ``OUTPUT`` are reported;
* one cloud sandbox per execution (created and killed around it): slow (~1 s) but isolated
  and thread-safe without shared state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from reopold_agent.sandbox.base import Sandbox, SandboxLimit, SandboxResult, SandboxUnavailable
from reopold_agent.sandbox.config import SandboxConfig

_SANDBOX_SLACK_S = 30
"""Seconds the cloud sandbox outlives the execution timeout (creation, teardown)."""

_WRAPPER = """\
import io as _io, sys as _sys
_sys.stdin = _io.StringIO({stdin!r})
try:
    exec(compile({code!r}, "main.py", "exec"), {{"__name__": "__main__"}})
except SystemExit as _exit:
    if _exit.code not in (None, 0):
        raise
"""

SandboxFactory = Callable[..., Any]
"""Creates a cloud sandbox: called like ``e2b_code_interpreter.Sandbox.create``."""


def _default_factory() -> SandboxFactory:
    try:
        from e2b_code_interpreter import Sandbox as E2BCloudSandbox
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise SandboxUnavailable("the e2b backend needs the e2b-code-interpreter package") from exc
    return E2BCloudSandbox.create


def _clip(parts: list[str], max_bytes: int) -> tuple[str, bool]:
    data = "".join(parts).encode("utf-8")
    return data[:max_bytes].decode("utf-8", "replace"), len(data) > max_bytes


class E2BSandbox(Sandbox):
    """Runs Python programs in E2B cloud sandboxes. Thread-safe."""

    def __init__(self, config: SandboxConfig | None = None, *, api_key: str | None = None,
                 factory: SandboxFactory | None = None) -> None:
        """Prepare the backend; nothing is created until :meth:`run`.

        Args:
            config: limits and ``e2b_template``; ``e2b_api_key`` is used when ``api_key`` is
                None.
            api_key: E2B API key, overriding ``config.e2b_api_key``.
            factory: replaces ``e2b_code_interpreter.Sandbox.create`` (tests).

        Raises:
            SandboxUnavailable: no API key was given.
        """
        self.config = config if config is not None else SandboxConfig(backend="e2b")
        self._api_key = api_key if api_key is not None else self.config.e2b_api_key
        if not self._api_key:
            raise SandboxUnavailable(
                "the e2b sandbox backend needs an API key: pass SandboxConfig.e2b_api_key (the "
                "CLI reads it from the E2B_API_KEY environment variable)")
        self._factory = factory if factory is not None else _default_factory()

    def run(self, code: str, *, stdin: str = "", timeout_s: float | None = None) -> SandboxResult:
        """Run ``code`` in a new cloud sandbox.

        Args:
            code: Python source.
            stdin: text exposed as ``sys.stdin``.
            timeout_s: wall-clock limit in seconds; None uses ``config.timeout_s``.

        Returns:
            The result; an E2B timeout is reported as ``WALL_TIMEOUT``.
        """
        timeout = self.config.timeout_s if timeout_s is None else timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
        start = time.monotonic()
        kwargs: dict[str, Any] = {"timeout": int(math.ceil(timeout)) + _SANDBOX_SLACK_S,
                                  "api_key": self._api_key}
        if self.config.e2b_template:
            kwargs["template"] = self.config.e2b_template
        cloud = self._factory(**kwargs)
        try:
            return self._run_in(cloud, _WRAPPER.format(code=code, stdin=stdin), timeout, start)
        finally:
            try:
                cloud.kill()
            except Exception:  # noqa: BLE001 - teardown must not hide the result
                pass

    def _run_in(self, cloud: Any, wrapped: str, timeout: float, start: float) -> SandboxResult:
        try:
            from e2b import TimeoutException
        except ImportError:  # pragma: no cover
            TimeoutException = TimeoutError  # noqa: N806
        try:
            execution = cloud.run_code(wrapped, timeout=timeout)
        except (TimeoutException, TimeoutError) as exc:
            return SandboxResult(stdout="", stderr=f"{exc}\n", exit_code=None,
                                 limit=SandboxLimit.WALL_TIMEOUT,
                                 duration_s=time.monotonic() - start)
        return self.result_from_execution(execution, time.monotonic() - start)

    def result_from_execution(self, execution: Any, duration_s: float) -> SandboxResult:
        """Map an E2B ``Execution`` (logs, error, results) onto a :class:`SandboxResult`.

        Args:
            execution: what ``run_code`` returned.
            duration_s: wall-clock seconds of the execution.
        """
        stderr_parts = list(execution.logs.stderr)
        if execution.error is not None:
            err = execution.error
            stderr_parts.append(err.traceback or f"{err.name}: {err.value}\n")
        stdout, out_cut = _clip(list(execution.logs.stdout), self.config.max_output_bytes)
        stderr, err_cut = _clip(stderr_parts, self.config.max_output_bytes)
        return SandboxResult(
            stdout=stdout, stderr=stderr, exit_code=0 if execution.error is None else 1,
            limit=SandboxLimit.OUTPUT if (out_cut or err_cut) else SandboxLimit.NONE,
            duration_s=duration_s, stdout_truncated=out_cut, stderr_truncated=err_cut)
