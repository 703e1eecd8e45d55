"""What the rollout engine reads from an environment's ``info`` dicts, as two typed records.

gymnasium's ``reset`` and ``step`` return free-form ``info`` dicts. The engine needs a few of
their keys; :class:`ResetInfo` and :class:`StepInfo` name them, with their types and what
happens when an environment leaves one out, and parse a dict into a record with one clear error
for a wrong value. :class:`~reopold_agent.envs.ToolEnv` writes its infos from these records; a
plain ``gymnasium.Env`` needs only ``info["tools"]`` at reset.

The engine keeps every other key too: a trajectory's ``info`` holds the reset info (without
``tools``) plus the keys :data:`OUTCOME`, :data:`ENV_ERROR` and :data:`IMAGES_DROPPED`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

OUTCOME = "outcome"
"""Trajectory info key: the info of the step that ended the episode (JSON-safe copy)."""
ENV_ERROR = "env_error"
"""Trajectory info key: why the environment failed (an exception or a missed deadline)."""
IMAGES_DROPPED = "images_dropped"
"""Trajectory info key: tool images replaced by a text note (over the per-episode limit)."""


class EnvInfoError(ValueError):
    """An environment's ``info`` breaks the contract (the message names the key and the fix)."""


@dataclass(frozen=True)
class ResetInfo:
    """The keys of ``reset``'s info that the engine reads."""

    tools: list[dict[str, Any]]
    """Required: the tools in OpenAI function format, ``{"type": "function", "function":
    {"name", "description", "parameters"}}``, rendered by the chat template (may be empty)."""
    task: str | None = None
    """Task name recorded in trajectories; None: the run's task name."""
    prompt_id: str | None = None
    """Names the problem; rollouts of one problem share it (group advantages, pass@k). None:
    the engine names the problem by its reset seed and options."""

    @classmethod
    def from_info(cls, info: Any) -> ResetInfo:
        """Parse a reset info dict.

        Raises:
            EnvInfoError: ``info`` is not a mapping, ``tools`` is missing or not a list of
                function declarations, or ``prompt_id``/``task`` is not a string.
        """
        if not isinstance(info, Mapping):
            raise EnvInfoError(f"reset must return (messages, info) with a dict info, got {type(info).__name__}")
        tools = info.get("tools")
        if not isinstance(tools, list) or not all(_is_function(t) for t in tools):
            raise EnvInfoError('reset info["tools"] must be a list of OpenAI function declarations '
                               '{"type": "function", "function": {"name": ..., ...}}, got '
                               f"{_short(tools) if 'tools' in info else 'no tools key'}")
        return cls(tools=tools, task=_optional_str(info, "task", "reset"),
                   prompt_id=_optional_str(info, "prompt_id", "reset"))

    def to_info(self) -> dict[str, Any]:
        """The record as the keys of an info dict."""
        return asdict(self)

    @staticmethod
    def recorded(info: Mapping[str, Any]) -> dict[str, Any]:
        """What a trajectory keeps of a reset info: every key but ``tools`` (the tool
        declarations are the same in every episode of an environment)."""
        return {k: v for k, v in info.items() if k != "tools"}


@dataclass(frozen=True)
class StepInfo:
    """The keys of ``step``'s info that the engine and the evaluation read."""

    tool_calls: int
    """Tool calls run this step; when absent, the number of tool messages returned."""
    tool_errors: int = 0
    """How many of them failed (malformed, unknown tool, tool error)."""
    error_kinds: tuple[str, ...] = ()
    """A short label per failure (e.g. ``bad_json``, ``python_error``)."""
    extracted: str | None = None
    """After a final answer: the answer as the verifier read it (maj@k compares these)."""
    correct: bool | None = None
    """After a final answer: whether the verifier accepted it (None before the end)."""
    tool_queue_wait_s: float = 0.0
    """Seconds this step's tool calls waited for a free sandbox worker, summed over the calls
    (part of their wall limits); the engine adds them up per run."""

    @classmethod
    def from_info(cls, info: Any, observation: Sequence[Any] = ()) -> StepInfo:
        """Parse a step info dict (``observation``: the step's tool messages, for the default).

        Raises:
            EnvInfoError: ``info`` is not a mapping or a present key has the wrong type.
        """
        if not isinstance(info, Mapping):
            raise EnvInfoError(f"step must return an info dict, got {type(info).__name__}")
        calls = _count(info, "tool_calls", len(observation))
        kinds = info.get("error_kinds", ())
        if not isinstance(kinds, (list, tuple)):
            raise EnvInfoError(f'step info["error_kinds"] must be a list of strings, got {_short(kinds)}')
        correct = info.get("correct")
        extracted = info.get("extracted")
        return cls(tool_calls=calls, tool_errors=_count(info, "tool_errors", 0),
                   error_kinds=tuple(str(k) for k in kinds),
                   extracted=None if extracted is None else str(extracted),
                   correct=None if correct is None else bool(correct),
                   tool_queue_wait_s=_seconds(info, "tool_queue_wait_s"))

    def to_info(self) -> dict[str, Any]:
        """The record as the keys of an info dict (``error_kinds`` as a list; ``extracted`` and
        ``correct`` only after a final answer, i.e. when ``correct`` is set;
        ``tool_queue_wait_s`` only on a step that ran tool calls)."""
        info = {**asdict(self), "error_kinds": list(self.error_kinds)}
        if self.correct is None:
            del info["extracted"], info["correct"]
        if self.tool_calls == 0:
            del info["tool_queue_wait_s"]
        return info


def _is_function(tool: Any) -> bool:
    return (isinstance(tool, dict) and tool.get("type") == "function"
            and isinstance(tool.get("function"), dict) and isinstance(tool["function"].get("name"), str))


def _optional_str(info: Mapping[str, Any], key: str, where: str) -> str | None:
    value = info.get(key)
    if value is not None and not isinstance(value, str):
        raise EnvInfoError(f'{where} info["{key}"] must be a string, got {_short(value)}')
    return value


def _count(info: Mapping[str, Any], key: str, default: int) -> int:
    value = info.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise EnvInfoError(f'step info["{key}"] must be a non-negative int, got {_short(value)}')
    return int(value)


def _seconds(info: Mapping[str, Any], key: str) -> float:
    value = info.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
        raise EnvInfoError(f'step info["{key}"] must be a non-negative number of seconds, got {_short(value)}')
    return float(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
