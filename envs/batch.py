"""Stepping many tool environments at once, so a slow tool delays only its own episode.

Each ``env.step`` runs in its own daemon thread (at most ``max_workers`` at a time). Tools
spend their time in subprocesses or sandboxes (which release the GIL and enforce their own
timeouts), so threads are enough. An env that raises, or that misses the batch deadline,
becomes a :class:`StepOutcome` with ``error`` set; the batch never raises because of one env.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Sequence

from .base import Message, ToolEnv


@dataclass
class StepOutcome:
    """The result of one ``env.step`` inside a batch."""

    observation: list[Message]
    """Tool messages (``[]`` after a final answer or an error)."""
    reward: float
    """Reward of this step (0.0 unless the episode ended with a verified answer)."""
    terminated: bool
    """The episode ended with a final answer."""
    truncated: bool
    """The episode hit the tool-round cap, or ``error`` is set (the episode cannot go on)."""
    info: dict[str, Any] = field(default_factory=dict)
    """The env's step info (``{}`` on error)."""
    error: str | None = None
    """Why the step failed (exception with traceback tail, or a missed deadline); else None."""
    duration_s: float = 0.0
    """Wall-clock seconds the step took (up to the deadline for a missed one)."""


def _error_outcome(message: str, duration_s: float) -> StepOutcome:
    return StepOutcome([], 0.0, False, True, {}, message, duration_s)


def guarded_step(env: ToolEnv, action: str) -> StepOutcome:
    """``env.step(action)`` with any exception turned into an error outcome (never raises)."""
    start = time.perf_counter()
    try:
        obs, reward, terminated, truncated, info = env.step(action)
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        return _error_outcome(f"{type(exc).__name__}: {exc}\n{tail}", time.perf_counter() - start)
    return StepOutcome(obs, float(reward), bool(terminated), bool(truncated), info, None,
                       time.perf_counter() - start)


def step_concurrently(
    envs: Sequence[ToolEnv],
    actions: Sequence[str],
    *,
    max_workers: int | None = None,
    deadline_s: float | None = None,
) -> list[StepOutcome]:
    """Run ``envs[i].step(actions[i])`` for all i at once.

    Args:
        envs: environments with an episode in progress (distinct objects).
        actions: the assistant turn for each env, same length as ``envs``.
        max_workers: steps running at the same time (default: all).
        deadline_s: seconds, from the start of the batch, after which an unfinished step is
            reported as an error. Its thread keeps running in the background, so that env is
            in an unknown state: drop it and make a new one. Queued steps (``max_workers`` <
            ``len(envs)``) share the same deadline.

    Returns:
        One outcome per env, in order.

    Raises:
        ValueError: ``envs`` and ``actions`` differ in length, or the same env appears twice.
    """
    if len(envs) != len(actions):
        raise ValueError(f"got {len(envs)} envs but {len(actions)} actions")
    if len({id(e) for e in envs}) != len(envs):
        raise ValueError("the same env object appears twice; envs are not thread safe")
    results: list[StepOutcome | None] = [None] * len(envs)
    slots = threading.BoundedSemaphore(max_workers or max(1, len(envs)))

    def work(i: int) -> None:
        with slots:
            results[i] = guarded_step(envs[i], actions[i])

    threads = [threading.Thread(target=work, args=(i,), daemon=True, name=f"reopold-env-{i}")
               for i in range(len(envs))]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        remaining = None if deadline_s is None else max(0.0, start + deadline_s - time.monotonic())
        t.join(remaining)
    late = f"step did not finish within the {deadline_s} s deadline; discard this env"
    return [r if r is not None else _error_outcome(late, float(deadline_s or 0.0))
            for r in results]
