"""Live terminal progress of a training run (rich), with the key metrics of the last step.

Seconds per step are the median of the wall-clock time between the last
:data:`SPEED_WINDOW` step completions (the first step's own ``time/step_s`` until there are
two), so an evaluation or a checkpoint save between two steps does not swing the figure; the
ETA is that median times the steps left. Evaluation lines and notes are printed whole, never
wrapped, so a log holds one line per evaluation whatever its width.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import deque
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_SHOWN = (
    ("objective/loss", "loss", "{:+.4f}"),
    ("rollout/accuracy", "acc", "{:.2f}"),
    ("objective/reward_mean", "R", "{:+.3f}"),
    ("objective/selected_ratio", "sel", "{:.2f}"),
    ("objective/entropy_mean", "H", "{:.3f}"),
)
SPEED_WINDOW = 50
"""Step durations the running median of seconds per step is taken over."""


class TrainProgress:
    """Context manager showing a progress bar; ``update(step, metrics)`` is the trainer callback.

    Evaluation results (``eval/...``) are printed as a line of their own. On a non-terminal
    stdout the bar is replaced by one plain line per 10 steps.
    """

    def __init__(self, total_steps: int, *, enabled: bool = True, clock=time.monotonic) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.console = Console(file=sys.stdout, soft_wrap=True)
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"), console=self.console,
            disable=not (enabled and self.console.is_terminal),
        )
        self._task = None
        self._clock = clock
        self._last_done: float | None = None
        self._durations: deque[float] = deque(maxlen=SPEED_WINDOW)

    def __enter__(self) -> "TrainProgress":
        self._progress.__enter__()
        self._task = self._progress.add_task("train", total=self.total, stats="")
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def log(self, message: str) -> None:
        """Print a note above the bar (whole, never wrapped)."""
        if self.enabled:
            self.console.print(escape(message), soft_wrap=True, highlight=False)

    @property
    def seconds_per_step(self) -> float | None:
        """Running median of the step durations seen so far (None before the first step)."""
        return statistics.median(self._durations) if self._durations else None

    def eta_seconds(self, done: int) -> float | None:
        """Seconds left for ``total - done`` steps at the running median (None before a step)."""
        per_step = self.seconds_per_step
        return None if per_step is None else per_step * max(self.total - done, 0)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if any(k.startswith("eval/") for k in metrics):
            self.log(evaluation_line(step, metrics))
            return
        self._time_step(metrics)
        done = step + 1
        shown = [f"{name} {fmt.format(metrics[key])}" for key, name, fmt in _SHOWN if key in metrics]
        if self.seconds_per_step is not None:
            shown.append(f"s/step {self.seconds_per_step:.2f}")
        shown.append(f"ETA {format_duration(self.eta_seconds(done))}")
        stats = "  ".join(shown)
        self._progress.update(self._task, completed=done, stats=stats)
        if not self.console.is_terminal and (done % 10 == 0 or done == self.total):
            self.log(f"step {done}/{self.total}  {stats}")

    def _time_step(self, metrics: dict[str, float]) -> None:
        now = self._clock()
        if self._last_done is None:
            own = metrics.get("time/step_s")
            if isinstance(own, (int, float)):
                self._durations.append(float(own))
        else:
            self._durations.append(now - self._last_done)
        self._last_done = now


def evaluation_line(step: int, metrics: dict[str, float]) -> str:
    """``eval at step 100: greedy_accuracy 0.516, ...`` (``teacher eval`` for the teacher)."""
    shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items()
                      if k.startswith("eval/") and ("accuracy" in k or "@" in k)).replace("teacher_", "")
    who = "teacher eval" if any(k.startswith("eval/teacher_") for k in metrics) else "eval"
    return f"{who} at step {step}: {shown}"


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` (hours:minutes:seconds), ``-:--:--`` when unknown."""
    if seconds is None:
        return "-:--:--"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def accuracy_summary(records: list[dict[str, Any]]) -> list[str]:
    """End-of-run lines from a run's metric rows: teacher, student before and after training.

    One line per accuracy the evaluations measured (greedy, sampled), e.g.
    ``greedy accuracy on 500 problems: teacher 0.998, student before 0.192, after 0.710 (step 400)``.
    The student's first and last evaluations are its before and after; [] without evaluations.
    """
    def rows(teacher: bool) -> list[dict[str, Any]]:
        return sorted((r for r in records if isinstance(r.get("step"), int)
                       and any(k.startswith("eval/teacher_" if teacher else "eval/") for k in r)
                       and teacher == any(k.startswith("eval/teacher_") for k in r)), key=lambda r: r["step"])

    student, teacher = rows(False), rows(True)
    lines = []
    for kind in ("greedy", "sampled"):
        key = f"eval/{kind}_accuracy"
        mine = [r for r in student if _number(r.get(key))]
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        parts = []
        teacher_value = next((r[f"eval/teacher_{kind}_accuracy"] for r in teacher
                              if _number(r.get(f"eval/teacher_{kind}_accuracy"))), None)
        if teacher_value is not None:
            parts.append(f"teacher {teacher_value:.3f}")
        parts.append(f"student before {first[key]:.3f} (step {first['step']})")
        if last is not first:
            parts.append(f"after {last[key]:.3f} (step {last['step']})")
        problems = last.get("eval/num_problems")
        size = f" on {int(problems)} problems" if _number(problems) else ""
        lines.append(f"{kind} accuracy{size}: " + ", ".join(parts))
    return lines


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
