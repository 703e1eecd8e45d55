"""Shared by the whole-step benchmarks: one ``reopold-agent train`` run in-process, no evaluation."""

from __future__ import annotations

import tempfile
from pathlib import Path

from reopold_agent.cli import main as cli_main
from reopold_agent.run_logging import read_metrics
from reopold_agent.trajectory import Trajectory
from reopold_agent.trajectory_io import read_trajectories


def train_in_process(task: str, steps: int, overrides: list[str]) -> tuple[list[dict], list[list[Trajectory]]]:
    """Train ``steps`` steps on ``task`` with ``--set`` ``overrides`` in a temporary directory;
    (the metrics rows of the steps after the first, every step's trajectories in order)."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["train", "--task", task, "--steps", str(steps), "--output-dir", out,
                "--set", "eval.num_problems=0", "--set", f"train.save_every={steps + 1}"]
        for item in overrides:
            argv += ["--set", item]
        if cli_main(argv) != 0:
            raise SystemExit("training failed")
        rows = [r for r in read_metrics(out) if "time/step_s" in r][1:]
        trajectories = [read_trajectories(path)[0]
                        for path in sorted((Path(out) / "trajectories").glob("step_*.jsonl"))]
    return rows, trajectories
