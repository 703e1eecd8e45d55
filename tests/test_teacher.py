import pytest
import torch

from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.teacher import TeacherScorer, VocabularyMismatch, check_vocabularies
from reopold_agent.demo.tiny_models import build_causal_lm, build_tokenizer
from reopold_agent.trajectory import Trajectory
from tests import tiny


def make(ids):
    src = ["prompt"] * 3 + ["model"] * (len(ids) - 3)
    return Trajectory(token_ids=ids, source=src, turn=[0] * len(ids), loss_mask=[int(s == "model") for s in src],
                      logprobs=[None] * len(ids), messages=[])


def test_teacher_scores_exactly_the_student_ids_batched_like_unbatched():
    tok = tiny.tokenizer()
    teacher = tiny.model("micro", seed=5)
    trajs = [make([5, 6, 7, 8, 9, 10]), make([11, 12, 13, 14]), make([20, 21, 22, 23, 24, 25, 26, 27])]
    TeacherScorer(teacher, pad_token_id=tok.pad_token_id, batch_rows=2).score(trajs)
    for t in trajs:
        ids = torch.tensor([t.token_ids])
        ref, _ = sequence_logprobs(teacher, ids, torch.ones_like(ids))
        assert t.teacher_logprobs[0] is None and len(t.teacher_logprobs) == t.num_tokens
        torch.testing.assert_close(torch.tensor(t.teacher_logprobs[1:]), ref[0, 1:], atol=1e-5, rtol=0)


def test_vocabulary_mismatch_is_a_clear_error():
    tok = tiny.tokenizer()
    other = build_tokenizer(["completely different corpus " * 20], vocab_size=290)
    teacher = build_causal_lm(other, "nano")
    with pytest.raises(VocabularyMismatch, match="tokenizers differ"):
        check_vocabularies(tok, other, teacher)
    small_teacher = build_causal_lm(other, "nano")
    if len(other) < len(tok):
        with pytest.raises(VocabularyMismatch, match="embedding has only"):
            check_vocabularies(tok, None, small_teacher)
    check_vocabularies(tok, tok, tiny.model("nano"))  # same vocabulary: fine


def test_the_hf_teacher_refuses_an_id_outside_its_vocabulary_in_one_line():
    from reopold_agent.teacher import TeacherScorer
    from reopold_agent.teacher_scoring import ScoringRow, TeacherIdMismatch

    model = tiny.model(seed=6)
    vocab = model.get_input_embeddings().num_embeddings
    rows = [ScoringRow([1, 2, 3], [0, 1, 1]), ScoringRow([1, vocab + 4, 3], [0, 1, 1])]
    with pytest.raises(TeacherIdMismatch, match=f"trajectory 1 holds token id {vocab + 4}, outside the teacher's "
                                                f"vocabulary of {vocab}"):
        TeacherScorer(model, pad_token_id=0).score_rows(rows)
