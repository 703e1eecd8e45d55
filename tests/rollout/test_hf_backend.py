import torch

from reopold_agent.rollout.backend import SamplingParams
from reopold_agent.rollout.hf_backend import HFGenerationBackend, _sample
from reopold_agent.sequence_scoring import sequence_logprobs
from tests import tiny


def _prompt():
    tok = tiny.tokenizer()
    return tok.apply_chat_template(tiny.CONVERSATION[:2], tokenize=False, add_generation_prompt=True)


def test_behaviour_logprobs_and_entropy_match_a_fresh_forward_for_padded_rows():
    tok, m = tiny.tokenizer(), tiny.model("micro")
    prompt = tok(_prompt(), add_special_tokens=False)["input_ids"]
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id)
    gens = backend.generate([prompt, prompt[:7]], [12, 6], SamplingParams(), seed=3)
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
    a = backend.generate([prompt] * 3, [30] * 3, SamplingParams(), seed=11)
    b = backend.generate([prompt] * 3, [30] * 3, SamplingParams(), seed=11)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    # make every token a stop token: each row stops after exactly one token
    stop_all = tuple(range(len(tok)))
    c = backend.generate([prompt] * 2, [5, 5], SamplingParams(stop_token_ids=stop_all), seed=0)
    assert [len(g.token_ids) for g in c] == [1, 1] and all(g.finish_reason == "stop" for g in c)


def test_greedy_and_top_k_one_agree():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    gen = torch.Generator().manual_seed(0)
    greedy = _sample(logits, SamplingParams(temperature=0.0), gen)
    top1 = _sample(logits, SamplingParams(top_k=1), gen)
    nucleus = _sample(logits, SamplingParams(top_p=0.01), gen)
    assert greedy.tolist() == [1, 0] == top1.tolist() == nucleus.tolist()
