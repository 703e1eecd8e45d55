"""Tests of rollout/continuous_batch.py through the HF backend: rows leave a running decode batch
as they stop and rows handed in by ``refill`` join it, each sampling exactly what it samples in a
plain batch."""

from __future__ import annotations

import time

import gymnasium
import pytest
import torch

from reopold_agent.rollout.backend import RefillRow, SamplingParams
from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.rollout.engine import EpisodeRequest, RolloutEngine
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from tests import tiny
from tests.rollout.test_engine import THREE_CALLS, ScriptedBackend, WorkEnv, _content


def _rows():
    tok = tiny.tokenizer()
    text = tok.apply_chat_template(tiny.CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    longer = prompt + tok("x = 1 + 2", add_special_tokens=False)["input_ids"]
    prompts = [prompt, prompt[:9], prompt, longer, prompt[:4] * 2, longer + prompt[:30]]
    return tok, prompts, [9, 2, 14, 6, 11, 8], [1, 2, 3, 4, 5, 6]


def _same(a, b):
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
    torch.testing.assert_close(torch.tensor(b.logprobs), torch.tensor(a.logprobs), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(b.entropy), torch.tensor(a.entropy), atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_rows", [256, 3])
def test_rows_that_join_a_running_batch_sample_what_a_plain_batch_samples(max_rows):
    """Two rows start; four join as slots free up (longer and shorter contexts than the batch's
    cache); every row's tokens, log-probs and entropies equal a plain batch's, and the decode
    batch shrinks as rows stop."""
    tok, prompts, budgets, seeds = _rows()
    m = tiny.model("micro")
    params = SamplingParams(temperature=1.3, stop_token_ids=(tok.eos_token_id,))
    plain = HFGenerationBackend(m, pad_token_id=tok.pad_token_id).generate(prompts, budgets, params, seeds=seeds)
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id, max_batch_rows=max_rows)
    queue = [RefillRow(p, n, s) for p, n, s in zip(prompts[2:], budgets[2:], seeds[2:])]
    asked, handed, widths = [], {}, []

    def refill(free):
        asked.append(free)
        joining = queue[:1]  # one at a time, so rows join at different steps
        del queue[:1]
        return joining

    def decode_width(mod, args, kwargs, out):
        if kwargs["input_ids"].shape[1] == 1:  # a decode step, not a prefill
            widths.append(kwargs["input_ids"].shape[0])

    hook = m.register_forward_hook(decode_width, with_kwargs=True)
    try:
        got = backend.generate(prompts[:2], budgets[:2], params, seeds=seeds[:2],
                               on_row_done=lambda b, gen: handed.setdefault(b, gen), refill=refill)
    finally:
        hook.remove()
    assert not queue and len(got) == 6 and sorted(handed) == list(range(6))
    for b, (a, g) in enumerate(zip(plain, got)):
        _same(a, g)
        assert handed[b] is g
    assert max(widths) <= min(max_rows, 6) and all(0 < free <= max_rows for free in asked)
    assert any(b < a for a, b in zip(widths, widths[1:]))  # stopped rows left the batch


def test_initial_rows_beyond_the_batch_wait_for_a_free_row():
    tok, prompts, budgets, seeds = _rows()
    m = tiny.model("micro")
    params = SamplingParams(stop_token_ids=(tok.eos_token_id,))
    plain = HFGenerationBackend(m, pad_token_id=tok.pad_token_id).generate(prompts, budgets, params, seeds=seeds)
    backend = HFGenerationBackend(m, pad_token_id=tok.pad_token_id, max_batch_rows=2)
    asked = []
    got = backend.generate(prompts, budgets, params, seeds=seeds, refill=lambda free: asked.append(free) or [])
    for a, g in zip(plain, got):
        _same(a, g)
    assert asked  # asked only once the initial rows had all started
    stop_all = tuple(range(len(tok)))  # every row stops at its first token, joining rows too
    got = backend.generate(prompts, [5] * 6, SamplingParams(stop_token_ids=stop_all), seeds=seeds,
                           refill=lambda free: [RefillRow(prompts[0], 3, 9)] if free == 2 and not asked.clear() else [])
    assert [len(g.token_ids) for g in got] == [1] * len(got) and all(g.finish_reason == "stop" for g in got)


def test_a_joining_row_without_a_budget_is_refused_by_name():
    tok, prompts, budgets, seeds = _rows()
    backend = HFGenerationBackend(tiny.model("micro"), pad_token_id=tok.pad_token_id)
    with pytest.raises(ValueError, match="joining row needs a prompt and a budget >= 1"):
        backend.generate(prompts[:1], [3], SamplingParams(), seeds=[0], refill=lambda free: [RefillRow(prompts[1], 0, 1)])


def test_the_static_cache_decodes_its_batch_whole_and_never_asks_for_rows():
    tok, prompts, budgets, seeds = _rows()
    backend = HFGenerationBackend(tiny.model("micro"), pad_token_id=tok.pad_token_id, static_cache=True)
    got = backend.generate(prompts[:2], budgets[:2], SamplingParams(), seeds=seeds[:2],
                           refill=lambda free: pytest.fail("refill called"))
    assert len(got) == 2


class RefillingScript(ScriptedBackend):
    """A scripted backend that takes rows between its "decode steps": after each row it hands
    over, it asks ``refill`` for rows (waiting up to ``hold_s`` for one, as a long row would keep
    decoding) and plays them in the same call."""

    supports_refill = True

    def __init__(self, tokenizer, script, hold_s=0.0):
        super().__init__(tokenizer, script)
        self.hold_s, self.joined, self.asked, self.calls = hold_s, [], [], 0

    def generate(self, prompts, max_new_tokens, params, *, seeds, extra_inputs=None, on_row_done=None,
                 refill=None):
        self.calls += 1
        queue, out = list(zip(prompts, max_new_tokens, seeds)), []
        while queue:
            prompt, budget, seed = queue.pop(0)
            gen = super().generate([prompt], [budget], params, seeds=[seed])[0]
            out.append(gen)
            on_row_done(len(out) - 1, gen)
            until = time.perf_counter() + self.hold_s
            while refill is not None and not queue:
                self.asked.append(4 - len(queue))
                rows = refill(4 - len(queue))
                self.joined += [len(out) + len(queue) + n for n in range(len(rows))]
                queue += [(r.prompt, r.max_new_tokens, r.seed) for r in rows]
                if rows or time.perf_counter() > until:
                    break
                time.sleep(0.005)
        return out


def test_episodes_back_from_their_tools_join_the_running_batch_with_the_same_trajectories():
    """With ``rollout.refill_rows`` episodes whose tools came back join the running generate
    call: the same trajectories (the joined turns' contexts, budgets and seeds are the turn's
    own), and fewer backend calls."""
    tok = tiny.tokenizer()
    runs = {}
    for refill_rows in (False, True):
        backend = RefillingScript(tok, THREE_CALLS[:4], hold_s=1.0)
        config = RolloutConfig(max_turn_tokens=96, max_episode_tokens=1024, refill_rows=refill_rows)
        engine = RolloutEngine(backend, tok, config)
        requests = [EpisodeRequest(seed=e, options={"index": e}) for e in range(4)]
        trajs = engine.run([WorkEnv() for _ in requests], requests, seed=5)
        runs[refill_rows] = (trajs, backend)
    (plain, off), (refilled, on) = runs[False], runs[True]
    assert not off.joined and off.calls == 4  # one call per turn
    assert on.joined and on.calls < off.calls
    assert on.seeds == off.seeds
    for e, (a, b) in enumerate(zip(plain, refilled)):
        assert a.token_ids == b.token_ids and a.end_reason == b.end_reason == "answered"
        assert b.tool_calls == 3 and _content(b) == _content(a)
    assert all(0 < free <= 4 for free in on.asked)


class EchoEnv(gymnasium.Env):
    """Every assistant turn gets a tool reply after ``delay_s`` (longer for some episodes), for
    three rounds; then the episode ends. Whatever the model writes, episodes go on, so a random
    model plays multi-turn episodes."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.rounds = 0
        return [{"role": "user", "content": f"Echo {seed}."}], {"tools": []}

    def step(self, action):
        time.sleep(self.delay_s)
        self.rounds += 1
        if self.rounds > 3:
            return [], 1.0, True, False, {}
        return [{"role": "tool", "name": "echo", "content": action[-12:] or "empty"}], 0.0, False, False, {}


class CountingBackend(HFGenerationBackend):
    """Counts the rows that joined a running batch."""

    joined = 0

    def generate(self, *args, refill=None, **kwargs):
        def counted(free):
            rows = refill(free)
            self.joined += len(rows)
            return rows
        return super().generate(*args, refill=None if refill is None else counted, **kwargs)


def test_the_real_decode_loop_refills_rows_with_the_same_episodes():
    """Engine, HF backend and a tiny Qwen2 end to end: episodes whose (slow or quick) tool came
    back join the running batch, and every trajectory equals the one played in turn batches."""
    tok, model = tiny.tokenizer(), tiny.model("nano")
    eos_bias = torch.zeros(model.config.vocab_size)
    eos_bias[tok.eos_token_id] = 4.0  # turns of a random model stop at different lengths
    model.lm_head.register_forward_hook(lambda mod, args, out: out + eos_bias)
    requests = [EpisodeRequest(seed=e, options={}) for e in range(8)]
    runs = {}
    for refill_rows in (False, True):
        backend = CountingBackend(model, pad_token_id=tok.pad_token_id)
        config = RolloutConfig(max_turn_tokens=40, max_episode_tokens=1024, max_turns=6, refill_rows=refill_rows,
                               tool_batch_wait_s=0.0)
        engine = RolloutEngine(backend, tok, config)
        envs = [EchoEnv(0.05 if e % 3 else 0.0) for e in range(len(requests))]
        runs[refill_rows] = (engine.run(envs, requests, seed=11), backend.joined)
    (plain, joined_off), (refilled, joined_on) = runs[False], runs[True]
    assert joined_off == 0 and joined_on > 0
    assert sum(t.end_reason == "answered" for t in plain) >= 2  # multi-turn episodes, played to their end
    for a, b in zip(plain, refilled):
        assert a.token_ids == b.token_ids and a.end_reason == b.end_reason and a.turn == b.turn
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-5)
