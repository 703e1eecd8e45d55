"""Held-out evaluation: greedy and sampled accuracy, pass@k and maj@k on a fixed problem set.

An episode counts as solved when its outcome reward is 1 (the task's verifier accepted the final
answer). With n sampled attempts per problem: ``sampled_accuracy`` is the mean over attempts,
and ``pass@k`` and ``maj@k`` for k = 1, 2, 4, ..., n are estimated from all n attempts
(:mod:`reopold_agent.eval_scaling`): the probability that k attempts solve the problem at least
once, and that their most frequent final answer is correct.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from .envs.info import OUTCOME, StepInfo
from .eval_scaling import Attempt, ScalingPoint, scaling_curve
from .rollout.engine import EpisodeRequest, RolloutEngine
from .trajectory import Trajectory


def evaluate(
    engine: RolloutEngine,
    make_env: Callable[[], Any],
    indices: list[int],
    *,
    samples: int,
    greedy: bool,
    batch_episodes: int,
    seed: int,
    step: int = -1,
    top_p: float | None = None,
) -> tuple[dict[str, float], list[Trajectory]]:
    """Play the eval problems ``indices`` and return (metrics, trajectories).

    ``engine`` provides the backend, budgets and sampling settings; a greedy copy (temperature 0)
    is made for the greedy pass, and the sampled pass uses nucleus ``top_p`` when given. Metric keys: ``eval/greedy_accuracy``, ``eval/sampled_accuracy``,
    ``eval/pass@k`` and ``eval/maj@k`` for every k of the ladder up to ``samples``,
    ``eval/sampled_seconds_per_token``, ``eval/tokens_per_second``, ``eval/num_problems``.

    Problem ``i`` is item ``i`` of the environment's split (``options={"index": i}``). An
    environment without numbered items (no ``num_items``: a plain ``gymnasium.Env``) is reset with
    the fixed seed ``seed + i`` instead, in both passes: problem ``i`` is whatever that seed draws,
    the same at every evaluation.
    """
    metrics: dict[str, float] = {"eval/num_problems": float(len(indices))}
    all_trajs: list[Trajectory] = []
    envs: list[Any] = []
    tokens, start = 0, time.perf_counter()
    if greedy:
        greedy_engine = _with_sampling(engine, temperature=0.0)
        trajs = _play(greedy_engine, make_env, envs, [(i, 0) for i in indices], batch_episodes, seed, step,
                      problem_seed=seed)
        metrics["eval/greedy_accuracy"] = _mean([t.reward >= 1.0 for t in trajs])
        all_trajs += trajs
    if samples > 0:
        jobs = [(i, g) for i in indices for g in range(samples)]
        sampled_start = time.perf_counter()
        sampling_engine = engine if top_p is None else _with_sampling(engine, top_p=top_p)
        trajs = _play(sampling_engine, make_env, envs, jobs, batch_episodes, seed + 1, step, problem_seed=seed)
        seconds = time.perf_counter() - sampled_start
        metrics["eval/sampled_accuracy"] = _mean([t.reward >= 1.0 for t in trajs])
        metrics["eval/sampled_seconds_per_token"] = seconds / max(sum(t.num_model_tokens for t in trajs), 1)
        for point in sampled_scaling(trajs, metrics["eval/sampled_seconds_per_token"], seed=seed):
            metrics[f"eval/pass@{point.k}"] = point.pass_at_k
            metrics[f"eval/maj@{point.k}"] = point.maj_at_k
        all_trajs += trajs
    tokens = sum(t.num_model_tokens for t in all_trajs)
    metrics["eval/tokens_per_second"] = tokens / max(time.perf_counter() - start, 1e-9)
    metrics["eval/tool_error_rate"] = _mean([t.tool_errors > 0 for t in all_trajs]) if all_trajs else 0.0
    return metrics, all_trajs


def _play(engine, make_env, envs, jobs, batch_episodes, seed, step, *, problem_seed) -> list[Trajectory]:
    out: list[Trajectory] = []
    for start in range(0, len(jobs), batch_episodes):
        chunk = jobs[start:start + batch_episodes]
        while len(envs) < len(chunk):
            envs.append(make_env())
        if callable(getattr(envs[0], "num_items", None)):
            requests = [EpisodeRequest(seed=seed + i, options={"index": i}, sample_index=g) for i, g in chunk]
        else:  # no numbered items: the reset seed is the problem
            requests = [EpisodeRequest(seed=problem_seed + i, options={}, sample_index=g) for i, g in chunk]
        out += engine.run(envs[:len(chunk)], requests, seed=seed + start, step=step)
    return out


def _with_sampling(engine: RolloutEngine, **changes) -> RolloutEngine:
    return RolloutEngine(engine.backend, engine.tokenizer, dataclasses.replace(engine.config, **changes),
                         vision=engine.vision)


def sampled_scaling(trajectories: list[Trajectory], seconds_per_token: float, *,
                    seed: int = 0) -> list[ScalingPoint]:
    """The test-time scaling curve of sampled evaluation episodes, grouped by problem."""
    by_problem: dict[str, list[Attempt]] = {}
    for t in trajectories:
        extracted = StepInfo.from_info(t.info.get(OUTCOME, {})).extracted
        by_problem.setdefault(t.prompt_id, []).append(Attempt(
            correct=t.reward >= 1.0, answer=extracted,
            tokens=t.num_model_tokens))
    return scaling_curve(list(by_problem.values()), seconds_per_token, seed=seed)


def _mean(values) -> float:
    values = list(values)
    return sum(map(float, values)) / len(values) if values else 0.0
