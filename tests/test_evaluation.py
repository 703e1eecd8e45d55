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
