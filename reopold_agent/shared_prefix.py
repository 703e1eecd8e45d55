"""Scoring sequences that share a prefix, with the prefix computed once.

The G rollouts of one prompt start with the same tokens (system prompt, tool schemas, question),
often most of each sequence. Scoring them one by one runs the model over that prefix G times.
Here each group of rows with the same prefix runs it once: the backbone encodes the groups'
prefixes, left-padded in one batch, with their key/value cache; each row gets a copy of its
group's cache rows, and all rows' continuations are encoded against them, right-padded in
buckets of similar length (one forward for all prefixes and one per bucket, for any number of
groups). Log-probs of the prefix tokens are projected
once and shared. The result equals
:func:`~reopold_agent.sequence_scoring.sequence_logprobs` on each whole row (causal attention:
a prefix token never sees what follows it), up to float rounding.

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
from .sequence_packing import width_groups
from .token_stats import hidden_logprobs_and_entropy

CONTINUATION_MIN_FILL = 0.5
"""Continuations run in buckets whose rows each fill at least this share of the bucket's width:
a forward per bucket against the padding it saves (rollouts of a step differ by several times in
length; with equal lengths there is one bucket)."""


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


def scoring_groups(token_ids: list[list[int]], first_scored: list[int]) -> tuple[list[list[int]], list[int]]:
    """Rows grouped for :func:`groups_logprobs`: (each group's row indices, its prefix length)
    when at least two rows share a prefix, with the rows that share it with none as groups of
    one (they run in the same forwards); ``([], [])`` when no prefix is shared."""
    groups, singles = prefix_groups(token_ids, first_scored)
    if not groups:
        return [], []
    return ([g.rows for g in groups] + [[j] for j in singles],
            [g.prefix_len for g in groups] + [first_scored[j] for j in singles])


def group_logprobs(model: Any, token_ids: list[list[int]], prefix_len: int, *, pad_token_id: int,
                   with_entropy: bool = False, chunk_rows: int = 1024) -> list[tuple[Tensor, Tensor | None]]:
    """Per row ([T] log-probs, [T] entropies or None) of G rows that share ``prefix_len`` tokens:
    :func:`groups_logprobs` of that one group."""
    return groups_logprobs(model, [token_ids], [prefix_len], pad_token_id=pad_token_id, with_entropy=with_entropy,
                           chunk_rows=chunk_rows)


def groups_logprobs(model: Any, groups: list[list[list[int]]], prefix_lens: list[int], *, pad_token_id: int,
                    with_entropy: bool = False, chunk_rows: int = 1024) -> list[tuple[Tensor, Tensor | None]]:
    """Per row, groups in order, ([T] log-probs, [T] entropies or None) of K groups of rows,
    the rows of group k sharing their first ``prefix_lens[k]`` tokens.

    The K prefixes run as one left-padded batch [K, P_max] with its key/value cache. The G rows'
    continuations run in buckets of similar length (:func:`continuation_buckets`), each bucket
    [N, L] right-padded as one batch against copies of its rows' prefix cache rows, each row at
    the positions after its own prefix. Position t holds
    ``log p(ids[t] | ids[:t])`` (float32; position 0 holds 0), as
    :func:`~reopold_agent.sequence_scoring.sequence_logprobs` does; the entropy at t is that of
    the distribution that predicted token t. Only real positions are projected onto the
    vocabulary. Called with gradients enabled, the log-probs are differentiable: a prefix's
    activations, computed once, receive the sum of its rows' gradients, so the parameters'
    gradient equals that of scoring each whole row.

    Raises:
        ValueError: a group's rows do not all start with its prefix, or one ends there.
    """
    for rows, P in zip(groups, prefix_lens, strict=True):
        if not rows or P < 1 or any(len(ids) <= P or ids[:P] != rows[0][:P] for ids in rows):
            raise ValueError(f"every row must start with the same {P} tokens and continue after them")
    backbone, head = backbone_and_head(model)
    device = head.weight.device
    K, P_max = len(groups), max(prefix_lens)
    prefix_KP = torch.full((K, P_max), pad_token_id, dtype=torch.long)
    prefix_mask_KP = torch.zeros(K, P_max, dtype=torch.long)
    for k, (rows, P) in enumerate(zip(groups, prefix_lens)):
        prefix_KP[k, P_max - P:] = torch.tensor(rows[0][:P])
        prefix_mask_KP[k, P_max - P:] = 1
    prefix_KP, prefix_mask_KP = prefix_KP.to(device), prefix_mask_KP.to(device)
    encoded = backbone(input_ids=prefix_KP, attention_mask=prefix_mask_KP,
                       position_ids=(prefix_mask_KP.cumsum(-1) - 1).clamp(min=0), use_cache=True)
    # transformers >= 5.24 names the cache ``cache``; earlier versions (vLLM's pin) ``past_key_values``
    cache_name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
    cache, hidden_KPH = getattr(encoded, cache_name), encoded.last_hidden_state

    group_of = [k for k, rows in enumerate(groups) for _ in rows]
    rows_G = [ids for rows in groups for ids in rows]
    conts_G = [ids[prefix_lens[k]:] for ids, k in zip(rows_G, group_of)]
    prefix_layers = [(layer.keys, layer.values) for layer in cache.layers]
    hidden_G: list[Tensor] = [hidden_KPH] * len(rows_G)  # each row's continuation states, filled below
    for bucket in continuation_buckets([len(c) for c in conts_G]):
        for layer, (keys, values) in zip(cache.layers, prefix_layers):
            layer.keys, layer.values = keys, values  # the prefixes' cache, before the last bucket extended it
        group_N = torch.tensor([group_of[g] for g in bucket], device=device)
        cache.batch_select_indices(group_N)  # each row's cache rows, copied from its group's prefix
        cont_NL, cont_mask_NL = pad_right([conts_G[g] for g in bucket], pad_token_id)
        cont_NL, cont_mask_NL = cont_NL.to(device), cont_mask_NL.to(device)
        P_N = torch.tensor([prefix_lens[group_of[g]] for g in bucket], device=device)
        hidden_NLH = backbone(input_ids=cont_NL,
                              attention_mask=torch.cat([prefix_mask_KP[group_N], cont_mask_NL], dim=1),
                              position_ids=P_N[:, None] + torch.arange(cont_NL.shape[1], device=device),
                              **{cache_name: cache}, use_cache=True).last_hidden_state
        for n, g in enumerate(bucket):
            hidden_G[g] = hidden_NLH[n, :len(conts_G[g])]

    def project(hidden_NH: Tensor, targets_N: Tensor) -> tuple[Tensor, Tensor | None]:
        logp, ent = hidden_logprobs_and_entropy(hidden_NH[None], head.weight, targets_N[None],
                                                lm_head_bias=getattr(head, "bias", None),
                                                chunk_rows=chunk_rows, with_entropy=with_entropy)
        return logp[0].float(), (ent[0].float() if ent is not None else None)

    # each prefix's tokens 1..P-1, predicted by its real positions before them, once per group
    real_KP = prefix_mask_KP.bool()
    real_KP[torch.arange(K, device=device), P_max - torch.tensor(prefix_lens, device=device)] = False
    prefix_logp, prefix_ent = project(hidden_KPH[:, :-1][real_KP[:, 1:]], prefix_KP[real_KP])
    # each row's own tokens, predicted by its prefix's last position and its continuation before them
    predictors_NH = torch.cat([torch.cat([hidden_KPH[k, -1:], hidden_G[g][:-1]]) for g, k in enumerate(group_of)])
    cont_logp, cont_ent = project(predictors_NH, torch.tensor([t for c in conts_G for t in c], device=device))
    prefix_at = [0] + torch.tensor(prefix_lens).sub(1).cumsum(0).tolist()
    cont_at = [0] + torch.tensor([len(c) for c in conts_G]).cumsum(0).tolist()
    zero = torch.zeros(1, device=device)
    out = []
    for g, k in enumerate(group_of):
        logp_T = torch.cat([zero, prefix_logp[prefix_at[k]:prefix_at[k + 1]], cont_logp[cont_at[g]:cont_at[g + 1]]])
        ent_T = None
        if with_entropy:
            ent_T = torch.cat([zero, prefix_ent[prefix_at[k]:prefix_at[k + 1]], cont_ent[cont_at[g]:cont_at[g + 1]]])
        out.append((logp_T, ent_T))
    return out


def continuation_buckets(lengths: list[int], *, min_fill: float = CONTINUATION_MIN_FILL) -> list[list[int]]:
    """Row indices in buckets of similar continuation length, longest first: each bucket runs as
    one right-padded forward, and every row fills at least ``min_fill`` of its bucket's width
    (:func:`~reopold_agent.sequence_packing.width_groups`)."""
    order = sorted(range(len(lengths)), key=lambda g: -lengths[g])
    return [order[rows] for rows, _ in width_groups([lengths[g] for g in order], min_fill=min_fill)]


def first_scored_positions(valid_BT: Tensor) -> Tensor:
    """[B] index of each row's first scored token (its first True in ``valid_BT``; 0 for a row
    with none, which is then scored whole)."""
    return torch.where(valid_BT.any(-1), valid_BT.to(torch.int8).argmax(-1), torch.zeros_like(valid_BT[:, 0],
                                                                                               dtype=torch.long))


def rows_by_prefix(input_ids_BT: Tensor, first_scored_B: Tensor) -> list[list[int]]:
    """The rows of a batch grouped by their prefix (the tokens before their first scored one),
    groups in order of first appearance, rows in order within each; a row with no prefix is a
    group of its own."""
    firsts = first_scored_B.tolist()
    groups: dict[tuple, list[int]] = {}
    for b, first in enumerate(firsts):
        key = tuple(input_ids_BT[b, :first].tolist()) if first >= 1 else (b,)
        groups.setdefault(key, []).append(b)
    return list(groups.values())


def prefix_order(input_ids_BT: Tensor, first_scored_B: Tensor) -> Tensor:
    """[B] row order that puts rows with the same prefix next to each other (stable), so that
    consecutive micro-batches hold whole groups where they can."""
    return torch.tensor([b for rows in rows_by_prefix(input_ids_BT, first_scored_B) for b in rows], dtype=torch.long)
