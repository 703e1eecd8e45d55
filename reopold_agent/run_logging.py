"""What a run writes besides checkpoints: metrics (JSON Lines + TensorBoard) and trajectories.

Run directory layout::

    config.yaml                    the resolved configuration
    metrics.jsonl                  one JSON object per step: {"step": k, "<namespace>/<name>": value, ...}
    tensorboard/                   the same scalars as TensorBoard events
    trajectories/step_000012.jsonl every episode of step 12 (trajectory JSONL format)
    trajectories/eval_000012.jsonl evaluation episodes at step 12
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from .trajectory import Trajectory
from .trajectory_io import write_trajectories
from .vision.storage import save_trajectory_images


class RunLogger:
    """Appends metrics and trajectories to a run directory.

    Args:
        run_dir: the run's output directory (created if missing).
        tensorboard: also write TensorBoard events.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def save_config(self, config: dict[str, Any]) -> None:
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def truncate_after(self, step: int) -> None:
        """Drop metric lines of steps after ``step`` (used when resuming from a checkpoint)."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def log_trajectories(self, name: str, trajectories: list[Trajectory]) -> Path:
        path = self.run_dir / "trajectories" / f"{name}.jsonl"
        save_trajectory_images(self.run_dir, trajectories)  # images first: a line never points at nothing
        write_trajectories(path, trajectories, append=False)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All metric records of a run, skipping unreadable lines."""
    path = Path(run_dir) / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
