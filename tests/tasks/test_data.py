"""Tests of tasks/data.py: split assignment and deterministic draws."""

import pytest

from reopold_agent.tasks.data import draw_for_split, split_of


def test_split_of_is_stable_and_about_one_eighth_eval():
    keys = [f"question {i}" for i in range(4000)]
    share = sum(split_of(k) == "eval" for k in keys) / len(keys)
    assert 0.10 < share < 0.15
    assert split_of("question 1") == split_of("question 1")


def test_draw_for_split_is_deterministic_and_lands_in_its_split():
    def draw(rng):
        return {"q": f"q{int(rng.integers(10**9))}"}

    a = draw_for_split("eval", 0, 5, draw, key=lambda it: it["q"])
    assert a == draw_for_split("eval", 0, 5, draw, key=lambda it: it["q"])
    assert split_of(a["q"]) == "eval"
    assert draw_for_split("train", 0, 5, draw, key=lambda it: it["q"]) != a


def test_draw_for_split_gives_up_clearly():
    assert split_of("a") == "train"
    with pytest.raises(RuntimeError, match="no eval item found for index 0 in 3 draws"):
        draw_for_split("eval", 0, 0, lambda rng: {"q": "a"}, key=lambda it: it["q"],
                       max_attempts=3)
