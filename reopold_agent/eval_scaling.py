"""Test-time scaling: pass@k and maj@k against the tokens and time they cost.

From ``n`` sampled attempts per problem, the curve at each ``k <= n`` is estimated without
bias from all ``n`` attempts rather than from the first ``k``:

* ``pass@k``: the probability that at least one of ``k`` attempts drawn without replacement
  solves the problem, ``1 - C(n - c, k) / C(n, k)`` with ``c`` correct attempts (Chen et al.,
  2021), averaged over problems.
* ``maj@k``: the probability that the most frequent final answer among ``k`` attempts drawn
  without replacement is a correct one. Attempts without an extracted answer do not vote; a
  tie is broken uniformly at random, so a tie between a correct and a wrong answer counts 1/2.
  Exact (every k-subset) when there are at most ``exact_subsets`` subsets, otherwise the mean
  over ``resamples`` seeded random subsets.
* cost: ``k`` times the problem's mean generated tokens and mean seconds per attempt.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

__all__ = ["Attempt", "ScalingPoint", "pass_at_k", "majority_at_k", "k_ladder", "scaling_curve",
           "write_scaling_table", "plot_scaling"]


@dataclass(frozen=True)
class Attempt:
    """One sampled attempt at a problem."""

    correct: bool
    """The verifier accepted the attempt's final answer."""
    answer: str | None
    """The extracted final answer (the vote), or None when there is none."""
    tokens: int
    """Tokens the model generated in the attempt."""


@dataclass(frozen=True)
class ScalingPoint:
    """Accuracy and cost at one ``k``, averaged over problems."""

    k: int
    pass_at_k: float
    maj_at_k: float
    tokens_per_problem: float
    """Mean generated tokens that ``k`` attempts at one problem cost."""
    seconds_per_problem: float
    """Mean wall time that ``k`` attempts at one problem cost, at the measured throughput."""


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k from ``num_correct`` of ``num_samples`` attempts (``1 <= k <= n``)."""
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={num_samples}")
    if not 0 <= num_correct <= num_samples:
        raise ValueError(f"num_correct must be in [0, {num_samples}], got {num_correct}")
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def _vote(attempts: Sequence[Attempt]) -> float:
    """Probability that a majority vote over ``attempts`` picks a correct answer."""
    votes = Counter(a.answer for a in attempts if a.answer is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [answer for answer, count in votes.items() if count == top]
    correct = {a.answer for a in attempts if a.correct and a.answer is not None}
    return sum(answer in correct for answer in tied) / len(tied)


def majority_at_k(attempts: Sequence[Attempt], k: int, *, rng: random.Random,
                  resamples: int = 256, exact_subsets: int = 4096) -> float:
    """Expected maj@k of one problem over k-subsets of its ``attempts`` (module docstring)."""
    n = len(attempts)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k needs 1 <= k <= n, got k={k}, n={n}")
    if math.comb(n, k) <= exact_subsets:
        subsets = list(itertools.combinations(attempts, k))
    else:
        subsets = [rng.sample(list(attempts), k) for _ in range(resamples)]
    return sum(_vote(s) for s in subsets) / len(subsets)


def k_ladder(num_samples: int) -> list[int]:
    """1, 2, 4, ... up to ``num_samples``, which is always included."""
    if num_samples < 1:
        raise ValueError(f"need at least one sample per problem, got {num_samples}")
    ks = [2 ** i for i in range(num_samples.bit_length()) if 2 ** i <= num_samples]
    return ks if ks[-1] == num_samples else ks + [num_samples]


def scaling_curve(problems: Sequence[Sequence[Attempt]], seconds_per_token: float, *,
                  seed: int = 0) -> list[ScalingPoint]:
    """pass@k, maj@k and cost for every k of :func:`k_ladder` over ``problems``.

    Args:
        problems: one sequence of attempts per problem, the same number ``n`` for each.
        seconds_per_token: measured generation wall time per generated token.
        seed: seed of the subsets drawn for maj@k when they are not enumerated.
    """
    if not problems:
        raise ValueError("no problems to compute a test-time scaling curve over")
    sizes = {len(p) for p in problems}
    if len(sizes) != 1:
        raise ValueError(f"every problem needs the same number of attempts, got {sorted(sizes)}")
    rng = random.Random(seed)
    mean_tokens = sum(a.tokens for p in problems for a in p) / sum(len(p) for p in problems)
    points = []
    for k in k_ladder(sizes.pop()):
        passes = [pass_at_k(len(p), sum(a.correct for a in p), k) for p in problems]
        majorities = [majority_at_k(p, k, rng=rng) for p in problems]
        tokens = k * mean_tokens
        points.append(ScalingPoint(k=k, pass_at_k=sum(passes) / len(passes),
                                   maj_at_k=sum(majorities) / len(majorities),
                                   tokens_per_problem=tokens,
                                   seconds_per_problem=tokens * seconds_per_token))
    return points


def write_scaling_table(curves: dict[str, list[ScalingPoint]], directory: Path) -> list[Path]:
    """``test_time_scaling.csv`` and ``.md`` (one row per model and k) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    header = ["model", "k", "pass@k", "maj@k", "tokens_per_problem", "seconds_per_problem"]
    rows = [[name, p.k, f"{p.pass_at_k:.4f}", f"{p.maj_at_k:.4f}", f"{p.tokens_per_problem:.1f}",
             f"{p.seconds_per_problem:.3f}"] for name, points in curves.items() for p in points]
    csv_path, md_path = directory / "test_time_scaling.csv", directory / "test_time_scaling.md"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def plot_scaling(curves: dict[str, list[ScalingPoint]], path: Path) -> Path:
    """``pass@k`` and ``maj@k`` against tokens per problem (log scale), one line per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (name, points) in enumerate(curves.items()):
        color = f"C{index}"
        tokens = [p.tokens_per_problem for p in points]
        axes.plot(tokens, [p.pass_at_k for p in points], "-o", color=color, label=f"{name} pass@k")
        axes.plot(tokens, [p.maj_at_k for p in points], "--s", color=color, label=f"{name} maj@k")
        for p in points:
            axes.annotate(f"k={p.k}", (p.tokens_per_problem, p.pass_at_k), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.set_xscale("log", base=2)
    axes.set_xlabel("generated tokens per problem")
    axes.set_ylabel("accuracy")
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
