"""Task declarations: which environment plays a task, with which defaults, and verifier results.

A :class:`TaskSpec` names its environment both by gymnasium id and by ``"module:Class"`` entry
point (the registry registers built-ins from :data:`TASKS`), plus default constructor kwargs.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one final answer."""

    reward: float
    """Outcome reward in [0, 1]."""
    extracted: str | None = None
    """The answer read from the model's text (None when none could be found)."""
    detail: str = ""
    """Short human-readable reason, for logs and replay."""


@dataclass(frozen=True)
class TaskSpec:
    """A built-in task and the environment that plays it."""

    name: str
    """Task name used on the command line and in ``Trajectory.task``."""
    env_id: str
    """Gymnasium id the environment is registered under."""
    entry_point: str
    """``"module:Class"`` of the environment."""
    description: str
    """One line shown by ``reopold-agent envs``."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Default constructor kwargs (callers may override any of them)."""


TASKS: Mapping[str, TaskSpec] = types.MappingProxyType({
    "tool_math": TaskSpec(
        name="tool_math",
        env_id="reopold_agent/ToolMath-v0",
        entry_point="reopold_agent.envs.tool_math:ToolMathEnv",
        description="Arithmetic and word problems solved with a sandboxed python tool.",
    ),
    "code": TaskSpec(
        name="code",
        env_id="reopold_agent/Code-v0",
        entry_point="reopold_agent.envs.code:CodeEnv",
        description="Small programming problems checked by hidden unit tests.",
    ),
    "visual_qa": TaskSpec(
        name="visual_qa",
        env_id="reopold_agent/VisualQA-v0",
        entry_point="reopold_agent.envs.visual_qa:VisualQAEnv",
        description="Questions about synthetic images, with a zoom tool for small text.",
    ),
})
"""Built-in tasks by name."""


def get_task(name: str) -> TaskSpec:
    """The built-in task called ``name``.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]
