"""Random trajectories to score, and the comparison of two scorings of them (vLLM teacher tests)."""

from __future__ import annotations

import random

from reopold_agent.trajectory import Trajectory


def random_trajectories(vocab: int, count: int = 12, seed: int = 0, lengths: tuple[int, int] = (5, 200)
                        ) -> list[Trajectory]:
    """Random id sequences of ``lengths`` (inclusive) tokens: a prompt, then model and tool spans
    alternating."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(*lengths)
        ids = [rng.randrange(vocab) for _ in range(n)]
        source = ["prompt"] * rng.randint(1, 4)
        while len(source) < n:
            source += [rng.choice(["model", "tool"])] * rng.randint(1, 20)
        source = source[:n]
        out.append(Trajectory(token_ids=ids, source=source, turn=[0] * n,
                              loss_mask=[int(s == "model") for s in source], logprobs=[None] * n, messages=[]))
    return out


def unscored(trajectories: list[Trajectory]) -> list[Trajectory]:
    """Copies of ``trajectories`` without teacher log-probs."""
    return [Trajectory(token_ids=t.token_ids, source=t.source, turn=t.turn, loss_mask=t.loss_mask,
                       logprobs=t.logprobs, messages=[]) for t in trajectories]


def largest_gap(scored: list[Trajectory], reference: list[Trajectory]) -> float:
    """max |teacher log-prob difference| over positions 1.. of every trajectory; both must have
    scored one value at every position after the first."""
    gaps = []
    for got, ref in zip(scored, reference, strict=True):
        assert got.teacher_logprobs[0] is None and len(got.teacher_logprobs) == got.num_tokens
        assert all(v is not None for v in got.teacher_logprobs[1:])
        gaps += [abs(a - b) for a, b in zip(got.teacher_logprobs[1:], ref.teacher_logprobs[1:], strict=True)]
    return max(gaps)
