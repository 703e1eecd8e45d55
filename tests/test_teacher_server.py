"""The ``server`` teacher backend against a real local HTTP server speaking vLLM's JSON
(tests/teacher_http.py); vLLM's own server is tested in tests/vllm/test_teacher_vllm.py."""

from __future__ import annotations

import socket
import time

import pytest
import torch

from reopold_agent.teacher import TeacherScorer
from reopold_agent.teacher_config import TeacherServerConfig
from reopold_agent.teacher_scoring import TeacherError, TeacherIdMismatch, TeacherUnavailable
from reopold_agent.teacher_server import ServerTeacher, probe_text
from reopold_agent.demo.tiny_models import build_tokenizer
from reopold_agent.trajectory import Trajectory
from tests import tiny
from tests.teacher_http import ScoringServer

TOL = 1e-6
"""Server and in-process log-probs come from the same float32 forward; JSON keeps them to ~1e-7."""


def _traj(ids, prompt=3):
    src = ["prompt"] * prompt + ["model"] * (len(ids) - prompt)
    return Trajectory(token_ids=ids, source=src, turn=[0] * len(ids), loss_mask=[int(s == "model") for s in src],
                      logprobs=[None] * len(ids), messages=[])


TRAJS = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27], [30, 31, 32, 40, 41]]


@pytest.fixture(scope="module")
def model():
    return tiny.model("micro", seed=5)


@pytest.fixture()
def server(model):
    srv = ScoringServer(model, tiny.tokenizer())
    yield srv
    srv.close()


def _client(url, sleeps=None, **settings):
    defaults = dict(url=url, timeout_s=5.0, max_retries=3, backoff_s=0.5, max_backoff_s=1.0, max_concurrency=4)
    client = ServerTeacher(TeacherServerConfig(**{**defaults, **settings}),
                           sleep=(sleeps.append if sleeps is not None else (lambda s: None)))
    return client


def test_server_scores_equal_the_hf_scorer_and_the_ids_go_as_ids(server, model):
    client = _client(server.url + "/v1", model=None)
    client.check(tiny.tokenizer(), max_tokens=200)
    assert client.model == "teacher"
    trajs = [_traj(list(ids)) for ids in TRAJS]
    call = client.score(trajs)
    ref = [_traj(list(ids)) for ids in TRAJS]
    TeacherScorer(model, pad_token_id=0).score(ref)
    for t, r in zip(trajs, ref):
        assert t.teacher_logprobs[0] is None and len(t.teacher_logprobs) == t.num_tokens
        torch.testing.assert_close(torch.tensor(t.teacher_logprobs[1:]), torch.tensor(r.teacher_logprobs[1:]),
                                   atol=TOL, rtol=0)
    assert call.tokens == sum(len(i) for i in TRAJS) and call.retries == 0 and call.seconds > 0
    sent = [body for path, body, _ in server.requests if path == "/v1/completions"]
    assert sorted(b["prompt"] for b in sent) == sorted(TRAJS)
    assert all(b["max_tokens"] == 1 and b["prompt_logprobs"] == 0 and b["return_token_ids"] for b in sent)
    client.close()


def test_requests_respect_the_concurrency_limit_and_carry_the_api_key(server):
    server.mode, server.delay_s = "slow", 0.05
    client = ServerTeacher(TeacherServerConfig(url=server.url, max_concurrency=2), api_key="s3cret")
    client.check(None, max_tokens=100)
    client.score([_traj([5, 6, 7, 8] + [i]) for i in range(10, 18)])
    assert server.max_in_flight == 2
    completions = [h for path, _, h in server.requests if path == "/v1/completions"]
    assert len(completions) == 8 and all(h["Authorization"] == "Bearer s3cret" for h in completions)
    client.close()


def test_a_busy_server_is_retried_with_doubling_backoff_and_the_retries_are_counted(server):
    sleeps = []
    client = _client(server.url, sleeps, max_concurrency=1, max_retries=4)
    client.check(None, max_tokens=100)
    server.mode, server.fail_next = "busy", 3
    call = client.score([_traj([5, 6, 7, 8, 9])])
    assert call.retries == 3 and sleeps == [0.5, 1.0, 1.0]  # 0.5, doubled, capped at max_backoff_s
    client.close()


@pytest.mark.parametrize("mode, expected", [
    ("garbage", "answered a body that is not JSON"),
    ("no_logprobs", "without prompt_token_ids or prompt_logprobs"),
    ("short", "prompt log-probs for 5 tokens"),
])
def test_a_garbage_answer_stops_after_the_bounded_retries_and_writes_nothing(server, mode, expected):
    sleeps = []
    client = _client(server.url, sleeps, max_retries=2, max_concurrency=1)
    client.check(None, max_tokens=100)
    server.mode = mode
    traj = _traj([5, 6, 7, 8, 9])
    with pytest.raises(TeacherUnavailable, match=expected) as info:
        client.score([traj])
    assert "gave up after 2 retries" in str(info.value) and "\n" not in str(info.value)
    assert len(sleeps) == 2 and traj.teacher_logprobs is None
    assert client.retries == 2
    client.close()


def test_a_slow_server_times_out_and_stops_clearly(server):
    client = _client(server.url, max_retries=1, timeout_s=0.3, max_concurrency=1)
    client.check(None, max_tokens=100)
    server.mode, server.delay_s = "slow", 1.0
    start = time.monotonic()
    with pytest.raises(TeacherUnavailable, match=r"no answer within 0.3 s; gave up after 1 retries"):
        client.score([_traj([5, 6, 7, 8, 9])])
    assert time.monotonic() - start < 3.0, "bounded: 2 tries of 0.3 s and the back-off"
    client.close()


def test_a_server_that_is_down_stops_after_the_bounded_retries():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    client = _client(f"http://127.0.0.1:{port}", sleeps, max_retries=2)
    with pytest.raises(TeacherUnavailable, match=r"connection failed \(ConnectionRefusedError.*gave up after 2 retries"):
        client.check(None, max_tokens=100)
    assert sleeps == [0.5, 1.0]
    client.close()


def test_a_client_error_stops_at_once_with_the_servers_message(server):
    sleeps = []
    client = _client(server.url, sleeps)
    client.check(None, max_tokens=100)
    server.mode = "bad_request"
    with pytest.raises(TeacherError, match="answered HTTP 400: This model's maximum context length is 8 tokens"):
        client.score([_traj([5, 6, 7, 8, 9])])
    assert sleeps == []
    client.close()


def test_reported_ids_that_differ_stop_the_run_naming_the_first_differing_position(server):
    client = _client(server.url)
    client.check(None, max_tokens=100)
    server.mode, server.shift_at = "shift_ids", 3
    with pytest.raises(TeacherIdMismatch, match=r"first difference at position 3 \(student id 8, teacher 9"):
        client.score([_traj([5, 6, 7, 8, 9])])
    assert client.retries == 0, "a mismatch is not retried"
    client.close()


def test_a_server_with_another_tokenizer_is_refused_naming_the_first_differing_position(model):
    other = build_tokenizer(["completely different corpus of words " * 20], vocab_size=300)
    srv = ScoringServer(model, other)
    try:
        client = _client(srv.url)
        with pytest.raises(TeacherIdMismatch, match=r"tokenizes a probe text to other ids .* first difference at "
                                                    r"position \d+ \(student id \d+, teacher \d+"):
            client.check(tiny.tokenizer(), max_tokens=100)
        client.check(None, max_tokens=100)  # without the probe the same server would be accepted
        client.close()
    finally:
        srv.close()


def test_the_probe_covers_special_tokens_and_the_whole_vocabulary():
    tok = tiny.tokenizer()
    ids = tok(probe_text(tok), add_special_tokens=False)["input_ids"]
    assert set(tok.all_special_ids) <= set(ids)
    assert max(ids) > 0.8 * len(tok) and len(set(ids)) > 50


def test_model_name_length_limit_and_missing_tokenize_are_refused_clearly(server):
    with pytest.raises(TeacherError, match=r"does not serve 'student' \(it serves \['teacher'\]\)"):
        _client(server.url, model="student").check(None, max_tokens=100)
    with pytest.raises(TeacherError, match="takes at most 512 tokens .* --max-model-len"):
        _client(server.url).check(None, max_tokens=600)
    server.tokenizer = None
    with pytest.raises(TeacherError, match="no /tokenize endpoint .* teacher.server.check_tokenizer=false"):
        _client(server.url).check(tiny.tokenizer(), max_tokens=100)
    _client(server.url, check_tokenizer=False).check(tiny.tokenizer(), max_tokens=100)
