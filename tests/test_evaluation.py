"""Grouping sampled evaluation episodes into the test-time scaling curve."""

import pytest

from reopold_agent.evaluation import sampled_scaling
from reopold_agent.trajectory import Trajectory


def _episode(prompt_id, answer, correct, model_tokens):
    source = ["prompt"] * 3 + ["model"] * model_tokens
    info = {} if answer is None else {"outcome": {"extracted": answer}}
    return Trajectory(token_ids=list(range(len(source))), source=source, turn=[0] * len(source),
                      loss_mask=[int(s == "model") for s in source], logprobs=[None] * len(source),
                      messages=[], reward=float(correct), prompt_id=prompt_id, info=info)


def test_sampled_scaling_groups_by_problem_and_votes_on_extracted_answers():
    episodes = [_episode("p0", 4, True, 10), _episode("p1", 7, False, 30),
                _episode("p0", 5, False, 10), _episode("p1", None, False, 30)]
    points = sampled_scaling(episodes, seconds_per_token=0.5)
    assert [p.k for p in points] == [1, 2]
    # p0: one of two correct (pass@1 1/2, pass@2 1); p1: none. maj@2 on p0 is a 4-vs-5 tie: 1/2.
    assert points[0].pass_at_k == pytest.approx(0.25) and points[1].pass_at_k == pytest.approx(0.5)
    assert points[0].maj_at_k == pytest.approx(0.25) and points[1].maj_at_k == pytest.approx(0.25)
    assert points[0].tokens_per_problem == 20 and points[1].seconds_per_problem == pytest.approx(20.0)


def _hf_engine(top_p=1.0):
    from reopold_agent.rollout.config import RolloutConfig
    from reopold_agent.rollout.engine import RolloutEngine
    from reopold_agent.rollout.hf_backend import HFGenerationBackend
    from tests import tiny

    tokenizer = tiny.tokenizer()
    backend = HFGenerationBackend(tiny.model(seed=3).eval(), pad_token_id=tokenizer.pad_token_id)
    return RolloutEngine(backend, tokenizer, RolloutConfig(max_turn_tokens=12, max_episode_tokens=512, top_p=top_p))


def test_eval_top_p_sets_the_nucleus_of_the_sampled_pass_only():
    """A nucleus of one token makes every sample the greedy episode; the engine's own top-p 1
    (training's setting) samples other tokens from the tiny random model."""
    from reopold_agent.evaluation import evaluate
    from tests.envs.plain_env import AdderEnv

    def episodes(**top_p):
        _, trajs = evaluate(_hf_engine(), AdderEnv, [0, 1], samples=3, greedy=True, batch_episodes=8, seed=5,
                            **top_p)
        greedy = {t.prompt_id: t.token_ids for t in trajs[:2]}
        return greedy, [(t.prompt_id, t.token_ids) for t in trajs[2:]]

    greedy, sharp = episodes(top_p=1e-6)
    assert len(sharp) == 6 and all(ids == greedy[pid] for pid, ids in sharp)
    greedy_again, wide = episodes()
    assert greedy_again == greedy and any(ids != greedy[pid] for pid, ids in wide)
