"""The replayed REOPOLD selection of a real run equals what the trainer used."""

import json

import pytest

from reopold_agent.replay.decoding import TokenDecoder
from reopold_agent.replay.filters import parse_filter
from reopold_agent.replay.loading import open_run
from reopold_agent.replay.session import ReplaySession


def test_selected_counts_match_the_trainer_metrics(real_run):
    index = open_run(real_run)
    session = ReplaySession(index, TokenDecoder(index.info, enabled=False))
    metrics = [json.loads(line) for line in (real_run / "metrics.jsonl").read_text().splitlines()]
    assert index.info.reopold.switch_step == 1
    for step in range(3):
        logged = next(m for m in metrics if m["step"] == step and "objective/num_selected" in m)
        opened = [session.open(s) for s in session.select(parse_filter(f"kind=step step={step}"))]
        selected = sum(bool(v) for o in opened for v in o.table.selection)
        valid = sum(o.traj.num_model_tokens for o in opened)
        assert valid == logged["objective/num_valid"]
        assert selected == logged["objective/num_selected"]
        if step >= 1:
            tau = session.step_threshold(opened[0].summary.path)
            assert tau == pytest.approx(logged["objective/entropy_threshold"], rel=1e-6)
