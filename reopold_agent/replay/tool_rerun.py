"""Re-run a recorded ``python`` tool call in the sandbox and compare with what was recorded.

The new output is formatted exactly as the environments format it for the model
(:func:`reopold_agent.envs.tools.format_sandbox_result`, then
:func:`reopold_agent.tool_protocol.truncate_output` at the environment's
``max_tool_output_chars``), so an unchanged program with deterministic output matches the
recorded tool message character for character. Only ``python`` calls can be re-run: other tools
depend on episode state (images, files) that the trajectory does not store.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..sandbox import Sandbox, SandboxConfig
from ..sandbox.trust import looser_settings, no_looser_than
from ..tool_protocol import truncate_output
from .turns import ToolCallView

DEFAULT_MAX_OUTPUT_CHARS = 4_000
"""The environments' default ``max_tool_output_chars``."""


@dataclass
class RerunResult:
    """Outcome of re-running one recorded tool call."""

    call: ToolCallView
    ran: bool
    """False when the call could not be re-run (malformed, not python, sandbox failure)."""
    matches: bool | None
    """Whether the new output equals the recorded one; None when it did not run."""
    output: str
    """The new tool output (as the model would see it), or why it did not run."""
    diff: str = ""
    """Unified diff recorded -> new when they differ."""

    def headline(self) -> str:
        where = f"turn {self.call.turn} call {self.call.index}"
        if not self.ran:
            return f"{where}: not re-run ({self.output})"
        return f"{where}: output {'MATCHES' if self.matches else 'DIFFERS from'} the recording"


@dataclass
class ReplaySandboxConfig:
    """The sandbox that re-runs a run's programs, and how it was chosen."""

    config: SandboxConfig
    """What the re-runs use."""
    ignored: list[str]
    """Settings of the run's ``config.yaml`` left out because they would weaken isolation
    (or are invalid), one note each."""
    weakened: list[str]
    """Ways the user's own overrides make the sandbox isolate less than the defaults."""


REPLAY_SANDBOX = SandboxConfig(warm_workers=1)
"""The reference of replay: the default limits, one warm worker (one call at a time)."""


def replay_sandbox_config(run_config: dict[str, Any],
                          overrides: Mapping[str, Any] | None = None) -> ReplaySandboxConfig:
    """The sandbox settings for re-running a run's recorded programs.

    A run directory may come from anyone, so its ``sandbox:`` section only tightens
    :data:`REPLAY_SANDBOX` (see :func:`reopold_agent.sandbox.trust.no_looser_than`): a
    ``config.yaml`` cannot turn on ``allow_unisolated``, choose the interpreter or the uid
    range, unhide a path or raise a limit. ``overrides`` are the user's own settings
    (``replay --sandbox KEY=VALUE``) and are applied as given; whatever of them weakens
    isolation is listed in ``weakened`` for the caller to warn about.

    Raises:
        TypeError: an override names no sandbox setting.
        ValueError: an override has an invalid value (the message names the field).
    """
    config, ignored = no_looser_than(run_config.get("sandbox"), REPLAY_SANDBOX)
    if overrides:
        config = config.with_overrides(**overrides)
    return ReplaySandboxConfig(config, ignored, looser_settings(config, REPLAY_SANDBOX))


def max_output_chars_from_run(config: dict[str, Any]) -> int:
    """``task.env_kwargs.max_tool_output_chars`` of a run, else the environments' default."""
    kwargs = (config.get("task") or {}).get("env_kwargs") or {}
    value = kwargs.get("max_tool_output_chars", DEFAULT_MAX_OUTPUT_CHARS)
    return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_OUTPUT_CHARS


def rerun_tool_call(call: ToolCallView, sandbox: Sandbox, *, timeout_s: float | None = None,
                    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> RerunResult:
    """Run ``call`` again in ``sandbox`` and compare with its recorded output.

    ``timeout_s`` None uses the sandbox's own ``timeout_s``.

    Never raises on a bad call or a sandbox failure: both come back as ``ran=False``.
    """
    from reopold_agent.envs.tools import format_sandbox_result

    if call.arguments is None:
        return RerunResult(call, False, None, f"malformed call ({call.error})")
    if call.name != "python":
        return RerunResult(call, False, None, f"only python calls can be re-run, not {call.name!r}")
    code = call.arguments.get("code")
    if not isinstance(code, str):
        return RerunResult(call, False, None, "the call has no 'code' string")
    try:
        res = sandbox.run(code, timeout_s=timeout_s)
    except Exception as exc:  # sandbox unavailable here: report, do not crash the viewer
        return RerunResult(call, False, None, f"sandbox failed: {type(exc).__name__}: {exc}")
    out = format_sandbox_result(res.stdout, res.stderr, res.exit_code, res.limit, res.duration_s,
                                res.queue_wait_s)
    text = truncate_output(out.text, max_output_chars)
    recorded = call.output
    if recorded is None:
        return RerunResult(call, True, False, text, "(no recorded output)")
    if text == recorded:
        return RerunResult(call, True, True, text)
    diff = "\n".join(difflib.unified_diff(recorded.splitlines(), text.splitlines(),
                                          "recorded", "re-run", lineterm=""))
    return RerunResult(call, True, False, text, diff)


def rerun_turn(calls: list[ToolCallView], sandbox: Sandbox, **kwargs: Any) -> list[RerunResult]:
    """:func:`rerun_tool_call` for every call of a turn, in order."""
    return [rerun_tool_call(call, sandbox, **kwargs) for call in calls]
