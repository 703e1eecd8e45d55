"""The teacher-scoring interface every backend implements, and the checks they all share.

A backend (:class:`TeacherBackend`) gets rows of token ids with their loss masks and returns,
per row, one teacher log-prob per position: ``logp_T[t] = log p_teacher(ids[t] | ids[:t])`` for
``t >= 1`` (position 0 has no prefix and is ignored). :meth:`TeacherBackend.score` wraps that
for the trainer and checks, every call, what peers have got wrong:

* one log-prob per position: a backend returning another count stops the run
  (:class:`TeacherProtocolError`), never a silent shift;
* a finite log-prob at every position the loss mask marks (the only positions that get a
  reward; ``collate`` reads nothing else), positions outside the mask may be undefined;
* backends that are told which ids they scored (vLLM, a server) compare them with the ids sent,
  position by position (:func:`check_same_ids`), and stop at the first difference
  (:class:`TeacherIdMismatch`).

Each call returns a :class:`TeacherCall` (seconds, scored tokens, re-sent requests), logged
per step as ``throughput/teacher_tokens_per_s`` and ``teacher/retries`` (the trainer logs the
scoring's wall time as ``time/teacher_s``).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .teacher_errors import TeacherError, TeacherIdMismatch, TeacherProtocolError, TeacherUnavailable
from .trajectory import Trajectory

__all__ = ["ScoringRow", "TeacherBackend", "TeacherCall", "TeacherError", "TeacherIdMismatch",
           "TeacherProtocolError", "TeacherUnavailable", "check_same_ids", "check_scores"]


@dataclass
class ScoringRow:
    """One sequence to score: the student's ids exactly as sampled and templated."""

    token_ids: list[int]
    """[T] token ids."""
    loss_mask: list[int]
    """[T] 1 where the token was sampled by the student (a finite teacher log-prob is required)."""
    pixel_inputs: Any = None
    """The row's :class:`~reopold_agent.vision.VisionInputs`, or None for a text row."""


@dataclass
class TeacherCall:
    """What one :meth:`TeacherBackend.score` call cost."""

    seconds: float
    """Wall time of the call."""
    tokens: int
    """Tokens scored (all positions of all rows)."""
    retries: int = 0
    """Requests the backend had to send again (server backend)."""

    def metrics(self) -> dict[str, float]:
        """The step's scoring throughput (a wall-clock measurement, under ``throughput/`` like the
        others) and its re-sent requests."""
        return {"throughput/teacher_tokens_per_s": self.tokens / max(self.seconds, 1e-9),
                "teacher/retries": float(self.retries)}


class TeacherBackend(ABC):
    """Scores rows of token ids with a frozen teacher (see the module docstring for the contract)."""

    name: str = "teacher"
    supports_images: bool = False
    retries: int = 0
    """Requests sent again since the backend started (backends that retry increase it)."""

    @abstractmethod
    def score_rows(self, rows: list[ScoringRow]) -> list[Tensor]:
        """Per row a [T] float tensor: ``logp_T[t] = log p(ids[t] | ids[:t])`` for t >= 1; [0] is ignored."""

    def close(self) -> None:
        """Free what the backend holds (engines, connections)."""

    def score(self, trajectories: list[Trajectory]) -> TeacherCall:
        """Set ``traj.teacher_logprobs`` ([T], None at position 0 and wherever undefined) in place.

        Raises:
            ValueError: trajectories hold images and the backend scores text only, or a
                trajectory's images have no pixel inputs.
            TeacherError: the backend failed or broke the contract; nothing was written.
        """
        if any(t.images for t in trajectories):
            if not self.supports_images:
                raise ValueError(f"trajectories hold images but the teacher ({self.name}) scores text only")
            for traj in trajectories:
                traj.check_pixel_inputs()
        rows = [ScoringRow(list(t.token_ids), list(t.loss_mask), t.pixel_inputs) for t in trajectories]
        retries, start = self.retries, time.perf_counter()
        scored = self.score_rows(rows) if rows else []
        seconds = time.perf_counter() - start
        values = check_scores(rows, scored, backend=self.name)
        for traj, row_values in zip(trajectories, values):
            traj.teacher_logprobs = row_values
        return TeacherCall(seconds=seconds, tokens=sum(len(r.token_ids) for r in rows), retries=self.retries - retries)


def check_scores(rows: list[ScoringRow], scored: list[Tensor], *, backend: str) -> list[list[float | None]]:
    """Per row the teacher log-probs as stored in a trajectory (None at 0 and where undefined).

    Raises:
        TeacherProtocolError: not one [T] tensor per row, or a non-finite value where the loss
            mask is 1 (positions >= 1).
    """
    if len(scored) != len(rows):
        raise TeacherProtocolError(f"teacher backend {backend} returned {len(scored)} rows for {len(rows)} trajectories")
    out = []
    for b, (row, logp_T) in enumerate(zip(rows, scored)):
        T = len(row.token_ids)
        if tuple(logp_T.shape) != (T,):
            raise TeacherProtocolError(f"teacher backend {backend} returned {tuple(logp_T.shape)} log-probs for the "
                                       f"{T}-token trajectory {b}; one per position is required")
        values = [float(v) for v in logp_T.double().tolist()]
        for t in range(1, T):
            if row.loss_mask[t] and not math.isfinite(values[t]):
                raise TeacherProtocolError(f"teacher backend {backend} gave log-prob {values[t]} at position {t} of "
                                           f"trajectory {b}, a student token")
        out.append([None] + [v if math.isfinite(v) else None for v in values[1:]])
    return out


def check_same_ids(sent: list[int], reported: list[int], *, who: str, what: str = "scored") -> None:
    """Raise :class:`TeacherIdMismatch` naming the first position where ``reported`` differs from ``sent``."""
    position = first_difference(sent, reported)
    if position is None:
        return
    got = reported[position] if position < len(reported) else "nothing"
    raise TeacherIdMismatch(f"{who} {what} other ids than the student's: first difference at position {position} "
                            f"(student id {sent[position] if position < len(sent) else 'nothing'}, teacher {got}; "
                            f"{len(sent)} ids sent, {len(reported)} reported); the teacher must share the "
                            "student's tokenizer")


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first position where ``a`` and ``b`` differ (or where one ends), else None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def logprob_tensor(values: list[float | None]) -> Tensor:
    """[T] float64 tensor from per-position values, None as NaN (undefined)."""
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)
