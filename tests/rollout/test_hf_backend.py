import pytest
import torch

from reopold_agent.rollout.backend import SamplingParams
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.sequence_scoring import sequence_logprobs
from tests import tiny


def _prompt():
    tok = tiny.tokenizer()
    return tok.apply_chat_template(tiny.CONVERSATION[:2], tokenize=False, add_generation_prompt=True)


def test_behaviour_logprobs_and_entropy_match_a_fresh_forward_for_padded_rows():
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id)
    gens = backend.generate([prompt, prompt[:7]], [12, 6], SamplingParams(), seeds=[3, 4])
    for ctx, gen in zip([prompt, prompt[:7]], gens):
        seq = ctx + gen.token_ids
        logp, ent = sequence_logprobs(m, torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long), with_entropy=True)
        torch.testing.assert_close(logp[0, len(ctx):], torch.tensor(gen.logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(ent[0, len(ctx):], torch.tensor(gen.entropy), atol=1e-5, rtol=0)
    assert [len(g.token_ids) for g in gens] == [12, 6]
    assert [g.finish_reason for g in gens] == ["length", "length"]


def test_same_seed_same_samples_and_stop_token_kept():
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id)
    a = backend.generate([prompt] * 3, [30] * 3, SamplingParams(), seeds=[11, 12, 13])
    b = backend.generate([prompt] * 3, [30] * 3, SamplingParams(), seeds=[11, 12, 13])
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert len({tuple(g.token_ids) for g in a}) == 3  # different seeds, different samples
    # make every token a stop token: each row stops after exactly one token
    stop_all = tuple(range(len(tok)))
    c = backend.generate([prompt] * 2, [5, 5], SamplingParams(stop_token_ids=stop_all), seeds=[0, 1])
    assert [len(g.token_ids) for g in c] == [1, 1] and all(g.finish_reason == "stop" for g in c)


def test_a_row_samples_the_same_tokens_alone_or_in_any_batch():
    """Different neighbours, padding widths, batch sizes and chunking leave a row's tokens unchanged."""
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    other = prompt[:9]
    longer = prompt + tok("x = 1 + 2", add_special_tokens=False)["input_ids"]
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id)
    alone = backend.generate([prompt], [20], SamplingParams(), seeds=[77])[0]
    batches = [
        ([other, prompt], [5, 20], [1, 77], 1),
        ([longer, prompt, other], [20, 20, 20], [77, 77, 5], 1),  # same seed, other context
        ([prompt] + [other] * 5, [20] + [3] * 5, [77, 2, 3, 4, 5, 6], 0),
    ]
    for prompts, budgets, seeds, row in batches:
        for max_rows in (256, 2):
            backend.max_batch_rows = max_rows
            got = backend.generate(prompts, budgets, SamplingParams(), seeds=seeds)[row]
            assert got.token_ids == alone.token_ids and got.finish_reason == alone.finish_reason
            torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(alone.logprobs), atol=1e-5, rtol=0)
    assert len(set(alone.token_ids)) > 3  # really sampled, not a degenerate repeat


def test_one_seed_per_row_is_required():
    tok, m = tiny.tokenizer(), tiny.model("micro")
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="seeds"):
        backend.generate([[1, 2], [3]], [2, 2], SamplingParams(), seeds=[0])


def test_cpu_threads_apply_to_decode_steps_and_are_restored_after():
    """The prefill keeps the process's threads; decode steps use cpu_threads; same tokens."""
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    seen = []
    m.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        default = HFGenerationBackend(m, pad_token_id=tok.pad_token_id).generate(
            [prompt], [6], SamplingParams(), seeds=[5])[0]
        assert set(seen) == {2}
        seen.clear()
        one = HFGenerationBackend(m, pad_token_id=tok.pad_token_id, cpu_threads=1).generate(
            [prompt], [6], SamplingParams(), seeds=[5])[0]
        assert seen == [2] + [1] * 5 and torch.get_num_threads() == 2
        assert one.token_ids == default.token_ids
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="cpu_threads"):
        HFGenerationBackend(m, pad_token_id=tok.pad_token_id, cpu_threads=0)


def test_rows_are_handed_over_as_soon_as_they_stop():
    """on_row_done gets each row once, right after the decode step that stopped it (the other
    rows still decoding), with the Generation that generate() returns; chunks keep global rows."""
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id)
    forwards = []
    m.register_forward_hook(lambda *_: forwards.append(1))
    for max_rows in (256, 2):
        backend.max_batch_rows = max_rows
        forwards.clear()
        handed = []
        gens = backend.generate([prompt, prompt[:9], prompt], [9, 2, 5], SamplingParams(), seeds=[1, 2, 3],
                                on_row_done=lambda b, gen: handed.append((b, gen, len(forwards))))
        assert [b for b, _, _ in handed] == ([1, 2, 0] if max_rows == 256 else [1, 0, 2])
        assert [gen for _, gen, _ in sorted(handed, key=lambda h: h[0])] == gens
        if max_rows == 256:  # one forward per decode step: handed over after steps 2, 5 and 9
            assert [at for _, _, at in handed] == [2, 5, 9]


def test_a_static_cache_samples_the_same_tokens_and_log_probs_as_the_growing_cache():
    """Same seeds, left-padded rows of different lengths and budgets, a stop token: same
    tokens, finish reasons and (to float rounding) log-probs and entropies."""
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    prompts, budgets, seeds = [prompt, prompt[:9], prompt[:4] * 2], [24, 7, 24], [5, 6, 7]
    params = SamplingParams(temperature=1.3, stop_token_ids=(tok.eos_token_id,))
    growing = HFGenerationBackend(m, pad_token_id=tok.pad_token_id).generate(prompts, budgets, params, seeds=seeds)
    static = HFGenerationBackend(m, pad_token_id=tok.pad_token_id, static_cache=True)
    fixed = static.generate(prompts, budgets, params, seeds=seeds)
    assert [len(g.token_ids) for g in growing] == [24, 7, 24]
    for a, b in zip(growing, fixed):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(b.entropy), torch.tensor(a.entropy), atol=1e-5, rtol=0)
    stop_all = tuple(range(len(tok)))
    stopped = static.generate([prompt] * 2, [5, 5], SamplingParams(stop_token_ids=stop_all), seeds=[0, 1])
    assert [len(g.token_ids) for g in stopped] == [1, 1] and all(g.finish_reason == "stop" for g in stopped)


def test_compiling_the_decode_step_needs_the_static_cache():
    with pytest.raises(ValueError, match="compile_decode needs static_cache"):
        HFGenerationBackend(tiny.model("nano"), pad_token_id=0, compile_decode=True)


@pytest.mark.slow
def test_a_compiled_decode_step_samples_the_same_tokens():
    """torch.compile of the static-cache decode step (inductor on the CPU; about a minute to compile)."""
    tok, m = tiny.tokenizer(), tiny.model("nano")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    prompts, budgets, seeds = [prompt, prompt[:5]], [10, 6], [1, 2]
    growing = HFGenerationBackend(m, pad_token_id=tok.pad_token_id).generate(prompts, budgets, SamplingParams(),
                                                                           seeds=seeds)
    compiled = HFGenerationBackend(m, pad_token_id=tok.pad_token_id, static_cache=True, compile_decode=True)
    for _ in range(2):  # the second call replays the compiled step
        for a, b in zip(growing, compiled.generate(prompts, budgets, SamplingParams(), seeds=seeds)):
            assert a.token_ids == b.token_ids
            torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)


def test_the_run_config_turns_the_static_cache_on():
    from reopold_agent.commands import rollout_engine
    from reopold_agent.rollout.config import RolloutConfig
    from reopold_agent.train_config import TrainConfig

    config = TrainConfig(rollout=RolloutConfig(static_cache=True))
    assert rollout_engine(tiny.model("nano"), tiny.tokenizer(), config).backend.static_cache
    assert not rollout_engine(tiny.model("nano"), tiny.tokenizer(), TrainConfig()).backend.static_cache
    with pytest.raises(ValueError, match="rollout.compile_decode needs rollout.static_cache"):
        RolloutConfig(compile_decode=True)


def test_rows_sharing_a_prompt_are_prefilled_once_with_the_same_samples(monkeypatch):
    """Two prompts x 3 rollouts and a lone shorter prompt: the prefill runs over the 3 distinct
    prompts only, and every row samples the tokens (and log-probs) of the unshared prefill."""
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    prompts = [prompt] * 3 + [prompt[:9]] * 3 + [prompt[:5]]
    budgets, seeds = [16, 9, 16, 16, 4, 16, 12], [1, 2, 3, 4, 5, 6, 7]
    params = SamplingParams(temperature=1.2, stop_token_ids=(tok.eos_token_id,))
    unshared = HFGenerationBackend(m, pad_token_id=tok.pad_token_id, share_prompts=False)
    shared = HFGenerationBackend(m, pad_token_id=tok.pad_token_id)
    prefill_rows = []
    forward = shared._forward_last
    monkeypatch.setattr(shared, "_forward_last",
                        lambda ids, *rest: prefill_rows.append(ids.shape) or forward(ids, *rest))
    a = unshared.generate(prompts, budgets, params, seeds=seeds)
    b = shared.generate(prompts, budgets, params, seeds=seeds)
    assert prefill_rows[0][0] == 3 and all(shape[0] == 7 for shape in prefill_rows[1:])
    assert len({tuple(g.token_ids) for g in b[:3]}) == 3  # the copies sample on their own
    for x, y in zip(a, b):
        assert x.token_ids == y.token_ids and x.finish_reason == y.finish_reason
        torch.testing.assert_close(torch.tensor(y.logprobs), torch.tensor(x.logprobs), atol=1e-5, rtol=0)
