"""``reopold-agent compare``: objectives x seeds at equal rollouts, resumably, and one report.

Each (objective, seed) trains in its own run directory ``<output>/<objective>_seed<seed>``
through the ``train`` command in a child process, one run at a time, with the same task,
configuration and overrides, so all runs see the same number of rollouts. Running the command
again continues: finished runs are kept, interrupted runs resume from their last checkpoint, and
runs that never reached a checkpoint start again. The report (:mod:`compare_report`) is then
written from the run directories.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import yaml

from .compare_report import (plot_compare_accuracy, plot_compare_diagnostics, read_run, summarise,
                             write_compare_table)
from .plots import read_metrics

__all__ = ["CompareRun", "plan_runs", "run_status", "train_arguments", "run_compare"]

OBJECTIVES = ("reopold", "rkl_sg", "rkl", "grpo", "sft")


@dataclass(frozen=True)
class CompareRun:
    """One cell of the comparison."""

    objective: str
    seed: int
    run_dir: Path


def plan_runs(objectives: Sequence[str], seeds: Sequence[int], output_dir: Path) -> list[CompareRun]:
    """Runs in the order they train: seed-major, so every objective has a seed early."""
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(unknown)}; choose from {', '.join(OBJECTIVES)}")
    if not objectives or not seeds:
        raise ValueError("compare needs at least one objective and one seed")
    if len(set(objectives)) != len(objectives) or len(set(seeds)) != len(seeds):
        raise ValueError("objectives and seeds must not repeat")
    return [CompareRun(o, s, output_dir / f"{o}_seed{s}") for s in seeds for o in objectives]


def run_status(run_dir: Path) -> str:
    """``done`` (evaluated after its last step), ``resumable`` (has a checkpoint), or ``fresh``."""
    config_path = run_dir / "config.yaml"
    if config_path.exists():
        steps = int(yaml.safe_load(config_path.read_text(encoding="utf-8"))["train"]["steps"])
        records, _ = read_metrics(run_dir / "metrics.jsonl")
        if any(r.get("step") == steps and "eval/greedy_accuracy" in r for r in records):
            return "done"
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.glob("step_*")):
        return "resumable"
    return "fresh"


def train_arguments(run: CompareRun, status: str, base_args: Sequence[str]) -> list[str]:
    """The ``reopold-agent train`` arguments of one run in state ``status``.

    ``base_args`` are the train options shared by every run (task, config, models, steps,
    ``--set`` overrides); the run's objective and seed are set after them and win.
    """
    args = ["train", *base_args, "--output-dir", str(run.run_dir),
            "--set", f"objective.name={run.objective}", "--set", f"train.seed={run.seed}"]
    if status == "resumable":
        args.append("--resume")
    elif run.run_dir.exists():
        args.append("--overwrite")
    return args


def _train_in_child(args: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", "reopold_agent.cli", *args])


def run_compare(runs: Sequence[CompareRun], base_args: Sequence[str], *, output_dir: Path,
                reference: str = "rkl",
                target: float | None = None, log: Callable[[str], None] = print,
                train: Callable[[list[str]], int] = _train_in_child) -> list[Path]:
    """Train every run that is not done, then write the report; returns the files written.

    Raises:
        RuntimeError: naming the run whose training failed (the report is still written from
            the runs that finished, and running the command again continues).
    """
    failed = []
    for index, run in enumerate(runs, start=1):
        status = run_status(run.run_dir)
        label = f"[{index}/{len(runs)}] {run.objective} seed {run.seed}"
        if status == "done":
            log(f"{label}: done, kept ({run.run_dir})")
            continue
        log(f"{label}: {'resuming' if status == 'resumable' else 'training'} in {run.run_dir}")
        code = train(train_arguments(run, status, base_args))
        if code != 0:
            failed.append(f"{run.objective} seed {run.seed} (exit {code})")
            log(f"{label}: failed with exit code {code}; going on with the other runs")
    curves = [read_run(r.run_dir, r.objective, r.seed) for r in runs if (r.run_dir / "config.yaml").exists()]
    summaries, used_target = summarise(curves, reference=reference, target=target)
    paths = write_compare_table(summaries, used_target, reference, output_dir)
    if summaries:
        paths += [plot_compare_accuracy(curves, output_dir / "compare_accuracy.png"),
                  plot_compare_diagnostics(curves, output_dir / "compare_diagnostics.png")]
    if failed:
        raise RuntimeError("these runs failed: " + "; ".join(failed) + f" (report of the others in {output_dir})")
    return paths
