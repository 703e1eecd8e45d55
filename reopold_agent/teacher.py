"""The ``hf`` teacher backend: the frozen teacher's log-probs on exactly the student's tokens.

A transformers model in the trainer's process, scoring through backbone and chunked head
(:mod:`reopold_agent.sequence_scoring`); the interface and the checks shared with the ``vllm``
and ``server`` backends are in :mod:`reopold_agent.teacher_scoring`.

The teacher reads the very token ids the student produced, in the identical context (prompt,
tool outputs and images included), never a re-tokenisation of the decoded text. Checks that run
every time, because peers have shipped each of these bugs:

* teacher and student must share one vocabulary (same token-to-id mapping), else a clear error
  before any scoring (not a broadcast error deep inside the loss);
* every student token id must exist in the teacher's embedding table;
* the scored sequence has exactly the trajectory's length, and only loss-mask tokens count;
* a vision-language teacher gets the very pixel inputs the student generated from (the
  trajectory's in-memory ``pixel_inputs``), with the same placeholder tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from .batching import pad_right
from .sequence_scoring import sequence_logprobs
from .shared_prefix import groups_logprobs, scoring_groups
from .teacher_scoring import ScoringRow, TeacherBackend, TeacherIdMismatch


class VocabularyMismatch(ValueError):
    """Teacher and student tokenizers map tokens to ids differently."""


def check_vocabularies(student_tokenizer: Any, teacher_tokenizer: Any | None, teacher_model: Any,
                       student_model: Any | None = None) -> None:
    """Raise :class:`VocabularyMismatch` unless the teacher can score the student's ids."""
    if teacher_tokenizer is not None:
        check_tokenizers(student_tokenizer, teacher_tokenizer)
    n_tokens = len(student_tokenizer)
    t_rows = teacher_model.get_input_embeddings().num_embeddings
    if n_tokens > t_rows:
        raise VocabularyMismatch(
            f"student tokenizer has {n_tokens} tokens but the teacher's embedding has only {t_rows} rows"
        )
    if student_model is not None:
        s_rows = student_model.get_input_embeddings().num_embeddings
        if n_tokens > s_rows:
            raise VocabularyMismatch(f"tokenizer has {n_tokens} tokens but the student's embedding has {s_rows}")


def check_tokenizers(student_tokenizer: Any, teacher_tokenizer: Any) -> None:
    """Raise :class:`VocabularyMismatch` unless both tokenizers map the same tokens to the same ids."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab != t_vocab:
        diff = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))[:3]
        raise VocabularyMismatch(
            f"teacher and student tokenizers differ (student {len(s_vocab)} tokens, teacher "
            f"{len(t_vocab)}; first differences {diff}); on-policy distillation needs one shared "
            "vocabulary: pick a teacher from the student's model family"
        )


class TeacherScorer(TeacherBackend):
    """The ``hf`` teacher backend: a frozen transformers model in the trainer's process.

    Args:
        model: the teacher (put in eval mode, never trained).
        pad_token_id: id used to right-pad rows (masked out by the attention mask).
        batch_rows: trajectories per teacher forward.
        chunk_rows: rows of the vocabulary projection computed at once.
        vision: positions and pixel inputs for a vision-language teacher (None for text).
        packed: score each batch's real tokens packed (:mod:`reopold_agent.sequence_packing`):
            no compute on padding, same log-probs up to float rounding. Rows with images run
            padded.
        shared_prefix: rows that share their tokens before the first student token (a
            group's rollouts of one prompt) are scored with that prefix encoded once
            (:mod:`reopold_agent.shared_prefix`); same log-probs up to float rounding. Text
            teachers only; the other rows are scored as ``packed`` says.
    """

    name = "hf"

    def __init__(self, model: Any, *, pad_token_id: int, batch_rows: int = 16, chunk_rows: int = 1024,
                 vision: Any = None, packed: bool = False, shared_prefix: bool = False) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.pad_token_id = pad_token_id
        self.batch_rows = batch_rows
        self.chunk_rows = chunk_rows
        self.vision = vision
        self.supports_images = vision is not None
        self.packed = packed
        self.shared_prefix = shared_prefix and vision is None

    @torch.no_grad()
    def score_rows(self, rows: list[ScoringRow]) -> list[torch.Tensor]:
        """Per row a [T] float32 tensor of teacher log-probs (position 0 holds 0), rows batched by length."""
        device = next(self.model.parameters()).device
        vocab = self.model.get_input_embeddings().num_embeddings
        for b, row in enumerate(rows):
            if row.token_ids and not 0 <= min(row.token_ids) <= max(row.token_ids) < vocab:
                bad = next(t for t in row.token_ids if not 0 <= t < vocab)
                raise TeacherIdMismatch(f"trajectory {b} holds token id {bad}, outside the teacher's vocabulary of "
                                        f"{vocab}; the teacher must share the student's tokenizer")
        out: list[torch.Tensor | None] = [None] * len(rows)
        rest = range(len(rows))
        if self.shared_prefix:
            rest = self._score_groups(rows, out)
        order = sorted(rest, key=lambda i: len(rows[i].token_ids))
        for start in range(0, len(order), self.batch_rows):
            picked = order[start:start + self.batch_rows]
            ids, attn = pad_right([rows[i].token_ids for i in picked], self.pad_token_id)
            ids, attn = ids.to(device), attn.to(device)
            extra = None
            if self.vision is not None:
                extra = self.vision.forward_inputs([rows[i].pixel_inputs for i in picked], ids, attn)
            logp_BT, _ = sequence_logprobs(self.model, ids, attn, chunk_rows=self.chunk_rows, extra_inputs=extra,
                                           packed=self.packed)
            logp_BT = logp_BT.float().cpu()
            for b, i in enumerate(picked):
                out[i] = logp_BT[b, :len(rows[i].token_ids)]
        return out  # type: ignore[return-value]

    def _score_groups(self, rows: list[ScoringRow], out: list) -> list[int]:
        """Score into ``out`` the rows that share a prefix with others (and, when any do, the
        other rows with a student token, as groups of one), each prefix once, about
        ``batch_rows`` rows per pair of forwards; return the rows left to score whole."""
        scorable = [i for i, row in enumerate(rows) if any(row.loss_mask[1:])]
        firsts = [1 + row.loss_mask[1:].index(1) for row in (rows[i] for i in scorable)]
        groups, prefix_lens = scoring_groups([rows[i].token_ids for i in scorable], firsts)
        if not groups:
            return list(range(len(rows)))
        members = [[scorable[j] for j in group] for group in groups]
        start = 0
        while start < len(members):
            end, held = start, 0
            while end < len(members) and (end == start or held + len(members[end]) <= self.batch_rows):
                held += len(members[end])
                end += 1
            scored = groups_logprobs(self.model, [[rows[i].token_ids for i in m] for m in members[start:end]],
                                     prefix_lens[start:end], pad_token_id=self.pad_token_id,
                                     chunk_rows=self.chunk_rows)
            for i, (logp_T, _) in zip([i for m in members[start:end] for i in m], scored):
                out[i] = logp_T.cpu()
            start = end
        grouped = {i for m in members for i in m}
        return [i for i in range(len(rows)) if i not in grouped]
