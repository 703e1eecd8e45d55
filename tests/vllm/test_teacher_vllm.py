"""The ``vllm`` (in process) and ``server`` (a real ``vllm serve``) teacher backends give the HF
scorer's log-probs on the same trajectories, and a server with another tokenizer is refused."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("vllm", reason="vLLM is installed only in the vLLM test environment (.ci/run)")

import torch  # noqa: E402

from reopold_agent.teacher import TeacherScorer  # noqa: E402
from reopold_agent.teacher_config import TeacherServerConfig, TeacherVLLMConfig  # noqa: E402
from reopold_agent.teacher_scoring import TeacherIdMismatch  # noqa: E402
from reopold_agent.teacher_server import ServerTeacher  # noqa: E402
from reopold_agent.teacher_vllm import VLLMTeacher  # noqa: E402
from reopold_agent.demo.tiny_models import build_tokenizer  # noqa: E402
from reopold_agent.trajectory import Trajectory  # noqa: E402
from tests import tiny  # noqa: E402
from tests.vllm.models import save_student  # noqa: E402
from tests.vllm.serve import VLLMServer  # noqa: E402

TOL = 2e-5
"""|log-prob difference| allowed between vLLM (in process or served) and transformers in float32
(measured: about 1e-6)."""
MAX_LEN = 256


def _trajectories(vocab: int, count: int = 12, seed: int = 0) -> list[Trajectory]:
    """Random id sequences of 5 to 200 tokens: a prompt, then model and tool spans alternating."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(5, 200)
        ids = [rng.randrange(vocab) for _ in range(n)]
        source = ["prompt"] * rng.randint(1, 4)
        while len(source) < n:
            source += [rng.choice(["model", "tool"])] * rng.randint(1, 20)
        source = source[:n]
        out.append(Trajectory(token_ids=ids, source=source, turn=[0] * n,
                              loss_mask=[int(s == "model") for s in source], logprobs=[None] * n, messages=[]))
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    model = save_student(tiny.tokenizer(), path, seed=1)
    return path, model


@pytest.fixture(scope="module")
def reference(teacher):
    trajs = _trajectories(len(tiny.tokenizer()))
    TeacherScorer(teacher[1], pad_token_id=tiny.tokenizer().pad_token_id, batch_rows=4).score(trajs)
    return trajs


def _fresh(reference):
    return [Trajectory(token_ids=t.token_ids, source=t.source, turn=t.turn, loss_mask=t.loss_mask,
                       logprobs=t.logprobs, messages=[]) for t in reference]


def _assert_same(scored, reference):
    gaps = []
    for got, ref in zip(scored, reference):
        assert got.teacher_logprobs[0] is None and len(got.teacher_logprobs) == got.num_tokens
        assert all(v is not None for v in got.teacher_logprobs[1:])
        gaps.append((torch.tensor(got.teacher_logprobs[1:]) - torch.tensor(ref.teacher_logprobs[1:])).abs().max())
    assert max(gaps).item() < TOL, max(gaps).item()


def test_the_in_process_vllm_teacher_gives_the_hf_scorers_logprobs(teacher, reference):
    backend = VLLMTeacher(str(teacher[0]), TeacherVLLMConfig(), dtype="float32", max_model_len=MAX_LEN)
    try:
        trajs = _fresh(reference)
        call = backend.score(trajs)
        _assert_same(trajs, reference)
        assert call.tokens == sum(t.num_tokens for t in trajs) and call.retries == 0
    finally:
        backend.close()


def test_a_vllm_server_gives_the_hf_scorers_logprobs_and_refuses_another_tokenizer(teacher, reference, tmp_path):
    server = VLLMServer(teacher[0], tmp_path / "serve.log", max_model_len=MAX_LEN + 1).start()
    try:
        client = ServerTeacher(TeacherServerConfig(url=server.url + "/v1", max_concurrency=4))
        client.check(tiny.tokenizer(), max_tokens=MAX_LEN)
        trajs = _fresh(reference)
        call = client.score(trajs)
        _assert_same(trajs, reference)
        assert call.retries == 0
        client.close()
        # the same server as seen by a student with another tokenizer of the same size
        other = build_tokenizer(["completely different corpus of words and numbers 12345 " * 20], vocab_size=300)
        stranger = ServerTeacher(TeacherServerConfig(url=server.url))
        with pytest.raises(TeacherIdMismatch, match=r"tokenizes a probe text to other ids than the student's: first "
                                                    r"difference at position \d+ \(student id \d+, teacher \d+"):
            stranger.check(other, max_tokens=MAX_LEN)
        stranger.close()
    finally:
        server.kill()
