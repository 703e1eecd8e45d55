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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_runs import train_in_process  # noqa: E402 - this script's neighbour

PARTS = (("generation", "time/rollout_generate_s"), ("environments", "time/rollout_env_s"),
         ("rollout", "time/rollout_s"), ("step", "time/step_s"))


def run(task: str, steps: int, refill: bool, overrides: list[str]) -> tuple[list[dict], list[list[int]]]:
    """(metrics rows of the steps after the first, every trajectory's token ids in order)."""
    rows, steps_trajectories = train_in_process(task, steps,
                                                [f"rollout.refill_rows={str(refill).lower()}", *overrides])
    return rows, [list(t.token_ids) for trajs in steps_trajectories for t in trajs]


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
