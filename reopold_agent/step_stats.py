"""A training step's statistics, aggregated over all its micro-batches and all processes.

Each micro-batch's objective reports its statistics on its own tokens. A step's statistic is
the same statistic over every token the step trained on, on every process, never a mean of
per-micro-batch values:

* counts (:data:`SUMMED`) add up; ``objective/loss`` is then divided by the optimiser steps;
* maxima (:data:`MAXIMA`) take the maximum;
* shares of the selected tokens (:data:`PER_SELECTED`) are weighted by each micro-batch's
  ``objective/num_selected``, every other ``objective/`` mean by its ``objective/num_valid``;
* percentiles come from the token values themselves: an objective reports them as a 1-D tensor
  under ``<name>_values`` (e.g. ``objective/reward_values``), and the step's
  ``<name>_p10/_p50/_p90`` are nearest-rank percentiles of all of them, across processes;
* everything else (``train/grad_norm``, ``objective/phase``, the entropy threshold) is a plain
  mean over the values reported.

Every process must report the same keys (one objective, one configuration); the cross-process
reduction is a few gathers of small vectors and of the token values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

import torch
from torch import Tensor

from .objectives.diagnostics import nearest_rank_percentiles

SUMMED = frozenset({"objective/num_valid", "objective/num_selected", "objective/loss"})
MAXIMA = frozenset({"objective/rho_max"})
PER_SELECTED = frozenset({"objective/ratio_clip_frac"})
UNWEIGHTED = frozenset({"train/grad_norm", "objective/phase", "objective/entropy_threshold"})
VALUES_SUFFIX = "_values"

Gather = Callable[[Tensor], Tensor]
"""Concatenates a 1-D tensor across processes (identity in a single process)."""


class StepStats:
    """Collects the statistics of one step's micro-batches (:meth:`add`) and aggregates them
    over the step and all processes (:meth:`result`)."""

    def __init__(self) -> None:
        self._weighted: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        """key -> [sum of weight * value, sum of weights] on this process."""
        self._maxima: dict[str, float] = {}
        self._values: dict[str, list[Tensor]] = defaultdict(list)

    def add(self, stats: dict[str, float | Tensor]) -> None:
        """Add one micro-batch's statistics (floats, and 1-D tensors under ``*_values``)."""
        valid = float(stats.get("objective/num_valid", 1.0))
        selected = float(stats.get("objective/num_selected", 1.0))
        for key, value in stats.items():
            if key.endswith(VALUES_SUFFIX):
                self._values[key].append(torch.as_tensor(value).detach().reshape(-1).double().cpu())
                continue
            value = float(value)
            if key in MAXIMA:
                self._maxima[key] = max(self._maxima.get(key, -math.inf), value)
                continue
            if key in SUMMED or key in UNWEIGHTED or not key.startswith("objective/"):
                weight = 1.0
            else:
                weight = selected if key in PER_SELECTED else valid
            total = self._weighted[key]
            if weight:
                total[0] += weight * value
            total[1] += weight

    def result(self, gather: Gather = lambda x: x, *, optimizer_steps: int = 1) -> dict[str, float]:
        """The step's statistics over every micro-batch of every process."""
        keys = sorted(self._weighted)
        local = torch.tensor([x for key in keys for x in self._weighted[key]], dtype=torch.float64)
        totals = gather(local).reshape(-1, len(keys), 2).sum(0) if keys else local
        out: dict[str, float] = {}
        for key, (weighted, weight) in zip(keys, totals.tolist()):
            out[key] = weighted if key in SUMMED else (weighted / weight if weight else 0.0)
        maxima = sorted(self._maxima)
        if maxima:
            highest = gather(torch.tensor([self._maxima[k] for k in maxima], dtype=torch.float64))
            for key, value in zip(maxima, highest.reshape(-1, len(maxima)).max(0).values.tolist()):
                out[key] = value
        for key in sorted(self._values):
            values = gather(torch.cat(self._values[key]))
            out.update({k: float(v) for k, v in
                        nearest_rank_percentiles(values, key[: -len(VALUES_SUFFIX)]).items()})
        if "objective/loss" in out:
            out["objective/loss"] /= max(optimizer_steps, 1)
        if out.get("objective/num_valid"):
            out["objective/selected_ratio"] = out.get("objective/num_selected", 0.0) / out["objective/num_valid"]
        return out
