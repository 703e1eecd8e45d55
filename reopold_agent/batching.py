"""Trajectories in, padded training tensors out (pure transformation, no models).

Every row keeps the index of the trajectory it came from (``traj_index_B``), so a training
number can always be traced back to the episode and token that produced it. ``valid_BT`` is the
trajectory's loss mask restricted to real tokens past position 0: prompt, tool, image and
padding tokens are never valid, whatever ids they hold (a pad id equal to eos does not matter).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from .objectives import group_advantages as objective_group_advantages
from .trajectory import Trajectory


@dataclass
class TrainBatch:
    """B trajectories right-padded to T tokens."""

    input_ids_BT: Tensor
    """[B, T] long token ids; padding holds ``pad_token_id``."""
    attention_mask_BT: Tensor
    """[B, T] long, 1 on real tokens."""
    valid_BT: Tensor
    """[B, T] bool, True exactly on model-generated tokens (loss mask 1)."""
    old_logprobs_BT: Tensor
    """[B, T] float32 behaviour log-probs; 0 where not valid."""
    teacher_logprobs_BT: Tensor
    """[B, T] float32 teacher log-probs; 0 where not valid."""
    behaviour_entropy_BT: Tensor
    """[B, T] float32 student entropy recorded at sampling time; 0 where not valid."""
    rewards_B: Tensor
    """[B] float32 outcome rewards."""
    advantages_B: Tensor
    """[B] float32 group-normalised outcome advantages (GRPO)."""
    traj_index_B: Tensor
    """[B] long index of each row's trajectory in the list given to :func:`collate`."""
    pixel_inputs: list[Any] | None = None
    """[B] each row's :class:`~reopold_agent.vision.VisionInputs` (None for a row without
    images), or None for a text batch. Stays on the CPU; the model's forward inputs are built
    per micro-batch."""
    token_weights_BT: Tensor | None = None
    """[B, T] float32 weights of each token's loss term (truncated importance sampling against
    the sampler's mismatch, :mod:`reopold_agent.behaviour`), or None for 1."""
    current_entropy_BT: Tensor | None = None
    """[B, T] float32 entropy of the policy being trained, computed before a mini-batch's first
    update when ``objective.entropy_source`` is ``current``; None otherwise."""

    @property
    def objective_entropy_BT(self) -> Tensor:
        """[B, T] the entropy the objective selects with: the current policy's when computed,
        else the behaviour entropy."""
        return self.behaviour_entropy_BT if self.current_entropy_BT is None else self.current_entropy_BT

    @property
    def num_rows(self) -> int:
        return self.input_ids_BT.shape[0]

    def select(self, rows: Tensor | list[int]) -> "TrainBatch":
        """Sub-batch of the given rows, trimmed to the longest real sequence among them."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask_BT[rows].sum(-1).max())
        out = {}
        for f in _tensor_fields():
            value = getattr(self, f.name)
            if value is not None:
                value = value[rows]
                value = value[:, :width] if f.name.endswith("_BT") else value
            out[f.name] = value
        pixels = None if self.pixel_inputs is None else [self.pixel_inputs[i] for i in rows.tolist()]
        return TrainBatch(**out, pixel_inputs=pixels)

    def to(self, device: torch.device | str) -> "TrainBatch":
        return TrainBatch(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                             for f in _tensor_fields()}, pixel_inputs=self.pixel_inputs)


def _tensor_fields():
    return [f for f in fields(TrainBatch) if f.name != "pixel_inputs"]


def pad_right(sequences: list[list[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad ragged id lists: returns ids_BT (long, padded with ``pad_token_id``) and
    attention_BT (long, 1 on real tokens), T = the longest sequence."""
    B, T = len(sequences), max(len(seq) for seq in sequences)
    ids_BT = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention_BT = torch.zeros((B, T), dtype=torch.long)
    for b, seq in enumerate(sequences):
        ids_BT[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_BT[b, :len(seq)] = 1
    return ids_BT, attention_BT


def collate(trajectories: list[Trajectory], *, pad_token_id: int, require_teacher: bool = True) -> TrainBatch:
    """Stack trajectories into a :class:`TrainBatch`.

    Raises:
        ValueError: a trajectory's loss mask covers a non-model token, or (with
            ``require_teacher``) a valid token has no finite teacher or behaviour log-prob.
    """
    if not trajectories:
        raise ValueError("cannot collate an empty list of trajectories")
    ids, attn = pad_right([t.token_ids for t in trajectories], pad_token_id)
    B, T = ids.shape
    valid = torch.zeros((B, T), dtype=torch.bool)
    old, teacher, ent = (torch.zeros((B, T)) for _ in range(3))
    for b, traj in enumerate(trajectories):
        traj.check_masks()
        n = traj.num_tokens
        valid[b, 1:n] = torch.tensor(traj.loss_mask[1:], dtype=torch.bool)
        positions = valid[b].nonzero().flatten().tolist()
        old[b, positions] = _values(traj.logprobs, positions, "logprobs", b)
        if traj.entropy is not None:
            ent[b, positions] = _values(traj.entropy, positions, "entropy", b, allow_missing=True)
        if require_teacher:
            if traj.teacher_logprobs is None:
                raise ValueError(f"trajectory {b} ({traj.prompt_id}) has no teacher scores")
            teacher[b, positions] = _values(traj.teacher_logprobs, positions, "teacher_logprobs", b)
    rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32)
    pixels = None
    if any(t.images for t in trajectories):
        for traj in trajectories:
            traj.check_pixel_inputs()
        pixels = [t.pixel_inputs for t in trajectories]
    return TrainBatch(ids, attn, valid, old, teacher, ent, rewards,
                      group_advantages(trajectories), torch.arange(B), pixels)


def group_advantages(trajectories: list[Trajectory]) -> Tensor:
    """[B] group-normalised outcome advantages, groups keyed by (step, prompt_id).

    Uses :func:`reopold_agent.objectives.group_advantages` per group; a prompt with a single
    rollout gets advantage 0.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, traj in enumerate(trajectories):
        groups[(traj.step, traj.prompt_id)].append(i)
    adv = torch.zeros(len(trajectories))
    for rows in groups.values():
        if len(rows) > 1:
            rewards_1G = torch.tensor([[trajectories[i].reward for i in rows]], dtype=torch.float32)
            adv[rows] = objective_group_advantages(rewards_1G)[0]
    return adv


def _values(seq, positions, name, row, allow_missing=False) -> Tensor:
    out = []
    for t in positions:
        v = seq[t]
        if v is None or not math.isfinite(v):
            if allow_missing and v is None:
                v = 0.0
            else:
                raise ValueError(f"trajectory {row}: {name}[{t}] is {v!r} on a model token")
        out.append(v)
    return torch.tensor(out, dtype=torch.float32)
