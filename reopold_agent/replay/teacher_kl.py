"""The teacher-student log-ratio of a recorded trajectory: per token, per turn, per episode.

R_t = teacher_logprobs[t] - logprobs[t] (method section 1) at model tokens; for an episode
another engine sampled (vLLM) the trainer's ``trainer_logprobs[t]`` stand for ``logprobs[t]``,
as they did in the update. The KL figures are means of -R_t over model tokens.
"""

from __future__ import annotations

import math

from ..trajectory import Trajectory

__all__ = ["token_reward", "turn_kl", "trajectory_kl"]


def token_reward(traj: Trajectory, t: int) -> float | None:
    """R_t at model token t, or None when a log-prob is missing or not finite. The student's
    log-prob is the trainer's own where the trajectory has one (an episode vLLM sampled): the
    one the update's R started from."""
    lp = traj.trainer_logprobs[t] if traj.trainer_logprobs is not None else traj.logprobs[t]
    tl = traj.teacher_logprobs[t] if traj.teacher_logprobs is not None else None
    if lp is None or tl is None or not math.isfinite(lp) or not math.isfinite(tl):
        return None
    return tl - lp


def turn_kl(traj: Trajectory) -> dict[int, float | None]:
    """Per assistant turn: mean over its model tokens of (logprob - teacher_logprob)."""
    sums: dict[int, list[float]] = {}
    for t in range(traj.num_tokens):
        if traj.loss_mask[t] == 1:
            sums.setdefault(traj.turn[t], [])
            d = token_reward(traj, t)
            if d is not None:
                sums[traj.turn[t]].append(-d)
    return {k: (sum(v) / len(v) if v else None) for k, v in sorted(sums.items())}


def trajectory_kl(traj: Trajectory) -> float | None:
    """Mean over all model tokens of (logprob - teacher_logprob); None when unscored."""
    diffs = [d for t in range(traj.num_tokens) if traj.loss_mask[t] == 1
             if (d := token_reward(traj, t)) is not None]
    return -sum(diffs) / len(diffs) if diffs else None
