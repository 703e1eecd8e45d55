"""Weights & Biases beside TensorBoard: the ``logging`` section of the configuration and the
W&B run a training writes to.

Off by default. With ``logging.wandb: true`` the run logger also sends every metrics row to a
W&B run (same keys as ``metrics.jsonl``, at the same step) with the resolved configuration as
the run's config. The W&B files go to ``RUN_DIR/wandb``; ``wandb_mode: offline`` writes only
there (``wandb sync RUN_DIR/wandb/offline-run-*`` uploads them later).

A resumed training is a new W&B run in the same group, named ``NAME (resumed at step N)``:
W&B cannot rewind a run's history to the checkpoint, and logging the steps after it again into
the old run would be dropped or doubled. W&B does not capture the terminal (``console="off"``),
so the progress line stays as it is.

This module imports nothing heavy; ``wandb`` is imported when the first run starts.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .config_ranges import FieldError

INSTALL_HINT = "pip install wandb (or set logging.wandb: false)"


class WandbMissing(RuntimeError):
    """``logging.wandb`` is on and the ``wandb`` package is not installed."""


@dataclass
class LoggingConfig:
    """Where metrics go besides ``metrics.jsonl`` and TensorBoard."""

    wandb: bool = False
    """Also log metrics and the configuration to Weights & Biases (needs ``pip install wandb``
    and, online, a ``wandb login``)."""
    wandb_project: str = "reopold-agent"
    """W&B project the runs go to."""
    wandb_entity: str | None = None
    """W&B team or user; null: your default entity."""
    wandb_name: str | None = None
    """Name of the W&B run (and its group); null: the run directory's name."""
    wandb_mode: Literal["online", "offline"] = "online"
    """``offline``: write only under ``RUN_DIR/wandb``, to upload later with ``wandb sync``."""

    def __post_init__(self) -> None:
        if not isinstance(self.wandb_project, str) or not self.wandb_project.strip():
            raise FieldError("wandb_project", f"must be a non-empty string, got {self.wandb_project!r}")
        for name in ("wandb_entity", "wandb_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise FieldError(name, f"must be null or a non-empty string, got {value!r}")


def check_wandb_installed(config: LoggingConfig) -> None:
    """Refuse ``logging.wandb: true`` where ``wandb`` cannot be imported (no import happens).

    Raises:
        WandbMissing: the setting is on and the package is missing.
    """
    if config.wandb and importlib.util.find_spec("wandb") is None:
        raise WandbMissing(f"logging.wandb is true but the wandb package is not installed: {INSTALL_HINT}")


class WandbRun:
    """The W&B run of one training session, started at the first configuration or metrics.

    Args:
        config: the ``logging`` section (``wandb`` must be true).
        run_dir: the run directory; W&B's files go to ``run_dir/wandb``.
    """

    def __init__(self, config: LoggingConfig, run_dir: Path) -> None:
        check_wandb_installed(config)
        self.config = config
        self.run_dir = run_dir
        self.resumed_at: int | None = None
        """Set before the start when the session continues a run from checkpoint ``N``."""
        self._run: Any = None

    @property
    def name(self) -> str:
        """The run's name: ``wandb_name`` or the run directory's, marked when resumed."""
        base = self.config.wandb_name or self.run_dir.resolve().name
        return base if self.resumed_at is None else f"{base} (resumed at step {self.resumed_at})"

    def start(self, run_config: dict[str, Any] | None = None) -> None:
        """Start the W&B run (once) with ``run_config`` as its configuration.

        Raises:
            WandbMissing: ``wandb`` cannot be imported.
        """
        if self._run is not None:
            if run_config:
                self._run.config.update(run_config, allow_val_change=True)
            return
        try:
            import wandb
        except ImportError as exc:
            raise WandbMissing(f"logging.wandb is true but wandb cannot be imported ({exc}): "
                               f"{INSTALL_HINT}") from None
        (self.run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        group = self.config.wandb_name or self.run_dir.resolve().name
        self._run = wandb.init(
            project=self.config.wandb_project, entity=self.config.wandb_entity, name=self.name,
            group=group, job_type="train", dir=str(self.run_dir), mode=self.config.wandb_mode,
            config=run_config or {}, settings=wandb.Settings(console="off"))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Send one metrics row at ``step`` (numbers only; NaN and infinity left out)."""
        if self._run is None:
            self.start()
        row = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))
               and not isinstance(v, bool) and math.isfinite(v)}
        self._run.log(row, step=step)

    def finish(self) -> None:
        """End the W&B run (uploads what is left, online)."""
        if self._run is not None:
            run, self._run = self._run, None
            run.finish()
