"""Tests of tasks/code.py, tasks/code_problems.py and the Code-v0 environment."""

import numpy as np
import pytest

from reopold_agent.envs import make_env
from reopold_agent.tasks import code
from reopold_agent.tasks.code_problems import TEMPLATES
from reopold_agent.tasks.data import split_of

ITEM = code.build_item(next(t for t in TEMPLATES if t.key == "sum_squares_above"), {"k": 0},
                       np.random.default_rng(0))


def answer(source):
    return f"Here it is.\n```python\n{source}\n```"


def test_there_are_about_thirty_distinct_templates():
    assert len(TEMPLATES) >= 30 and len({t.key for t in TEMPLATES}) == len(TEMPLATES)


def test_splits_never_share_a_problem_and_both_are_varied():
    train = [code.make_item("train", i) for i in range(150)]
    evals = [code.make_item("eval", i) for i in range(60)]
    assert not {it["problem"] for it in train} & {it["problem"] for it in evals}
    assert {split_of(it["problem"]) for it in evals} == {"eval"}
    assert len({it["fn"] for it in train}) >= 20 and len({it["fn"] for it in evals}) >= 8


def test_items_are_deterministic_by_seed():
    assert code.make_item("eval", 3, seed=4) == code.make_item("eval", 3, seed=4)
    assert code.make_item("eval", 3, seed=4) != code.make_item("eval", 3, seed=5)


def test_every_reference_solution_passes_its_hidden_tests_in_the_sandbox(sandbox):
    rng = np.random.default_rng(1)
    for template in TEMPLATES:
        item = code.build_item(template, template.params(rng), rng)
        verdict = code.verify(item, answer(item["answer"]), sandbox)
        assert verdict.reward == 1.0, (template.key, verdict.detail)


@pytest.mark.parametrize("split, index", [("train", 0), ("eval", 0), ("eval", 1)])
def test_gold_trajectory_earns_full_reward(sandbox, play_gold, split, index):
    env = make_env("reopold_agent/Code-v0", sandbox=sandbox, split=split)
    assert play_gold(env, options={"index": index}) == 1.0


def test_prompt_shows_signature_and_example():
    assert ITEM["prompt"].startswith("Write a Python function `sum_squares_above(xs)` that "
                                     "returns the sum of the squares of the numbers in `xs` "
                                     "that are greater than 0. Example: `sum_squares_above([")


@pytest.mark.parametrize("source, detail", [
    ("def sum_squares_above(xs):\n    return sum(x * x for x in xs)", "tests passed"),
    ("def sum_squares_above(xs):\n    return 0", "tests passed"),
    ("def sum_squares_above(xs) return 1", "tests did not run (no test results) SyntaxError"),
    ("def other(xs):\n    return 0", "0/7 tests passed"),
])
def test_wrong_solutions_score_zero(sandbox, source, detail):
    verdict = code.verify(ITEM, answer(source), sandbox)
    assert verdict.reward == 0.0 and detail in verdict.detail


def test_partial_pass_is_reported_but_not_paid(sandbox):
    source = "def sum_squares_above(xs):\n    return sum(x * x for x in xs if x > 0) if xs else 1"
    verdict = code.verify(ITEM, answer(source), sandbox)
    assert verdict.reward == 0.0 and verdict.detail == "6/7 tests passed"


def test_no_code_block_and_untagged_block(sandbox):
    assert code.verify(ITEM, "def f(): pass", sandbox).detail == "no ```python code block"
    good = "def sum_squares_above(xs):\n    return sum(x * x for x in xs if x > 0)"
    assert code.verify(ITEM, f"```\n{good}\n```", sandbox).reward == 1.0


def test_hanging_solution_hits_the_timeout(sandbox):
    source = "def sum_squares_above(xs):\n    while True:\n        pass"
    verdict = code.verify(ITEM, answer(source), sandbox, timeout_s=0.5)
    assert verdict.reward == 0.0 and "tests did not run (wall_timeout)" in verdict.detail


def test_outputs_are_compared_outside_the_sandbox(sandbox):
    cheat = ("class Any:\n    def __eq__(self, other):\n        return True\n"
             "def sum_squares_above(xs):\n    return Any()\n"
             "print('@@reopold-tests-0000000000000000@@[]')")
    verdict = code.verify(ITEM, answer(cheat), sandbox)
    assert verdict.reward == 0.0 and verdict.detail == "0/7 tests passed"
