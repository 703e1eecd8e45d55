"""The ``vllm`` teacher backend (vLLM's engine in process) gives the HF scorer's log-probs on the
same trajectories and refuses, in one line, what it cannot score; the served teacher (``vllm
serve``) is checked in test_teacher_server_train.py."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is installed only in the vLLM test environment (.ci/run)")

from reopold_agent.teacher import TeacherScorer  # noqa: E402
from reopold_agent.teacher_config import TeacherVLLMConfig  # noqa: E402
from reopold_agent.teacher_scoring import TeacherError  # noqa: E402
from reopold_agent.teacher_vllm import VLLMTeacher  # noqa: E402
from tests import tiny  # noqa: E402
from tests.vllm.models import save_student  # noqa: E402
from tests.vllm.trajectories import largest_gap, random_trajectories, unscored  # noqa: E402

TOL = 2e-5
"""|log-prob difference| allowed between vLLM and transformers in float32 (measured: about 1e-6)."""
MAX_LEN = 256


def test_the_in_process_vllm_teacher_gives_the_hf_scorers_logprobs_and_refuses_what_it_cannot_score(tmp_path):
    teacher = save_student(tiny.tokenizer(), tmp_path / "teacher", seed=1)
    reference = random_trajectories(len(tiny.tokenizer()))
    TeacherScorer(teacher, pad_token_id=tiny.tokenizer().pad_token_id, batch_rows=4).score(reference)
    backend = VLLMTeacher(str(tmp_path / "teacher"), TeacherVLLMConfig(), dtype="float32", max_model_len=MAX_LEN)
    try:
        trajs = unscored(reference)
        call = backend.score(trajs)
        assert largest_gap(trajs, reference) < TOL
        assert call.tokens == sum(t.num_tokens for t in trajs) and call.retries == 0
        vocab = teacher.config.vocab_size
        outside = random_trajectories(vocab, count=1, seed=1, lengths=(20, 40))[0]
        outside.token_ids[6] = vocab
        beside = unscored(reference[:1])[0]
        with pytest.raises(TeacherError, match=f"row 1 holds id {vocab} at position 6, outside the vllm teacher's "
                                               f"vocabulary of {vocab}"):
            backend.score([beside, outside])
        too_long = random_trajectories(vocab, count=1, seed=2, lengths=(MAX_LEN + 2, MAX_LEN + 2))[0]
        with pytest.raises(TeacherError, match=r"the vllm teacher could not score the step: .*maximum context length"):
            backend.score([too_long])
        assert beside.teacher_logprobs is outside.teacher_logprobs is too_long.teacher_logprobs is None, "nothing written"
        again = unscored(reference[:3])
        backend.score(again)  # the engine still scores
        assert largest_gap(again, reference[:3]) < TOL
    finally:
        backend.close()
