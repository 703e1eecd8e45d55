"""Scoring sequences that share a prefix, with the prefix computed once.

The G rollouts of one prompt start with the same tokens (system prompt, tool schemas, question),
often most of each sequence. Scoring them one by one runs the model over that prefix G times.
Here each group of rows with the same prefix runs it once: the backbone encodes the prefix with
its key/value cache, the cache is repeated for the G rows, and the continuations are encoded
against it, right-padded in one batch. Log-probs of the prefix tokens are projected once and
shared. The result equals :func:`~reopold_agent.sequence_scoring.sequence_logprobs` on each
whole row (causal attention: a prefix token never sees what follows it), up to float rounding.

Rows are grouped by their tokens before the first scored position (the first 1 of the loss
mask): the prompt, for the trajectories the engine records. Text models only: a row with pixel
inputs is scored the usual way by the caller.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .batching import pad_right
from .model_parts import backbone_and_head
from .token_stats import hidden_logprobs_and_entropy


@dataclass
class PrefixGroup:
    """Rows that share their first ``prefix_len`` tokens."""

    prefix_len: int
    rows: list[int]
    """Indices of the rows in the caller's list, in order."""


def prefix_groups(token_ids: list[list[int]], first_scored: list[int], *, min_rows: int = 2) -> tuple[
        list[PrefixGroup], list[int]]:
    """Group rows by their tokens before ``first_scored`` (per row, >= 1).

    Returns:
        (groups of at least ``min_rows`` rows with the same prefix, the other rows' indices).
    """
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for index, (ids, first) in enumerate(zip(token_ids, first_scored)):
        if not 1 <= first < len(ids):
            raise ValueError(f"row {index}: first scored position {first} outside [1, {len(ids)})")
        by_prefix.setdefault(tuple(ids[:first]), []).append(index)
    groups, singles = [], []
    for prefix, rows in by_prefix.items():
        if len(rows) >= min_rows:
            groups.append(PrefixGroup(len(prefix), rows))
        else:
            singles += rows
    return groups, singles


def group_logprobs(model: Any, token_ids: list[list[int]], prefix_len: int, *, pad_token_id: int,
                   with_entropy: bool = False, chunk_rows: int = 1024) -> list[tuple[Tensor, Tensor | None]]:
    """Per row ([T] log-probs, [T] entropies or None) of G rows that share ``prefix_len`` tokens.

    Position t holds ``log p(ids[t] | ids[:t])`` (float32; position 0 holds 0), as
    :func:`~reopold_agent.sequence_scoring.sequence_logprobs` does; the entropy at t is that of
    the distribution that predicted token t. Called with gradients enabled, the log-probs are
    differentiable: the prefix's activations, computed once, receive the sum of the G rows'
    gradients, so the parameters' gradient equals that of scoring each whole row.
    """
    P = prefix_len
    if not token_ids or any(len(ids) <= P or ids[:P] != token_ids[0][:P] for ids in token_ids):
        raise ValueError(f"every row must start with the same {P} tokens and continue after them")
    backbone, head = backbone_and_head(model)
    device = head.weight.device
    G = len(token_ids)
    prefix_1P = torch.tensor([token_ids[0][:P]], device=device)
    encoded = backbone(input_ids=prefix_1P, use_cache=True)
    # transformers >= 5.24 names the cache ``cache``; earlier versions (vLLM's pin) ``past_key_values``
    cache_name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    cache, hidden_1PH = getattr(encoded, cache_name), encoded.last_hidden_state
    cache.batch_repeat_interleave(G)
    cont_GL, cont_mask_GL = pad_right([ids[P:] for ids in token_ids], pad_token_id)
    cont_GL, cont_mask_GL = cont_GL.to(device), cont_mask_GL.to(device)
    mask_G = torch.cat([torch.ones(G, P, dtype=cont_mask_GL.dtype, device=device), cont_mask_GL], dim=1)
    hidden_GLH = backbone(input_ids=cont_GL, attention_mask=mask_G, **{cache_name: cache},
                          use_cache=True).last_hidden_state

    def project(hidden_BTH: Tensor, targets_BT: Tensor) -> tuple[Tensor, Tensor | None]:
        logp, ent = hidden_logprobs_and_entropy(hidden_BTH, head.weight, targets_BT,
                                                lm_head_bias=getattr(head, "bias", None),
                                                chunk_rows=chunk_rows, with_entropy=with_entropy)
        return logp.float(), (ent.float() if ent is not None else None)

    # the prefix's own tokens 1..P-1, once; then each row's tokens P.., predicted by the last
    # prefix position and the continuation's positions before them
    prefix_logp, prefix_ent = project(hidden_1PH[:, :-1], prefix_1P[:, 1:])
    predictors_GLH = torch.cat([hidden_1PH[:, -1:].expand(G, 1, -1), hidden_GLH[:, :-1]], dim=1)
    cont_logp, cont_ent = project(predictors_GLH, cont_GL)
    zero = torch.zeros(1, device=device)
    out = []
    for g, ids in enumerate(token_ids):
        n = len(ids) - P
        logp_T = torch.cat([zero, prefix_logp[0], cont_logp[g, :n]])
        ent_T = torch.cat([zero, prefix_ent[0], cont_ent[g, :n]]) if with_entropy else None
        out.append((logp_T, ent_T))
    return out


def first_scored_positions(valid_BT: Tensor) -> Tensor:
    """[B] index of each row's first scored token (its first True in ``valid_BT``; 0 for a row
    with none, which is then scored whole)."""
    return torch.where(valid_BT.any(-1), valid_BT.to(torch.int8).argmax(-1), torch.zeros_like(valid_BT[:, 0],
                                                                                               dtype=torch.long))


def prefix_order(input_ids_BT: Tensor, first_scored_B: Tensor) -> Tensor:
    """[B] row order that puts rows with the same prefix next to each other (stable), so that
    consecutive micro-batches hold whole groups where they can."""
    firsts = first_scored_B.tolist()
    keys = [tuple(input_ids_BT[b, :firsts[b]].tolist()) if firsts[b] >= 1 else (b,) for b in range(len(firsts))]
    first_seen: dict[tuple, int] = {}
    for b, key in enumerate(keys):
        first_seen.setdefault(key, b)
    return torch.tensor(sorted(range(len(keys)), key=lambda b: (first_seen[keys[b]], b)), dtype=torch.long)
