"""Teacher scoring: the frozen teacher's log-probs on exactly the student's tokens.

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
from .trajectory import Trajectory


class VocabularyMismatch(ValueError):
    """Teacher and student tokenizers map tokens to ids differently."""


def check_vocabularies(student_tokenizer: Any, teacher_tokenizer: Any | None, teacher_model: Any,
                       student_model: Any | None = None) -> None:
    """Raise :class:`VocabularyMismatch` unless the teacher can score the student's ids."""
    if teacher_tokenizer is not None:
        s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if s_vocab != t_vocab:
            diff = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))[:3]
            raise VocabularyMismatch(
                f"teacher and student tokenizers differ (student {len(s_vocab)} tokens, teacher "
                f"{len(t_vocab)}; first differences {diff}); on-policy distillation needs one shared "
                "vocabulary: pick a teacher from the student's model family"
            )
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


class TeacherScorer:
    """Fills ``teacher_logprobs`` of trajectories with a frozen teacher.

    Args:
        model: the teacher (put in eval mode, never trained).
        pad_token_id: id used to right-pad rows (masked out by the attention mask).
        batch_rows: trajectories per teacher forward.
        chunk_rows: rows of the vocabulary projection computed at once.
        vision: positions and pixel inputs for a vision-language teacher (None for text).
    """

    def __init__(self, model: Any, *, pad_token_id: int, batch_rows: int = 16, chunk_rows: int = 1024,
                 vision: Any = None) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.pad_token_id = pad_token_id
        self.batch_rows = batch_rows
        self.chunk_rows = chunk_rows
        self.vision = vision

    @torch.no_grad()
    def score(self, trajectories: list[Trajectory]) -> None:
        """Set ``traj.teacher_logprobs`` (None at position 0) for every trajectory, in place."""
        device = next(self.model.parameters()).device
        order = sorted(range(len(trajectories)), key=lambda i: trajectories[i].num_tokens)
        for start in range(0, len(order), self.batch_rows):
            chunk = [trajectories[i] for i in order[start:start + self.batch_rows]]
            ids, attn = pad_right([t.token_ids for t in chunk], self.pad_token_id)
            ids, attn = ids.to(device), attn.to(device)
            extra = self._vision_inputs(chunk, ids, attn)
            logp_BT, _ = sequence_logprobs(self.model, ids, attn, chunk_rows=self.chunk_rows, extra_inputs=extra)
            logp_BT = logp_BT.cpu()
            ids = ids.cpu()
            for b, traj in enumerate(chunk):
                scored = logp_BT[b, :traj.num_tokens].tolist()
                if len(scored) != traj.num_tokens or not torch.equal(ids[b, :traj.num_tokens],
                                                                     torch.tensor(traj.token_ids)):
                    raise RuntimeError(f"teacher scored {len(scored)} tokens for a {traj.num_tokens}-token trajectory")
                traj.teacher_logprobs = [None] + scored[1:]

    def _vision_inputs(self, chunk: list[Trajectory], ids, attn) -> dict | None:
        if self.vision is None:
            if any(t.images for t in chunk):
                raise ValueError("trajectories hold images but the teacher is a text-only model")
            return None
        for traj in chunk:
            traj.check_pixel_inputs()
        return self.vision.forward_inputs([t.pixel_inputs for t in chunk], ids, attn)
