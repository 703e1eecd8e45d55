"""One replay session: the run index plus what opening a trajectory computes (shared by the
terminal UI and the HTML export)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..sandbox import Sandbox
from ..trajectory import Trajectory
from ..trajectory_io import LineError
from .decoding import TokenDecoder
from .filters import TrajectoryFilter
from .loading import RunIndex, Summary
from .token_view import ImageSpan, TokenTable, build_token_table, image_spans, step_entropy_threshold, turn_kl
from .tool_rerun import RerunResult, max_output_chars_from_run, rerun_turn
from .turns import TurnView, build_turns


@dataclass
class OpenedTrajectory:
    """A parsed trajectory with everything the views show."""

    summary: Summary
    """Where the line is, and its scalar fields."""
    traj: Trajectory
    """The parsed episode."""
    table: TokenTable
    """Per-token R, max(R, c) and REOPOLD selection."""
    turns: list[TurnView]
    """Turn 0 (prompt), then one per assistant turn."""
    kl_by_turn: dict[int, float | None]
    """Teacher-student KL estimate per assistant turn (None when unscored)."""
    switch_step: int | None = None
    """The run's REOPOLD switch step, when known."""
    images: list[ImageSpan] = field(default_factory=list)
    """Image placeholder spans with their stored files (each drawn as one marker)."""

    def phase_text(self) -> str:
        """e.g. ``phase: refinement (step 3, switch step 1), tau_beta=6.1, floor c=-1.72``."""
        table = self.table
        if table.phase is None:
            return f"phase: n/a ({table.note})" if table.note else "phase: n/a"
        text = f"phase: {table.phase} (step {self.traj.step}, switch step {self.switch_step})"
        if table.threshold is not None:
            text += f", tau_beta={table.threshold:.4f}"
        if table.floor is not None:
            text += f", floor c={table.floor:.4f}"
        return text + (f" [{table.note}]" if table.note else "")


class ReplaySession:
    """Opens trajectories of a run and caches per-step thresholds.

    Args:
        index: the run.
        decoder: token text; defaults to the run's tokenizer, loaded on first use.
        sandbox_factory: builds the sandbox for tool re-runs on first use (None: re-runs are
            reported as unavailable).
    """

    def __init__(self, index: RunIndex, decoder: TokenDecoder | None = None,
                 sandbox_factory: Callable[[], Sandbox] | None = None) -> None:
        self.index = index
        self.decoder = decoder or TokenDecoder(index.info)
        self.sandbox_factory = sandbox_factory
        self._sandbox: Sandbox | None = None
        self._thresholds: dict[Path, float | None] = {}

    def select(self, flt: TrajectoryFilter | None = None) -> list[Summary]:
        """Summaries matching ``flt`` in file order (files outside a ``step=`` range skipped)."""
        rng = flt.steps() if flt is not None else None
        out = []
        for tf in self.index.files:
            if rng is not None and tf.step is not None and not rng[0] <= tf.step <= rng[1]:
                continue
            out += [s for s in self.index.file_summaries(tf)
                    if (flt(s) if flt is not None else s.error is None)]
        return out

    def open(self, summary: Summary) -> OpenedTrajectory | LineError:
        """Parse and prepare ``summary``'s trajectory; a bad line comes back as LineError."""
        traj = self.index.load(summary)
        if isinstance(traj, LineError):
            return traj
        evaluation = summary.evaluation
        threshold = None
        if not evaluation and self.index.info.phase(traj.step) == "refinement":
            threshold = self.step_threshold(summary.path)
        table = build_token_table(traj, self.index.info, evaluation=evaluation,
                                  threshold=threshold)
        cfg, root = self.index.info.reopold, self.index.info.root
        return OpenedTrajectory(summary, traj, table, build_turns(traj, root), turn_kl(traj),
                                None if cfg is None else cfg.switch_step, image_spans(traj, root))

    def step_threshold(self, path: Path) -> float | None:
        """tau_beta over the valid tokens of the file ``path`` (cached)."""
        if path not in self._thresholds:
            cfg = self.index.info.reopold
            trajs = self.index.load_file(path)
            self._thresholds[path] = None if cfg is None else step_entropy_threshold(trajs, cfg.beta)
        return self._thresholds[path]

    def rerun(self, turn: TurnView) -> list[RerunResult]:
        """Re-run the tool calls of ``turn`` (see :mod:`.tool_rerun`)."""
        if self.sandbox_factory is None:
            return [RerunResult(c, False, None, "no sandbox configured") for c in turn.tool_calls]
        if self._sandbox is None:
            try:
                self._sandbox = self.sandbox_factory()
            except Exception as exc:  # e.g. SandboxUnavailable: shown in the viewer
                return [RerunResult(c, False, None, f"sandbox unavailable: {exc}")
                        for c in turn.tool_calls]
        # The sandbox's own timeout: the run's config.yaml is not trusted to set it.
        return rerun_turn(turn.tool_calls, self._sandbox,
                          max_output_chars=max_output_chars_from_run(self.index.info.config))
