"""Live terminal progress of a training run (rich), with the key metrics of the last step."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_SHOWN = (
    ("objective/loss", "loss", "{:+.4f}"),
    ("rollout/accuracy", "acc", "{:.2f}"),
    ("objective/reward_mean", "R", "{:+.3f}"),
    ("objective/selected_ratio", "sel", "{:.2f}"),
    ("objective/entropy_mean", "H", "{:.3f}"),
    ("time/step_s", "s/step", "{:.2f}"),
)


class TrainProgress:
    """Context manager showing a progress bar; ``update(step, metrics)`` is the trainer callback.

    Evaluation results (``eval/...``) are printed as a line of their own. On a non-terminal
    stdout the bar is replaced by one plain line per 10 steps.
    """

    def __init__(self, total_steps: int, *, enabled: bool = True) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.console = Console(file=sys.stdout)
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=self.console,
            disable=not (enabled and self.console.is_terminal),
        )
        self._task = None

    def __enter__(self) -> "TrainProgress":
        self._progress.__enter__()
        self._task = self._progress.add_task("train", total=self.total, stats="")
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if any(k.startswith("eval/") for k in metrics):
            shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items()
                              if k.startswith("eval/") and ("accuracy" in k or "@" in k)).replace("teacher_", "")
            who = "teacher eval" if any(k.startswith("eval/teacher_") for k in metrics) else "eval"
            self.console.print(f"[cyan]{who} at step {step}[/]: {shown}")
            return
        stats = "  ".join(f"{name} {fmt.format(metrics[key])}" for key, name, fmt in _SHOWN if key in metrics)
        self._progress.update(self._task, completed=step + 1, stats=stats)
        if not self.console.is_terminal and ((step + 1) % 10 == 0 or step + 1 == self.total):
            self.console.print(f"step {step + 1}/{self.total}  {stats}")
