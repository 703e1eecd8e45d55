import pytest

from reopold_agent.replay.filters import parse_filter, sort_summaries
from reopold_agent.replay.loading import open_run


def _labels(index, text):
    flt = parse_filter(text)
    return [s.label for s in index.summaries() if flt(s)]


def test_filter_terms(synthetic_run):
    index = open_run(synthetic_run)
    assert _labels(index, "step=1 kind=step") == ["step_000001.jsonl:1", "step_000001.jsonl:3"]
    assert _labels(index, "step=0..1 reward>0.5 !truncated") == [
        "step_000000.jsonl:1", "step_000001.jsonl:1", "eval_000001.jsonl:1"]
    assert _labels(index, "truncated task=visual_qa") == ["step_000001.jsonl:3"]
    assert _labels(index, "!scored kind=step") == ["step_000002.jsonl:1", "step_000002.jsonl:2"]
    assert _labels(index, "errors") == []
    assert _labels(index, "end=turn_limit") == ["step_000001.jsonl:3"]
    assert parse_filter("step=2..5").steps() == (2, 5)


@pytest.mark.parametrize("bad", ["step", "reward>x", "colour=red", "!step=1", "truncated=maybe"])
def test_bad_terms_say_what_is_wrong(bad):
    with pytest.raises(ValueError, match="filter term"):
        parse_filter(bad)


def test_sort_puts_missing_values_last(synthetic_run):
    index = open_run(synthetic_run)
    rows = [s for s in index.summaries() if s.error is None]
    index.ensure_kl(rows)
    ordered = sort_summaries(rows, "kl", reverse=True)
    assert [round(s.kl, 4) for s in ordered if s.kl is not None] == [0.6571, 0.6571, -0.0333]  # 4.6 / 7, -0.1 / 3
    assert all(s.kl is None for s in ordered[3:])
