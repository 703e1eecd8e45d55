"""The vLLM backend against the real vLLM (CPU build) and a transformers forward of the same weights."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is installed only in the vLLM test environment (.ci/run)")

import torch  # noqa: E402

from reopold_agent.rollout.backend import SamplingParams  # noqa: E402
from reopold_agent.rollout.config import VLLMConfig  # noqa: E402
from reopold_agent.rollout.vllm_backend import VLLMGenerationBackend  # noqa: E402
from reopold_agent.sequence_scoring import sequence_logprobs  # noqa: E402
from tests import tiny  # noqa: E402
from reopold_agent.demo.tiny_models import build_causal_lm  # noqa: E402
from tests.vllm.models import HEAD_DIM_32, save_student  # noqa: E402

TOL = 2e-5
"""|log-prob difference| allowed between vLLM and transformers in float32 (measured: ~5e-7)."""
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [17, 18, 19, 20, 21, 22, 23, 24, 25]]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(backend, the same weights as a transformers model); one engine for the module."""
    path = tmp_path_factory.mktemp("vllm") / "student"
    model = save_student(tiny.tokenizer(), path)
    backend = VLLMGenerationBackend(str(path), VLLMConfig(), dtype="float32", max_model_len=256)
    yield backend, model
    backend.close()


def _reference(model, prompt, gen_ids):
    """log p(gen_ids[i] | prompt + gen_ids[:i]) under a transformers forward, [N] float32."""
    ids = torch.tensor([prompt + gen_ids])
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, ids, torch.ones_like(ids))
    return logp[0, len(prompt):]


def test_logprobs_equal_a_transformers_forward_and_rows_stop_like_the_hf_backend(student):
    backend, model = student
    stops = tuple(range(30, 300, 9))  # about one id in nine: most rows stop, some run out of budget
    params = SamplingParams(stop_token_ids=stops)
    budgets = [12, 3, 20, 7]
    gens = backend.generate(PROMPTS, budgets, params, seeds=[1, 2, 3, 4])
    assert {g.finish_reason for g in gens} == {"stop", "length"}, "pick stops so that both cases occur"
    for prompt, budget, gen in zip(PROMPTS, budgets, gens):
        assert 1 <= len(gen.token_ids) <= budget and len(gen.logprobs) == len(gen.token_ids)
        assert gen.entropy == [None] * len(gen.token_ids)
        hits = [i for i, t in enumerate(gen.token_ids) if t in stops]
        if gen.finish_reason == "stop":
            assert hits == [len(gen.token_ids) - 1], "kept once, as the last token"
        else:
            assert not hits and len(gen.token_ids) == budget
        ref = _reference(model, prompt, gen.token_ids)
        got = torch.tensor(gen.logprobs)
        assert (got - ref).abs().max().item() < TOL


def test_logprobs_are_those_of_the_raw_distribution_whatever_the_warping(student):
    backend, model = student
    eos = tiny.tokenizer().eos_token_id
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.9, suppress_token_ids=(eos,))
    gen = backend.generate([PROMPTS[0]], [16], params, seeds=[9])[0]
    assert eos not in gen.token_ids
    ref = _reference(model, PROMPTS[0], gen.token_ids)
    assert (torch.tensor(gen.logprobs) - ref).abs().max().item() < TOL
    # warped log-probs would be larger: top-5 and temperature 0.7 concentrate the mass
    ids = torch.tensor([PROMPTS[0] + gen.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(PROMPTS[0]) - 1:-1]
    top5 = logits.topk(5, dim=-1).indices
    assert all(t in top5[i].tolist() for i, t in enumerate(gen.token_ids)), "top_k=5 was applied"


def test_greedy_rows_follow_the_argmax_of_the_transformers_logits(student):
    backend, model = student
    gen = backend.generate([PROMPTS[1]], [10], SamplingParams(temperature=0.0), seeds=[0])[0]
    ids = torch.tensor([PROMPTS[1] + gen.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(PROMPTS[1]) - 1:-1]
    assert gen.token_ids == logits.argmax(-1).tolist()


def test_a_rows_tokens_depend_on_its_seed_not_on_its_batch_companions(student):
    backend, _ = student
    params = SamplingParams()
    alone = backend.generate([PROMPTS[2]], [16], params, seeds=[77])[0]
    crowd = backend.generate([PROMPTS[0], PROMPTS[3], PROMPTS[2], PROMPTS[1]], [5, 16, 16, 9], params,
                             seeds=[1, 2, 77, 3])
    assert crowd[2].token_ids == alone.token_ids
    assert torch.allclose(torch.tensor(crowd[2].logprobs), torch.tensor(alone.logprobs), atol=TOL, rtol=0)
    other_seed = backend.generate([PROMPTS[2]], [16], params, seeds=[78])[0]
    assert other_seed.token_ids != alone.token_ids


def test_more_prompt_tokens_than_one_engine_step_takes_keep_rows_seeded_and_independent(student):
    backend, model = student
    # 6,000 prompt tokens: more than the 4,096 one step of vLLM's CPU build processes
    long_prompts = [[(7 * b + i) % 250 + 3 for i in range(150)] for b in range(40)]
    params = SamplingParams(top_p=0.9)
    crowd = backend.generate(long_prompts, [8] * 40, params, seeds=list(range(100, 140)))
    alone = backend.generate([long_prompts[13]], [8], params, seeds=[113])[0]
    assert crowd[13].token_ids == alone.token_ids
    ref = _reference(model, long_prompts[13], alone.token_ids)
    assert (torch.tensor(alone.logprobs) - ref).abs().max().item() < TOL


def test_rows_are_handed_over_as_they_finish(student):
    backend, _ = student
    seen = {}
    gens = backend.generate(PROMPTS, [1, 12, 4, 8], SamplingParams(), seeds=[5, 6, 7, 8],
                            on_row_done=lambda b, gen: seen.setdefault(b, gen))
    assert seen == dict(enumerate(gens))
    with pytest.raises(ValueError, match="text prompts only"):
        backend.generate([PROMPTS[0]], [4], SamplingParams(), seeds=[0], extra_inputs=[{"vision": object()}])


def test_after_an_update_the_next_rollout_samples_from_the_new_weights(student):
    backend, model = student
    old_state = {k: v.clone() for k, v in model.state_dict().items()}
    before = backend.generate([PROMPTS[3]], [16], SamplingParams(), seeds=[11])[0]
    # one real optimiser step on the student, as the trainer does, then the trainer's sync
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    ids = torch.tensor([PROMPTS[3] + before.token_ids])
    logp, _ = sequence_logprobs(model, ids, torch.ones_like(ids))
    (-logp[0, len(PROMPTS[3]):].sum()).backward()
    optimizer.step()
    model.eval()
    try:
        backend.sync_weights(model)
        after = backend.generate([PROMPTS[3]], [16], SamplingParams(), seeds=[11])[0]
        new_ref = _reference(model, PROMPTS[3], after.token_ids)
        assert (torch.tensor(after.logprobs) - new_ref).abs().max().item() < TOL
        old_model = build_causal_lm(tiny.tokenizer(), HEAD_DIM_32)
        old_model.load_state_dict(old_state)
        old_ref = _reference(old_model, PROMPTS[3], after.token_ids)
        assert (torch.tensor(after.logprobs) - old_ref).abs().max().item() > 1e-2
    finally:
        model.load_state_dict(old_state)
        backend.sync_weights(model)
    restored = backend.generate([PROMPTS[3]], [16], SamplingParams(), seeds=[11])[0]
    assert restored.token_ids == before.token_ids
