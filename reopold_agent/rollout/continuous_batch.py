"""A decode batch that rows leave as soon as they stop and new rows join while it runs.

The plain decode loop keeps a batch together until its longest row stops: rows that stopped
early go on occupying the batch (decoding padding), and an episode whose tool result came back
meanwhile waits for the next batch. Here a stopped row leaves the batch at once (its cache rows
are dropped) and rows handed in while the batch runs (episodes back from their tools) join it:
their prompts are prefilled on their own, their first token sampled, and their cache rows
appended to the batch's, left-padded to a common length (padding is masked, so a row's logits
do not depend on the others). Each row samples with its own step counter, so its tokens are
those the plain loop gives it, up to the float rounding of batched kernels.

Works on ``DynamicCache`` layers of full attention (keys and values [B, H, L, D]); the caller
checks :func:`mergeable` and otherwise runs the plain loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from .backend import Generation, RefillRow, SamplingParams
from .sampling import row_keys, sample


REFILL_EVERY = 8
"""Decode steps between two requests for joining rows (and whenever the batch has emptied):
rows that came back within those steps are prefilled together, one forward instead of one each."""


@dataclass
class _Row:
    """One row's turn so far."""

    index: int
    """The caller's row index (the initial rows first, then rows that joined, in order)."""
    budget: int
    seed: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    stopped: bool = False

    def generation(self) -> Generation:
        return Generation(token_ids=self.tokens, logprobs=self.logprobs, entropy=self.entropy,
                          finish_reason="stop" if self.stopped else "length")


def mergeable(cache: Any) -> bool:
    """Whether ``cache``'s layers are plain full-attention ``DynamicLayer`` s (what this module
    can cut and join along the batch)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class ContinuousBatch:
    """Rows decoding together; see the module docstring.

    Args:
        prefill: ``prefill(prompts, ids_NL, attn_NL, pos_NL, cache)`` -> [N, V] last logits,
            filling the fresh ``cache`` (left-padded rows).
        step: ``step(ids_B1, attn_BL, pos_B1, cache)`` -> [B, V] logits of one decode step.
        new_cache: a fresh, empty cache.
        params: sampling settings.
        pad_token_id: id of the left padding.
        device: where the batch lives.
        on_row_done: told ``(index, generation)`` as soon as a row stops.
        refill: asked every :data:`REFILL_EVERY` decode steps for up to ``free`` more rows to join
            (:class:`~reopold_agent.rollout.backend.RefillRow`); None: no row joins.
        max_rows: rows the batch may hold at once.
    """

    def __init__(self, *, prefill: Callable[..., Tensor], step: Callable[..., Tensor], new_cache: Callable[[], Any],
                 params: SamplingParams, pad_token_id: int, device: torch.device,
                 on_row_done: Callable[[int, Generation], None], refill: Callable[[int], list[RefillRow]] | None,
                 max_rows: int) -> None:
        self._prefill, self._step, self._new_cache = prefill, step, new_cache
        self.params, self.pad_token_id, self.device = params, pad_token_id, device
        self.on_row_done, self.refill, self.max_rows = on_row_done, refill, max_rows
        self.stop_ids = set(params.stop_token_ids)
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.attn_BL = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.last_B = torch.zeros(0, dtype=torch.long, device=device)
        self.keys_B = torch.zeros(0, dtype=torch.long, device=device)
        """[B] the rows' sampling keys (:func:`~.sampling.row_keys`)."""
        self.done: dict[int, Generation] = {}
        self.admitted = 0
        """Rows admitted so far (the next one's index)."""

    def run(self, prompts: list[list[int]], budgets: list[int], seeds: list[int]) -> list[Generation]:
        """Decode ``prompts`` and every row that joins until all have stopped; the generations
        of all rows by index (the initial rows first)."""
        waiting = [RefillRow(p, n, s) for p, n, s in zip(prompts, budgets, seeds)]
        self._admit(waiting[:self.max_rows])
        waiting = waiting[self.max_rows:]
        steps = 0
        while self.rows or waiting:
            if not self.rows:  # every row stopped at its first token; the waiting ones start
                free = self.max_rows
                self._admit(waiting[:free])
                waiting = waiting[free:]
                continue
            attn_BL = torch.cat([self.attn_BL, torch.ones_like(self.attn_BL[:, :1])], dim=1)
            pos_B1 = self.attn_BL.sum(-1, keepdim=True)  # a row's real tokens so far: its next position
            logits_BV = self._step(self.last_B[:, None], attn_BL, pos_B1, self.cache)
            self.attn_BL = attn_BL
            keep, self.last_B = self._sample(self.rows, logits_BV, self.keys_B)
            self._keep(keep)
            steps += 1
            free = self.max_rows - len(self.rows)
            joining, waiting = waiting[:free], waiting[free:]
            asking = not self.rows or steps % REFILL_EVERY == 0
            if self.refill is not None and asking and not waiting and free > len(joining):
                joining += self.refill(free - len(joining))[:free - len(joining)]
            self._admit(joining)
        return [self.done[i] for i in sorted(self.done)]

    def _sample(self, rows: list[_Row], logits_BV: Tensor, keys_B: Tensor) -> tuple[list[int], Tensor]:
        """Sample each row's next token at its own step, record it, hand over the rows that
        stopped; (the positions of the rows that go on, [B] the sampled tokens)."""
        logits_BV = logits_BV.float()
        logp_BV = F.log_softmax(logits_BV, dim=-1)
        steps_B = torch.tensor([len(r.tokens) for r in rows], dtype=torch.long, device=self.device)
        next_B = sample(logits_BV, self.params, keys_B, steps_B)
        picked = torch.stack([next_B.to(logp_BV.dtype), logp_BV.gather(-1, next_B[:, None]).squeeze(-1),
                              -(logp_BV.exp() * logp_BV).sum(-1)])
        keep = []
        for b, (row, (token, logp, ent)) in enumerate(zip(rows, picked.T.tolist())):
            token = int(token)
            row.tokens.append(token)
            row.logprobs.append(logp)
            row.entropy.append(ent)
            row.stopped = token in self.stop_ids
            if row.stopped or len(row.tokens) >= row.budget:
                self.done[row.index] = row.generation()
                self.on_row_done(row.index, self.done[row.index])
            else:
                keep.append(b)
        return keep, next_B

    def _keep(self, keep: list[int]) -> None:
        """Drop the batch rows not in ``keep``, and the cache columns no remaining row uses."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[b] for b in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.last_B, self.attn_BL, self.keys_B = self.last_B[index], self.attn_BL[index], self.keys_B[index]
        if not keep:
            return
        lead = int(self.attn_BL.any(0).to(torch.int8).argmax())  # columns masked in every row
        self.attn_BL = self.attn_BL[:, lead:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, lead:], layer.values[index, :, lead:]

    def _admit(self, joining: list[RefillRow]) -> None:
        """Prefill ``joining`` together, sample their first tokens, and append the rows that go on
        to the batch."""
        if not joining:
            return
        for row in joining:
            if not row.prompt or row.max_new_tokens < 1:
                raise ValueError(f"a joining row needs a prompt and a budget >= 1, got {len(row.prompt)} tokens "
                                 f"and budget {row.max_new_tokens}")
        rows = [_Row(self.admitted + n, r.max_new_tokens, r.seed) for n, r in enumerate(joining)]
        self.admitted += len(joining)
        width = max(len(r.prompt) for r in joining)
        ids_NL = torch.full((len(joining), width), self.pad_token_id, dtype=torch.long, device=self.device)
        attn_NL = torch.zeros((len(joining), width), dtype=torch.long, device=self.device)
        for n, r in enumerate(joining):
            ids_NL[n, width - len(r.prompt):] = torch.tensor(r.prompt, dtype=torch.long)
            attn_NL[n, width - len(r.prompt):] = 1
        cache = self._new_cache()
        logits_NV = self._prefill([r.prompt for r in joining], ids_NL, attn_NL,
                                  (attn_NL.cumsum(-1) - 1).clamp(min=0), cache)
        keys_N = row_keys([r.seed for r in joining], self.device)
        keep, next_N = self._sample(rows, logits_NV, keys_N)
        if not keep:
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        new_last_N, attn_NL, keys_N = next_N[index], attn_NL[index], keys_N[index]
        if self.cache is None or not self.rows:
            self.cache, self.rows, self.attn_BL, self.last_B = cache, [rows[n] for n in keep], attn_NL, new_last_N
            self.keys_B = keys_N
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
            return
        old_L, new_L = self.attn_BL.shape[1], attn_NL.shape[1]
        length = max(old_L, new_L)
        self.attn_BL = torch.cat([F.pad(self.attn_BL, (length - old_L, 0)), F.pad(attn_NL, (length - new_L, 0))])
        for layer, joined in zip(self.cache.layers, cache.layers):
            pad_old, pad_new = (0, 0, length - old_L, 0), (0, 0, length - new_L, 0)  # left, on the L axis
            layer.keys = torch.cat([F.pad(layer.keys, pad_old), F.pad(joined.keys[index], pad_new)])
            layer.values = torch.cat([F.pad(layer.values, pad_old), F.pad(joined.values[index], pad_new)])
        self.rows += [rows[n] for n in keep]
        self.last_B, self.keys_B = torch.cat([self.last_B, new_last_N]), torch.cat([self.keys_B, keys_N])
