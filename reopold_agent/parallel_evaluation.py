"""Evaluation across training processes: each plays its share of the problems, in parallel.

Every process evaluates every ``world``-th problem (no process idles in a collective while
another evaluates, which NCCL would time out on a long evaluation). The per-process metrics of
:func:`~reopold_agent.evaluation.evaluate` combine exactly into those of the whole problem set,
because each is a mean over problems or over episodes (a fixed number per problem), except
the ones :data:`SUMMED` and :data:`PER_TOKEN` name.
"""

from __future__ import annotations

from typing import Any, Callable

from .evaluation import evaluate
from .rollout.engine import RolloutEngine
from .trajectory import Trajectory
from .trajectory_io import trajectory_from_json, trajectory_to_json

SUMMED = ("eval/num_problems", "eval/tokens_per_second")
"""Counts and throughputs: the whole evaluation's is the sum over processes."""
PER_TOKEN = ("eval/sampled_seconds_per_token",)
"""Seconds per sampled token: total process-seconds over total tokens (weights: tokens)."""


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """The problems process ``rank`` of ``world`` evaluates: every ``world``-th, from ``rank``."""
    return indices[rank::world]


def combine_metrics(per_process: list[dict[str, float]], sampled_tokens: list[int]) -> dict[str, float]:
    """The metrics of the whole evaluation from each process's metrics on its share.

    Args:
        per_process: [W] each process's :func:`~reopold_agent.evaluation.evaluate` metrics.
        sampled_tokens: [W] model tokens of each process's sampled episodes.
    """
    problems = [m.get("eval/num_problems", 0.0) for m in per_process]
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for m in per_process for k in m):
        values = [m.get(key) for m in per_process]
        if key in SUMMED:
            out[key] = float(sum(v or 0.0 for v in values))
            continue
        weights = sampled_tokens if key in PER_TOKEN else problems
        pairs = [(w, v) for w, v in zip(weights, values) if v is not None and w > 0]
        total = sum(w for w, _ in pairs)
        out[key] = sum(w * v for w, v in pairs) / total if total else 0.0
    return out


def evaluate_in_parallel(engine: RolloutEngine, make_env: Callable[[], Any], indices: list[int], *,
                         accelerator: Any, store_images: Callable[[list[Trajectory]], None] = lambda trajs: None,
                         **settings: Any) -> tuple[dict[str, float], list[Trajectory]]:
    """:func:`~reopold_agent.evaluation.evaluate` over ``indices``, each process playing its
    :func:`shard`. Every process returns the combined metrics and all processes' trajectories
    (in rank order). ``settings``: the keyword arguments of ``evaluate``. Trajectories travel
    between processes as JSON lines without pixels: ``store_images`` first receives this
    process's own (to write their images into the run directory)."""
    world = accelerator.num_processes
    if world == 1:
        return evaluate(engine, make_env, indices, **settings)
    from accelerate.utils import gather_object

    mine = shard(indices, accelerator.process_index, world)
    metrics, trajs = {"eval/num_problems": 0.0}, []  # fewer problems than processes: nothing to weigh
    if mine:
        metrics, trajs = evaluate(engine, make_env, mine, **settings)
    greedy_episodes = len(mine) if settings.get("greedy") else 0  # evaluate returns the greedy pass first
    sampled = sum(t.num_model_tokens for t in trajs[greedy_episodes:])
    store_images(trajs)
    reports = gather_object([{"metrics": metrics, "sampled_tokens": sampled,
                              "lines": [trajectory_to_json(t) for t in trajs]}])
    combined = combine_metrics([r["metrics"] for r in reports], [r["sampled_tokens"] for r in reports])
    return combined, [trajectory_from_json(line) for r in reports for line in r["lines"]]
