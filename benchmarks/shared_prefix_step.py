"""Whole training steps with ``model.shared_prefix`` on and off, alternated in one run (CPU or GPU).

Runs ``reopold-agent train`` in-process (no evaluation) ``--runs`` times per setting, switching
the setting every run, and prints per setting the median step split (rollout generation,
teacher, update, whole step) over the steps after the first of every run, and the tokens each
part ran through its model per step, from the step's trajectories: every row's whole sequence
without sharing; with it, each distinct prompt once plus every row's own tokens (the update's
figure assumes all of a prompt's rollouts meet in one micro-batch, as with one mini-batch).

    python benchmarks/shared_prefix_step.py --task tool_math --steps 6 --runs 2 \\
        [--set model.student=PATH --set model.teacher=PATH ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_runs import train_in_process  # noqa: E402 - this script's neighbour

PARTS = (("generation", "time/rollout_generate_s"), ("teacher", "time/teacher_s"), ("update", "time/update_s"),
         ("step", "time/step_s"))


def run(task: str, steps: int, shared: bool, overrides: list[str]) -> tuple[list[dict], list[tuple[int, int]]]:
    """(metrics rows of the steps after the first, tokens per step computed with ``shared``)."""
    rows, steps_trajectories = train_in_process(task, steps,
                                                [f"model.shared_prefix={str(shared).lower()}", *overrides])
    tokens = []
    for trajs in steps_trajectories:
        whole = sum(t.num_tokens for t in trajs)
        prompts = {tuple(t.token_ids[:t.loss_mask.index(1)]) for t in trajs if 1 in t.loss_mask}
        own = sum(t.num_tokens - t.loss_mask.index(1) for t in trajs if 1 in t.loss_mask)
        tokens.append((whole, sum(len(p) for p in prompts) + own))
    return rows, tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="tool_math")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--runs", type=int, default=2, help="runs per setting, alternated")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args()
    rows: dict[bool, list[dict]] = {False: [], True: []}
    tokens: list[tuple[int, int]] = []
    for r in range(args.runs):
        for shared in ((False, True) if r % 2 == 0 else (True, False)):
            got, counted = run(args.task, args.steps, shared, args.overrides)
            rows[shared] += got
            tokens += counted
    print(f"{'seconds per step (median)':28s} {'unshared':>10s} {'shared':>10s} {'ratio':>7s}")
    for name, key in PARTS:
        off, on = (statistics.median(r[key] for r in rows[s]) for s in (False, True))
        print(f"{name:28s} {off:10.3f} {on:10.3f} {off / on:6.2f}x")
    whole, shared_tokens = statistics.median(t[0] for t in tokens), statistics.median(t[1] for t in tokens)
    print(f"tokens through a model per step (median): {whole:,.0f} unshared, {shared_tokens:,.0f} with each prompt "
          f"once ({whole / shared_tokens:.2f}x fewer)")


if __name__ == "__main__":
    main()
