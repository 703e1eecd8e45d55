"""What a run writes besides checkpoints: metrics (JSON Lines + TensorBoard, optionally
Weights & Biases) and trajectories.

Run directory layout::

    config.yaml                    the resolved configuration
    metrics.jsonl                  one JSON object per step: {"step": k, "<namespace>/<name>": value, ...}
    tensorboard/                   the same scalars as TensorBoard events
    wandb/                         W&B's local files, with ``logging.wandb: true``
    trajectories/step_000012.jsonl every episode of step 12 (trajectory JSONL format)
    trajectories/eval_000012.jsonl evaluation episodes at step 12
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .run_directory import RunDirectoryError, describe_os_error
from .trajectory import Trajectory
from .trajectory_io import write_trajectories
from .vision.storage import save_trajectory_images
from .wandb_logging import LoggingConfig, WandbRun


class RunLogger:
    """Appends metrics and trajectories to a run directory.

    Args:
        run_dir: the run's output directory (created if missing).
        tensorboard: also write TensorBoard events.
        logging: the ``logging`` section; with ``wandb`` on, metrics also go to a W&B run,
            started at the first :meth:`save_config` or :meth:`log_metrics` (so only the
            process that logs starts one).

    Raises:
        WandbMissing: ``logging.wandb`` is on and the ``wandb`` package is not installed.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True,
                 logging: LoggingConfig | None = None) -> None:
        self.run_dir = Path(run_dir)
        with self._writing(self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._tensorboard = tensorboard
        self._wandb = WandbRun(logging, self.run_dir) if logging is not None and logging.wandb else None
        self._tb = self._open_tensorboard()

    def _open_tensorboard(self, purge_step: int | None = None):
        if not self._tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        with self._writing(self.run_dir / "tensorboard"):
            return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def save_config(self, config: dict[str, Any]) -> None:
        with self._writing(self.run_dir / "config.yaml"):
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if self._wandb is not None:
            self._wandb.start(config)

    def rewind_to(self, step: int) -> list[dict[str, Any]]:
        """Make the run directory what it was when checkpoint ``step`` was saved; used on resume.

        Checkpoint ``step`` holds the model after training steps ``0 .. step-1`` and is saved
        before the evaluation at ``step``. So this keeps training rows of steps ``< step`` and
        evaluation rows of steps ``<= step`` in ``metrics.jsonl`` (rows that cannot be read
        are dropped), removes the trajectory files of later training steps
        (``step_<k>.jsonl``, k >= step) and evaluations (``eval_<k>``, k > step), and hides
        TensorBoard events from ``step`` on (``purge_step``), writing back the kept
        evaluation rows of ``step``. A W&B run started after this is a new one, named as
        resumed at ``step``. Returns the kept metric records.
        """
        if self._wandb is not None:
            self._wandb.resumed_at = step
        kept: list[dict[str, Any]] = []
        lines = self.metrics_path.read_text(errors="replace").splitlines() if self.metrics_path.exists() else []
        out = []
        for line in lines:
            record = _record_of(line)
            if record is not None and record["step"] < step + (1 if is_evaluation_record(record) else 0):
                kept.append(record)
                out.append(line)
        with self._writing(self.metrics_path):
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in out))
            os.replace(tmp, self.metrics_path)
            for path in (self.run_dir / "trajectories").glob("*.jsonl"):
                kind, at = _trajectory_file_step(path)
                if at is not None and (at >= step if kind == "step" else at > step):
                    path.unlink()
        if self._tb is not None:
            self._tb.close()
            self._tb = self._open_tensorboard(purge_step=step)
            for record in kept:
                if record["step"] == step:
                    self._add_scalars(step, record)
        return kept

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self._writing(self.metrics_path):
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self._add_scalars(step, metrics)
        if self._wandb is not None:
            self._wandb.log(step, record)

    def _add_scalars(self, step: int, metrics: dict[str, Any]) -> None:
        if self._tb is None:
            return
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def log_trajectories(self, name: str, trajectories: list[Trajectory]) -> Path:
        path = self.run_dir / "trajectories" / f"{name}.jsonl"
        with self._writing(path):
            save_trajectory_images(self.run_dir, trajectories)  # images first: a line never points at nothing
            write_trajectories(path, trajectories, append=False)
        return path

    @staticmethod
    @contextmanager
    def _writing(path: Path) -> Iterator[None]:
        """Turn an OSError (full disk, read-only place) into a one-line RunDirectoryError."""
        try:
            yield
        except OSError as exc:
            raise RunDirectoryError(describe_os_error(path, exc)) from None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


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


def is_evaluation_record(record: dict[str, Any]) -> bool:
    """Whether a metrics row is an evaluation's (every key but ``step`` under ``eval/``)."""
    keys = [k for k in record if k != "step"]
    return bool(keys) and all(k.startswith("eval/") for k in keys)


def _record_of(line: str) -> dict[str, Any] | None:
    """A metrics row with an integer ``step``, or None for a line that is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        return None
    return record


def _trajectory_file_step(path: Path) -> tuple[str, int | None]:
    """(``step`` or ``eval``, the step in the name) of a run's trajectory file; (``""``, None) else."""
    match = re.fullmatch(r"(step|eval|eval_teacher)_(\d+)\.jsonl", path.name)
    if match is None:
        return "", None
    return ("step" if match.group(1) == "step" else "eval"), int(match.group(2))


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
