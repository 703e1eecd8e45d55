"""Tables and figures that compare objectives over seeds at equal rollouts.

Reads the run directories ``reopold-agent compare`` filled (``metrics.jsonl`` and
``config.yaml`` of each ``<objective>_seed<seed>``) and writes:

* ``compare.csv`` / ``compare.md``: per objective, over seeds, the final and best greedy and
  sampled accuracy (mean and standard deviation), the rollouts needed to reach a target
  accuracy, the sample-efficiency ratio against a reference objective (rollouts the reference
  needed / rollouts this objective needed), and the minutes a run took;
* ``compare_accuracy.png``: greedy and sampled accuracy against rollouts, the seed mean with a
  min-max band per objective;
* ``compare_diagnostics.png``: token reward mean, student entropy and selected-token ratio
  against the step (seed means), the paper's training diagnostics side by side.

The target defaults to the reference objective's final greedy accuracy (its seed mean), so the
ratio answers the paper's question: how many fewer rollouts reach what the reference reaches.
An objective "reaches" the target at the first evaluation where its seed-mean greedy accuracy
is at least the target.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .plots import metric_series, read_metrics
from .trajectory_io import LineError

__all__ = ["RunCurve", "ObjectiveSummary", "read_run", "summarise", "write_compare_table",
           "plot_compare_accuracy", "plot_compare_diagnostics"]

DIAGNOSTICS = (("token reward mean", "objective/reward_mean"),
               ("student entropy (nats)", "objective/entropy_mean"),
               ("selected-token ratio", "objective/selected_ratio"))
"""Panels of ``compare_diagnostics.png``: (title, metric key)."""


@dataclass
class RunCurve:
    """One finished or partial run: its evaluations against rollouts, and its diagnostics."""

    objective: str
    seed: int
    rollouts_per_step: int
    eval_steps: list[int] = field(default_factory=list)
    """Training steps taken before each evaluation (0: the starting student)."""
    greedy: list[float] = field(default_factory=list)
    sampled: list[float] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    """Every metrics row, for the diagnostics."""
    seconds: float = 0.0
    """Sum of the steps' wall time."""
    errors: list[LineError] = field(default_factory=list)

    @property
    def eval_rollouts(self) -> list[int]:
        return [s * self.rollouts_per_step for s in self.eval_steps]


@dataclass(frozen=True)
class ObjectiveSummary:
    """One objective over its seeds (means and sample standard deviations)."""

    objective: str
    seeds: int
    final_greedy: tuple[float, float]
    final_sampled: tuple[float, float]
    best_greedy: tuple[float, float]
    rollouts_to_target: int | None
    """Rollouts at the first evaluation whose seed-mean greedy accuracy reaches the target."""
    efficiency_vs_reference: float | None
    minutes_per_run: float


def read_run(run_dir: Path, objective: str, seed: int) -> RunCurve:
    """The evaluations and diagnostics of one run directory."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    per_step = int(config["train"]["prompts_per_step"]) * int(config["rollout"]["group_size"])
    records, errors = read_metrics(run_dir / "metrics.jsonl")
    curve = RunCurve(objective=objective, seed=seed, rollouts_per_step=per_step, records=records,
                     errors=errors)
    steps, greedy = metric_series(records, "eval/greedy_accuracy")
    _, sampled = metric_series(records, "eval/sampled_accuracy")
    if len(sampled) != len(greedy):
        sampled = [math.nan] * len(greedy)
    curve.eval_steps = [int(s) for s in steps]
    curve.greedy, curve.sampled = [float(v) for v in greedy], [float(v) for v in sampled]
    curve.seconds = float(sum(metric_series(records, "time/step_s")[1]))
    return curve


def _spread(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _mean_curve(curves: Sequence[RunCurve]) -> tuple[list[int], list[float]]:
    """(rollouts, seed-mean greedy accuracy) over the evaluations every seed has."""
    common = sorted(set.intersection(*(set(c.eval_steps) for c in curves)))
    by_seed = [dict(zip(c.eval_steps, c.greedy)) for c in curves]
    rollouts = [s * curves[0].rollouts_per_step for s in common]
    return rollouts, [statistics.fmean(seed[s] for seed in by_seed) for s in common]


def _rollouts_to(curves: Sequence[RunCurve], target: float) -> int | None:
    for rollouts, accuracy in zip(*_mean_curve(curves)):
        if accuracy >= target:
            return rollouts
    return None


def summarise(curves: Sequence[RunCurve], *, reference: str = "rkl",
              target: float | None = None) -> tuple[list[ObjectiveSummary], float | None]:
    """One summary per objective (in first-seen order), and the target accuracy used.

    ``target`` None: the reference objective's final seed-mean greedy accuracy (no target,
    and no ratios, when the reference was not run).
    """
    groups: dict[str, list[RunCurve]] = {}
    for curve in curves:
        if curve.eval_steps:
            groups.setdefault(curve.objective, []).append(curve)
    if target is None and reference in groups:
        target = statistics.fmean(c.greedy[-1] for c in groups[reference])
    reference_rollouts = _rollouts_to(groups[reference], target) if (
        target is not None and reference in groups) else None
    summaries = []
    for objective, runs in groups.items():
        reached = None if target is None else _rollouts_to(runs, target)
        ratio = None
        if reached and reference_rollouts:
            ratio = reference_rollouts / reached
        summaries.append(ObjectiveSummary(
            objective=objective, seeds=len(runs),
            final_greedy=_spread([c.greedy[-1] for c in runs]),
            final_sampled=_spread([c.sampled[-1] for c in runs]),
            best_greedy=_spread([max(c.greedy) for c in runs]),
            rollouts_to_target=reached, efficiency_vs_reference=ratio,
            minutes_per_run=statistics.fmean(c.seconds for c in runs) / 60))
    return summaries, target


def _pct(pair: tuple[float, float]) -> str:
    mean, std = pair
    return "n/a" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def write_compare_table(summaries: Sequence[ObjectiveSummary], target: float | None,
                        reference: str, directory: Path) -> list[Path]:
    """``compare.csv`` (plain numbers) and ``compare.md`` (percentages, mean ± std)."""
    directory.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = directory / "compare.csv", directory / "compare.md"
    header = ["objective", "seeds", "final_greedy_mean", "final_greedy_std", "final_sampled_mean",
              "final_sampled_std", "best_greedy_mean", "best_greedy_std", "rollouts_to_target",
              f"efficiency_vs_{reference}", "minutes_per_run"]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for s in summaries:
            writer.writerow([s.objective, s.seeds, *s.final_greedy, *s.final_sampled, *s.best_greedy,
                             "" if s.rollouts_to_target is None else s.rollouts_to_target,
                             "" if s.efficiency_vs_reference is None else f"{s.efficiency_vs_reference:.3f}",
                             f"{s.minutes_per_run:.2f}"])
    target_text = "none" if target is None else f"{100 * target:.1f}% greedy"
    lines = [f"Target: {target_text}. Accuracy in %, mean ± standard deviation over seeds.", "",
             f"| objective | seeds | final greedy | final sampled | best greedy | rollouts to target "
             f"| efficiency vs {reference} | minutes/run |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        reached = "not reached" if s.rollouts_to_target is None else str(s.rollouts_to_target)
        ratio = "n/a" if s.efficiency_vs_reference is None else f"{s.efficiency_vs_reference:.2f}x"
        lines.append(f"| {s.objective} | {s.seeds} | {_pct(s.final_greedy)} | {_pct(s.final_sampled)} "
                     f"| {_pct(s.best_greedy)} | {reached} | {ratio} | {s.minutes_per_run:.1f} |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [csv_path, md_path]


def _figure(columns: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * columns, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns)


def _by_objective(curves: Sequence[RunCurve]) -> dict[str, list[RunCurve]]:
    groups: dict[str, list[RunCurve]] = {}
    for curve in curves:
        if curve.eval_steps:
            groups.setdefault(curve.objective, []).append(curve)
    return groups


def plot_compare_accuracy(curves: Sequence[RunCurve], path: Path) -> Path:
    """Greedy and sampled accuracy against rollouts: seed mean and min-max band."""
    figure, axes = _figure(2)
    for index, (objective, runs) in enumerate(_by_objective(curves).items()):
        for ax, attribute in zip(axes, ("greedy", "sampled")):
            common = sorted(set.intersection(*(set(c.eval_steps) for c in runs)))
            table = [[dict(zip(c.eval_steps, getattr(c, attribute)))[s] for c in runs] for s in common]
            x = [s * runs[0].rollouts_per_step for s in common]
            ax.plot(x, [statistics.fmean(row) for row in table], "-o", ms=3, color=f"C{index}",
                    label=f"{objective} ({len(runs)} seeds)")
            ax.fill_between(x, [min(row) for row in table], [max(row) for row in table],
                            color=f"C{index}", alpha=0.15)
    for ax, title in zip(axes, ("greedy accuracy", "sampled accuracy")):
        ax.set(title=title, xlabel="training rollouts", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_compare_diagnostics(curves: Sequence[RunCurve], path: Path) -> Path:
    """Token reward, entropy and selected-token ratio against the step (seed means)."""
    figure, axes = _figure(len(DIAGNOSTICS))
    for index, (objective, runs) in enumerate(_by_objective(curves).items()):
        for ax, (_, key) in zip(axes, DIAGNOSTICS):
            series = [dict(zip(*metric_series(c.records, key))) for c in runs]
            steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
            if steps:
                ax.plot(steps, [statistics.fmean(s[k] for s in series) for k in steps],
                        color=f"C{index}", label=objective)
    for ax, (title, _) in zip(axes, DIAGNOSTICS):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
