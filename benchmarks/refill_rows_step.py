"""Training steps with ``rollout.refill_rows`` on and off, alternated in one run (CPU or GPU).

Runs ``reopold-agent train`` in-process (no evaluation) ``--runs`` times per setting, switching
the setting every run, and prints per setting the median rollout split (model generation, the
environments, the whole rollout, the whole step) over the steps after the first of every run,
and whether both settings sampled the same tokens (same seeds: they should, up to the float
rounding of batched kernels, which can flip a rare sample).

    python benchmarks/refill_rows_step.py --task tool_math --steps 6 --runs 2 \\
        [--set model.student=PATH --set model.teacher=PATH ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from reopold_agent.cli import main as cli_main
from reopold_agent.run_logging import read_metrics
from reopold_agent.trajectory_io import read_trajectories

PARTS = (("generation", "time/rollout_generate_s"), ("environments", "time/rollout_env_s"),
         ("rollout", "time/rollout_s"), ("step", "time/step_s"))


def run(task: str, steps: int, refill: bool, overrides: list[str]) -> tuple[list[dict], list[list[int]]]:
    """(metrics rows of the steps after the first, every trajectory's token ids in order)."""
    with tempfile.TemporaryDirectory() as out:
        argv = ["train", "--task", task, "--steps", str(steps), "--output-dir", out,
                "--set", "eval.num_problems=0", "--set", f"train.save_every={steps + 1}",
                "--set", f"rollout.refill_rows={str(refill).lower()}"]
        for item in overrides:
            argv += ["--set", item]
        if cli_main(argv) != 0:
            raise SystemExit("training failed")
        rows = [r for r in read_metrics(out) if "time/step_s" in r][1:]
        tokens = []
        for path in sorted((Path(out) / "trajectories").glob("step_*.jsonl")):
            trajs, _ = read_trajectories(path)
            tokens += [list(t.token_ids) for t in trajs]
    return rows, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="tool_math")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--runs", type=int, default=2, help="runs per setting, alternated")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args()
    rows: dict[bool, list[dict]] = {False: [], True: []}
    tokens: dict[bool, list[list[int]]] = {}
    for r in range(args.runs):
        for refill in ((False, True) if r % 2 == 0 else (True, False)):
            got, sampled = run(args.task, args.steps, refill, args.overrides)
            rows[refill] += got
            tokens.setdefault(refill, sampled)
    print(f"{'seconds per step (median)':28s} {'batches':>10s} {'refilled':>10s} {'ratio':>7s}")
    for name, key in PARTS:
        off, on = (statistics.median(r[key] for r in rows[s]) for s in (False, True))
        print(f"{name:28s} {off:10.3f} {on:10.3f} {off / on:6.2f}x")
    same = sum(a == b for a, b in zip(tokens[False], tokens[True]))
    print(f"episodes with the same tokens in both settings' first runs: {same} of {len(tokens[False])}")


if __name__ == "__main__":
    main()
