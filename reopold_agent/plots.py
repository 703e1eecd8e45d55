"""Training diagnostics of a run as PNG figures (matplotlib, Agg canvas; no display needed).

``plot_run(run_dir)`` writes:

* ``training_curves.png``: loss, accuracy (rollout and greedy eval), student entropy,
  selected-token ratio, fraction of valid tokens below the floor, gradient norm, against the
  step, with the REOPOLD switch step marked;
* ``reward_histogram.png``: token rewards R_t = teacher_logprob - logprob on valid (model)
  tokens of the training step files (paper figure 4: a spike near 0 and a heavy negative tail),
  log-scale counts, the floor c = log(lam) / (1 - lam) marked;
* ``reward_vs_entropy.png``: R against the student entropy at the same tokens (paper figure 5),
  as a scatter of a sample and binned by entropy percentile (mean, median, p10-p90 band).

Corrupt metric or trajectory lines are skipped and returned as
:class:`~reopold_agent.trajectory_io.LineError` records (``file:line: reason``). A large run is
sampled: at most ``max_files`` step files, evenly spaced over the run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .trajectory_io import LineError

CURVES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("objective/loss",)),
    ("accuracy", ("rollout/accuracy", "eval/greedy_accuracy")),
    ("student entropy (nats)", ("objective/entropy_mean",)),
    ("selected-token ratio", ("objective/selected_ratio",)),
    ("fraction of valid tokens below floor", ("objective/below_floor_frac",)),
    ("gradient norm", ("train/grad_norm",)),
)
"""Panels of ``training_curves.png``: (title, metric keys drawn in it)."""


@dataclass
class PlotResult:
    """What :func:`plot_run` produced."""

    paths: list[Path] = field(default_factory=list)
    """PNG files written."""
    errors: list[LineError] = field(default_factory=list)
    """Lines that could not be read (skipped)."""
    notes: list[str] = field(default_factory=list)
    """Figures that were not drawn, and why."""


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[LineError]]:
    """Records of ``metrics.jsonl`` and the lines that could not be read."""
    records, errors = [], []
    if not path.exists():
        return records, errors
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "step" not in record:
                    raise ValueError("not a metrics object with a 'step'")
                if not isinstance(record["step"], int) or isinstance(record["step"], bool):
                    raise ValueError(f"'step' must be an integer, got {json.dumps(record['step'])[:40]}")
                records.append(record)
            except ValueError as exc:
                errors.append(LineError(str(path), number, str(exc)))
    return records, errors


def metric_series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of ``key`` over the records holding a finite number for it."""
    pairs = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))
             and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def token_rewards(trajectories) -> tuple[np.ndarray, np.ndarray]:
    """(R_N, H_N) at valid tokens with both log-probs; H is NaN where no entropy was recorded."""
    rewards, entropies = [], []
    for traj in trajectories:
        if traj.teacher_logprobs is None:
            continue
        ent = traj.entropy or [None] * traj.num_tokens
        for lp, tl, h, m in zip(traj.logprobs, traj.teacher_logprobs, ent, traj.loss_mask):
            if m == 1 and lp is not None and tl is not None and math.isfinite(tl - lp):
                rewards.append(tl - lp)
                entropies.append(math.nan if h is None else h)
    return np.asarray(rewards, dtype=float), np.asarray(entropies, dtype=float)


def plot_training_curves(records: list[dict[str, Any]], out: Path,
                         switch_step: int | None = None) -> Path | None:
    """Write the training-curve grid; None when no panel has data."""
    fig = Figure(figsize=(13, 7.5), dpi=100, layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    drawn = 0
    for ax, (title, keys) in zip(axes, CURVES):
        for key in keys:
            steps, values = metric_series(records, key)
            if len(steps):
                ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=key)
                drawn += 1
        if switch_step is not None:
            ax.axvline(switch_step, color="grey", ls="--", lw=1, label="switch step")
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
        if not any(len(metric_series(records, k)[0]) for k in keys):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, out) if drawn else None


def plot_reward_histogram(rewards: np.ndarray, floor: float | None, out: Path) -> Path:
    """Histogram of token rewards with the floor c marked (paper figure 4)."""
    fig = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    ax = fig.subplots()
    lo, hi = min(rewards.min(), floor if floor is not None else 0.0), max(rewards.max(), 0.5)
    ax.hist(rewards, bins=np.linspace(lo - 1e-9, hi + 1e-9, 81), color="#4575b4", log=True)
    title = f"token reward R on {len(rewards)} valid tokens"
    if floor is not None:
        below = float(np.mean(rewards < floor))
        ax.axvline(floor, color="#d73027", lw=2, label=f"floor c = {floor:.3f} ({below:.1%} below)")
    ax.axvline(0.0, color="black", lw=0.8, ls=":", label="R = 0")
    near = float(np.mean(np.abs(rewards) < 0.1))
    ax.set_title(f"{title}; {near:.1%} within |R| < 0.1")
    ax.set_xlabel("R = teacher log-prob - student log-prob")
    ax.set_ylabel("tokens (log scale)")
    ax.legend()
    return _save(fig, out)


def plot_reward_vs_entropy(rewards: np.ndarray, entropies: np.ndarray, floor: float | None,
                           out: Path, *, bins: int = 10, sample: int = 5000) -> Path:
    """R against student entropy: a scatter and per-percentile-bin statistics (figure 5)."""
    keep = np.isfinite(entropies)
    r, h = rewards[keep], entropies[keep]
    fig = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    ax_s, ax_b = fig.subplots(1, 2)
    pick = np.random.default_rng(0).permutation(len(r))[:sample]
    ax_s.scatter(h[pick], r[pick], s=3, alpha=0.3, color="#4575b4")
    ax_s.set(xlabel="student entropy H (nats)", ylabel="R", title=f"{len(pick)} of {len(r)} tokens")
    ranks = np.argsort(np.argsort(h, kind="stable"), kind="stable") / max(len(h), 1)
    index = np.minimum((ranks * bins).astype(int), bins - 1)
    centres, mean, med, p10, p90 = [], [], [], [], []
    for b in range(bins):
        vals = r[index == b]
        if len(vals):
            centres.append(100 * (b + 0.5) / bins)
            mean.append(vals.mean())
            med.append(np.median(vals))
            p10.append(np.percentile(vals, 10))
            p90.append(np.percentile(vals, 90))
    ax_b.fill_between(centres, p10, p90, color="#91bfdb", alpha=0.5, label="p10-p90")
    ax_b.plot(centres, mean, marker="o", color="#d73027", label="mean R")
    ax_b.plot(centres, med, marker="s", color="#4575b4", label="median R")
    for ax in (ax_s, ax_b):
        if floor is not None:
            ax.axhline(floor, color="#d73027", ls="--", lw=1, label="floor c" if ax is ax_b else None)
        ax.axhline(0.0, color="black", ls=":", lw=0.8)
    ticks = [0, 20, 40, 60, 80, 100]
    ax_b.set_xticks(ticks, [f"{q}%\nH={np.percentile(h, q):.3g}" for q in ticks])
    ax_b.set(xlabel="student entropy percentile (bin centre); H at the percentile", ylabel="R",
             title=f"R by entropy percentile ({bins} bins)")
    ax_b.legend(fontsize=8)
    return _save(fig, out)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, *,
             max_files: int = 64) -> PlotResult:
    """Write every figure of a run (see the module docstring) into ``out_dir``.

    Args:
        run_dir: the run directory.
        out_dir: where to write (default ``RUN_DIR/plots``).
        max_files: step files read at most for the token figures.

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory.
    """
    from .replay.loading import open_run

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a run directory")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    result = PlotResult()
    records, result.errors = read_metrics(run_dir / "metrics.jsonl")
    try:
        index = open_run(run_dir)
    except ValueError as exc:
        index, info = None, None
        result.notes.append(f"token figures skipped: {exc}")
    else:
        info = index.info
    cfg = info.reopold if info is not None else None
    path = plot_training_curves(records, out / "training_curves.png",
                                None if cfg is None else cfg.switch_step)
    _add(result, path, "training curves skipped: no metrics in metrics.jsonl")
    if index is not None:
        _token_figures(index, out, max_files, result)
    return result


def _token_figures(index, out: Path, max_files: int, result: PlotResult) -> None:
    from .replay.loading import EVALUATION_KINDS

    steps = [tf for tf in index.files if tf.kind not in EVALUATION_KINDS]
    if len(steps) > max_files:
        picks = np.linspace(0, len(steps) - 1, max_files).round().astype(int)
        steps = [steps[i] for i in sorted(set(picks.tolist()))]
    trajs = [t for tf in steps for t in index.load_file(tf.path)]
    result.errors += index.errors
    rewards, entropies = token_rewards(trajs)
    if not len(rewards):
        result.notes.append("token figures skipped: no teacher-scored model tokens")
        return
    floor = index.info.floor
    result.paths.append(plot_reward_histogram(rewards, floor, out / "reward_histogram.png"))
    if np.isfinite(entropies).sum() >= 2:
        result.paths.append(plot_reward_vs_entropy(rewards, entropies, floor,
                                                   out / "reward_vs_entropy.png"))
    else:
        result.notes.append("reward vs entropy skipped: no entropies recorded")


def _add(result: PlotResult, path: Path | None, note: str) -> None:
    if path is None:
        result.notes.append(note)
    else:
        result.paths.append(path)


def _save(fig: Figure, out: Path) -> Path:
    FigureCanvasAgg(fig).print_png(str(out))
    return out
