"""Per-token log-probs (and entropy) of whole sequences under a causal LM, vocabulary-chunked.

The model's backbone runs once; its hidden states are projected onto the vocabulary a chunk of
rows at a time by :mod:`reopold_agent.token_stats`, so no ``[B, T, V]`` fp32 tensor exists.
Outputs are aligned with the input tokens: position ``t`` holds ``log p(token_t | tokens_<t)``;
position 0 has no prefix and holds 0 (callers mask it).

With ``packed=True`` the rows' real tokens run through the backbone packed into fewer, fuller rows
(:mod:`reopold_agent.sequence_packing`), and only real tokens are projected onto the vocabulary:
the same log-probs up to float rounding, with no compute spent on padding. Rows that packing
would barely shorten (rows of similar lengths, as the teacher's length-sorted batches) run padded:
the index maps and the packed attention mask would cost more than the padding they save. Inputs
with images (``extra_inputs``: pixel values and 3D positions of a vision-language model) always
run padded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .model_parts import backbone_and_head
from .sequence_packing import PackedRows, pack_rows, width_groups
from .shared_prefix import groups_logprobs, scoring_groups
from .token_stats import hidden_logprobs_and_entropy
from .vision.distinct_images import encode_images_once

PACKED_SLOTS_AT_MOST = 0.9
"""``packed`` scoring packs only when the packed rows hold at most this share of the padded
rows' token slots."""


def sequence_logprobs(
    model: Any,
    input_ids_BT: Tensor,
    attention_mask_BT: Tensor,
    *,
    with_entropy: bool = False,
    chunk_rows: int = 1024,
    extra_inputs: dict[str, Any] | None = None,
    packed: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of every token given its prefix, and optionally the next-token entropy.

    Args:
        model: causal LM; gradients flow if called outside ``torch.no_grad``.
        input_ids_BT: [B, T] token ids (right padding allowed).
        attention_mask_BT: [B, T] 1 on real tokens.
        with_entropy: also return the full-vocabulary entropy (detached) at each position.
        chunk_rows: rows of the ``[B*T, V]`` projection computed at once.
        extra_inputs: further backbone inputs (e.g. ``pixel_values``, ``image_grid_thw``).
        packed: run the real tokens packed where that saves compute (right-padded rows only;
            ignored with ``extra_inputs``).

    Returns:
        logp_BT: [B, T] float32, ``logp_BT[:, t] = log p(ids[:, t] | ids[:, :t])``; column 0 is 0,
            and so is every padding position when ``packed``.
        entropy_BT: [B, T] float32 entropy of the distribution that predicted token t, or None.
    """
    backbone, head = backbone_and_head(model)
    if packed and not extra_inputs:
        one_row = "flash" in str(getattr(model.config, "_attn_implementation", ""))
        layout = pack_rows(input_ids_BT, attention_mask_BT, pad_token_id=0,
                           capacity=int(attention_mask_BT.sum()) if one_row else None)
        groups = width_groups(layout.fill_P)
        slots = sum((rows.stop - rows.start) * width for rows, width in groups)
        if slots <= PACKED_SLOTS_AT_MOST * input_ids_BT.numel():
            return _packed_logprobs(backbone, head, input_ids_BT, layout, groups, with_entropy=with_entropy,
                                    chunk_rows=chunk_rows)
    extra_inputs = encode_images_once(backbone, extra_inputs)  # a group's shared images encoded once
    hidden_BTH = backbone(
        input_ids=input_ids_BT, attention_mask=attention_mask_BT, use_cache=False, **(extra_inputs or {})
    ).last_hidden_state
    logp, ent = hidden_logprobs_and_entropy(
        hidden_BTH[:, :-1],
        head.weight,
        input_ids_BT[:, 1:],
        lm_head_bias=getattr(head, "bias", None),
        chunk_rows=chunk_rows,
        with_entropy=with_entropy,
    )
    zeros = torch.zeros_like(logp[:, :1])
    logp_BT = torch.cat([zeros, logp.float()], dim=1)
    ent_BT = torch.cat([zeros, ent.float()], dim=1) if ent is not None else None
    if packed:  # padding holds 0, as when the rows run packed
        logp_BT = logp_BT * attention_mask_BT
        ent_BT = ent_BT * attention_mask_BT if ent_BT is not None else None
    return logp_BT, ent_BT


def _packed_logprobs(backbone: Any, head: Any, input_ids_BT: Tensor, packed: PackedRows,
                     groups: list[tuple[slice, int]], *, with_entropy: bool,
                     chunk_rows: int) -> tuple[Tensor, Tensor | None]:
    """:func:`sequence_logprobs` over the packed real tokens, scattered back to ``[B, T]``.

    Flash-attention kernels take packed sequences in one row (variable-length attention over
    it). Other implementations attend within a row through a dense mask, whose cost grows with
    the square of the width: their packed rows are only as wide as the longest sequence, and run
    in ``groups`` of similar fill (:func:`~reopold_agent.sequence_packing.width_groups`).
    """
    B, T = input_ids_BT.shape
    P, L = packed.ids_PL.shape
    hidden_parts = []
    for rows, width in groups:
        hidden = backbone(input_ids=packed.ids_PL[rows, :width], position_ids=packed.position_ids_PL[rows, :width],
                          attention_mask=None, use_cache=False).last_hidden_state
        hidden_parts.append(F.pad(hidden, (0, 0, 0, L - width)))
    hidden_PLH = torch.cat(hidden_parts) if len(hidden_parts) > 1 else hidden_parts[0]
    packed_from_M, padded_to_M = packed.prediction_pairs()
    hidden_1MH = hidden_PLH.reshape(P * L, -1)[packed_from_M][None]
    logp_1M, ent_1M = hidden_logprobs_and_entropy(
        hidden_1MH, head.weight, input_ids_BT.reshape(-1)[padded_to_M][None],
        lm_head_bias=getattr(head, "bias", None), chunk_rows=chunk_rows, with_entropy=with_entropy,
    )
    zeros = torch.zeros(B * T, dtype=torch.float32, device=input_ids_BT.device)
    logp_BT = zeros.index_put((padded_to_M,), logp_1M[0].float()).view(B, T)
    ent_BT = zeros.index_put((padded_to_M,), ent_1M[0].float()).view(B, T) if ent_1M is not None else None
    return logp_BT, ent_BT


def shared_prefix_logprobs(model: Any, input_ids_BT: Tensor, attention_mask_BT: Tensor, first_scored_B: Tensor, *,
                   with_entropy: bool = False, chunk_rows: int = 1024,
                   packed: bool = False) -> tuple[Tensor, Tensor | None]:
    """:func:`~reopold_agent.sequence_scoring.sequence_logprobs` of a right-padded batch, with
    the rows that share their tokens before ``first_scored_B`` scored by :func:`groups_logprobs`
    (each prefix once; when any prefix is shared, the other rows with a scored position join as
    groups of one) and the rest as usual (``packed`` or padded). Same [B, T] outputs, with
    gradients when they are enabled."""
    B, T = input_ids_BT.shape
    lengths = attention_mask_BT.sum(-1).tolist()
    firsts = first_scored_B.tolist()
    ids = [input_ids_BT[b, :n].tolist() for b, n in enumerate(lengths)]
    usable = [b for b in range(B) if 1 <= firsts[b] < lengths[b]]
    groups, prefix_lens = scoring_groups([ids[b] for b in usable], [firsts[b] for b in usable])
    logp_rows: list[Tensor | None] = [None] * B
    ent_rows: list[Tensor | None] = [None] * B
    if groups:
        members = [[usable[j] for j in rows] for rows in groups]
        scored = groups_logprobs(model, [[ids[b] for b in rows] for rows in members], prefix_lens,
                                 pad_token_id=0, with_entropy=with_entropy, chunk_rows=chunk_rows)
        for b, (logp_T, ent_T) in zip([b for rows in members for b in rows], scored):
            logp_rows[b], ent_rows[b] = logp_T, ent_T
    rest = [b for b in range(B) if logp_rows[b] is None]
    if rest:
        picked = torch.tensor(rest, device=input_ids_BT.device)
        logp_RT, ent_RT = sequence_logprobs(model, input_ids_BT[picked], attention_mask_BT[picked],
                                            with_entropy=with_entropy, chunk_rows=chunk_rows, packed=packed)
        for r, b in enumerate(rest):
            logp_rows[b] = logp_RT[r]
            ent_rows[b] = ent_RT[r] if ent_RT is not None else None

    def stack(rows: list) -> Tensor:
        return torch.stack([torch.nn.functional.pad(row, (0, T - row.shape[0])) for row in rows])

    return stack(logp_rows), (stack(ent_rows) if with_entropy else None)


class SequenceScorer(torch.nn.Module):
    """A causal LM whose ``forward`` is :func:`sequence_logprobs`: the module an engine wraps.

    DDP synchronises gradients and FSDP gathers shards from hooks on the wrapped module's
    ``forward``; the chunked scoring calls the backbone and the head's weight directly, so it
    must run inside that forward. ``accelerator.prepare(SequenceScorer(student))`` gives the
    wrapped scorer; the student's own parameters are the scorer's (``scorer.model``).
    """

    def __init__(self, model: Any, *, packed: bool = False, shared_prefix: bool = False) -> None:
        super().__init__()
        backbone_and_head(model)  # refuse unsupported models before any engine wraps them
        self.model = model
        self.packed = packed
        """Score the rows' real tokens packed (``sequence_logprobs(packed=True)``)."""
        self.shared_prefix = shared_prefix
        """Given each row's first scored position, score rows that share the tokens before it
        with that prefix encoded once (:func:`shared_prefix_logprobs`)."""
        # FSDP's automatic wrapping policy reads the layer classes from the wrapped module
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    def forward(self, input_ids_BT: Tensor, attention_mask_BT: Tensor, *, with_entropy: bool = False,
                chunk_rows: int = 1024, extra_inputs: dict[str, Any] | None = None,
                first_scored_B: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """:func:`sequence_logprobs` of ``self.model`` (same arguments and returns), packed if
        ``self.packed``; with ``self.shared_prefix`` and ``first_scored_B`` ([B] each row's first
        scored position) for a text batch, rows sharing their prefix score it once."""
        if self.shared_prefix and first_scored_B is not None and extra_inputs is None:
            return shared_prefix_logprobs(self.model, input_ids_BT, attention_mask_BT, first_scored_B,
                                  with_entropy=with_entropy, chunk_rows=chunk_rows, packed=self.packed)
        return sequence_logprobs(self.model, input_ids_BT, attention_mask_BT, with_entropy=with_entropy,
                                 chunk_rows=chunk_rows, extra_inputs=extra_inputs, packed=self.packed)


def as_scorer(model: Any) -> Any:
    """``model`` itself when it is a :class:`SequenceScorer` (bare or wrapped by an engine, whose
    ``module`` is one), else a new scorer around the causal LM ``model``."""
    if isinstance(model, SequenceScorer) or isinstance(getattr(model, "module", None), SequenceScorer):
        return model
    return SequenceScorer(model)
