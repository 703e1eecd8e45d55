"""Which train item each prompt of a step plays: a seeded shuffle, drawn anew for every pass.

Prompt ``p`` of step ``k`` takes position ``k * P + p`` in an endless stream over the split.
Each pass over the split (``num_items`` positions) is a permutation drawn from ``(seed, pass)``,
so a pass plays every item exactly once, different seeds play different orders, and the map is
a pure function of its arguments: a resumed run replays exactly the prompts it would have played.
"""

from __future__ import annotations

import functools

import torch


def train_item_index(position: int, num_items: int, *, seed: int, shuffle: bool = True) -> int:
    """Index of the split item played at ``position`` (>= 0) of the stream.

    With ``shuffle=False`` items are played in index order, pass after pass.
    """
    if num_items < 1:
        raise ValueError(f"the train split is empty (num_items={num_items})")
    if position < 0:
        raise ValueError(f"position must be >= 0, got {position}")
    pass_index, offset = divmod(position, num_items)
    if not shuffle:
        return offset
    return int(_permutation(seed, pass_index, num_items)[offset])


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, pass_index: int, num_items: int) -> torch.Tensor:
    """[num_items] int64: the order of one pass (cached: a step reads P positions of it)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + pass_index) % (2**63 - 1))
    return torch.randperm(num_items, generator=generator)
