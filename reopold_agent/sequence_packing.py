"""Right-padded rows packed into fewer, fuller rows, with the index maps to unpack the results.

Several sequences share a packed row back to back; every sequence's position ids start again at
0, which is how transformers recognises packed sequences when it gets no attention mask: its
mask then lets a token attend only to earlier tokens of its own sequence (sdpa, eager and flex
attention build that block-diagonal causal mask per row; flash-attention kernels run variable-
length attention over one packed row). A token therefore sees exactly the context it sees in
its padded row, at the same positions, and padding is neither attended to nor projected onto
the vocabulary.

Rows are placed by first-fit decreasing into packed rows of ``capacity`` tokens (at least the
longest row); the tail of a packed row that no sequence fills holds ``pad_token_id`` as a
sequence of its own, whose outputs are never read. Packed rows come fullest first, and
:func:`width_groups` splits them into groups of similar fill that a model can run one at a
time, each only as wide as its fullest row: attention through a dense mask costs the square of
the width, so a short packed row should not be run at the width of a long one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PackedRows:
    """B right-padded rows of width T, packed into P rows of width L."""

    ids_PL: Tensor
    """[P, L] long token ids; unfilled tails hold the pad id."""
    position_ids_PL: Tensor
    """[P, L] long positions, 0 at the first token of every sequence (and of every tail)."""
    packed_index_N: Tensor
    """[N] long flat index into ``P * L`` of each real token, in row-major order of ``[B, T]``."""
    padded_index_N: Tensor
    """[N] long flat index into ``B * T`` of the same tokens."""
    fill_P: list[int]
    """Real tokens in each packed row, non-increasing (``fill_P[0] == L``)."""

    def prediction_pairs(self) -> tuple[Tensor, Tensor]:
        """Flat indices ``(packed_from_M, padded_to_M)``: the hidden state at packed position
        ``packed_from_M[m]`` predicts the token at padded position ``padded_to_M[m]``, for every
        real token but the first of each row (M = N - rows with a token)."""
        # every token but a sequence's first (position 0) follows the token before it in [B, T] order
        follows = self.position_ids_PL.reshape(-1)[self.packed_index_N[1:]] != 0
        return self.packed_index_N[:-1][follows], self.padded_index_N[1:][follows]


def width_groups(fill_P: list[int], *, min_fill: float = 0.8) -> list[tuple[slice, int]]:
    """Consecutive packed rows (fullest first) grouped so that every row of a group fills at
    least ``min_fill`` of the group's width; returns ``(rows, width)`` per group."""
    groups: list[tuple[slice, int]] = []
    start = 0
    for p in range(1, len(fill_P) + 1):
        if p == len(fill_P) or fill_P[p] < min_fill * fill_P[start]:
            groups.append((slice(start, p), max(fill_P[start], 1)))
            start = p
    return groups


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices grouped into bins of at most ``capacity`` tokens, longest rows placed first.

    Raises:
        ValueError: a row is longer than ``capacity``.
    """
    if lengths and max(lengths) > capacity:
        raise ValueError(f"a row of {max(lengths)} tokens does not fit a packed row of {capacity}")
    bins: list[list[int]] = []
    room: list[int] = []
    for row in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[row] <= free:
                bins[b].append(row)
                room[b] -= lengths[row]
                break
        else:
            bins.append([row])
            room.append(capacity - lengths[row])
    return bins


def pack_rows(ids_BT: Tensor, attention_mask_BT: Tensor, *, pad_token_id: int,
              capacity: int | None = None) -> PackedRows:
    """Pack the real tokens of right-padded rows (see the module docstring).

    Args:
        ids_BT: [B, T] token ids.
        attention_mask_BT: [B, T] 1 on real tokens, which must come first in each row.
        pad_token_id: fills the unfilled tail of a packed row.
        capacity: tokens per packed row (default: the longest row). ``L`` is the longest bin.

    Raises:
        ValueError: a row is left-padded or has holes, or a row is longer than ``capacity``.
    """
    B, T = ids_BT.shape
    real_BT = attention_mask_BT.bool()
    lengths_B = real_BT.sum(-1)
    if not bool((real_BT == (torch.arange(T, device=real_BT.device) < lengths_B[:, None])).all()):
        raise ValueError("packing needs right-padded rows: real tokens first, then padding only")
    lengths = lengths_B.tolist()
    bins = first_fit_decreasing(lengths, capacity or max(max(lengths), 1))
    bins.sort(key=lambda rows: -sum(lengths[r] for r in rows))
    fill_P = [sum(lengths[r] for r in rows) for rows in bins]
    width = max(fill_P[0], 1)
    ids_PL = torch.full((len(bins), width), pad_token_id, dtype=ids_BT.dtype)
    pos_PL = torch.zeros((len(bins), width), dtype=torch.long)
    start_B = [0] * B
    packed_row_B = [0] * B
    for p, rows in enumerate(bins):
        offset = 0
        for row in rows:
            packed_row_B[row], start_B[row] = p, offset
            offset += lengths[row]
        pos_PL[p, offset:] = torch.arange(width - offset)
    t_N = torch.cat([torch.arange(n) for n in lengths]) if B else torch.zeros(0, dtype=torch.long)
    row_N = torch.repeat_interleave(torch.arange(B), lengths_B.cpu())
    packed_N = (torch.tensor(packed_row_B)[row_N] * width + torch.tensor(start_B)[row_N] + t_N)
    ids_PL.view(-1)[packed_N] = ids_BT.cpu().reshape(-1)[row_N * T + t_N]
    pos_PL.view(-1)[packed_N] = t_N
    device = ids_BT.device
    return PackedRows(ids_PL.to(device), pos_PL.to(device), packed_N.to(device), (row_N * T + t_N).to(device),
                      fill_P)
