"""pass@k / maj@k estimators, the k ladder, and the table and figure they write."""

import random

import pytest

from reopold_agent.eval_scaling import (
    Attempt, k_ladder, majority_at_k, pass_at_k, plot_scaling, scaling_curve, write_scaling_table)


def test_pass_at_k_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == 0.25
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # only one wrong attempt: any pair holds a correct one
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="num_correct"):
        pass_at_k(4, 5, 1)


def _attempts(*answers_and_correct):
    return [Attempt(correct=c, answer=a, tokens=10) for a, c in answers_and_correct]


# answers a (correct, twice), b, c
PROBLEM = _attempts(("a", True), ("a", True), ("b", False), ("c", False))


@pytest.mark.parametrize("k, expected", [(1, 0.5), (2, 0.5), (3, 2 / 3), (4, 1.0)])
def test_majority_at_k_enumerates_subsets_with_fair_ties(k, expected):
    # k=2: {a,a}=1, four {a,x} ties=1/2 each, {b,c}=0 -> 3/6.  k=3: {a,a,x}=1 twice,
    # {a,b,c} three-way tie=1/3 twice -> (2 + 2/3)/4.
    assert majority_at_k(PROBLEM, k, rng=random.Random(0)) == pytest.approx(expected, abs=1e-12)


def test_attempts_without_answer_do_not_vote():
    problem = _attempts((None, False), (None, False), ("a", True))
    assert majority_at_k(problem, 3, rng=random.Random(0)) == 1.0
    assert majority_at_k(_attempts((None, False)), 1, rng=random.Random(0)) == 0.0


def test_majority_resampling_is_seeded_and_close_to_exact():
    exact = majority_at_k(PROBLEM, 3, rng=random.Random(0))
    sampled = [majority_at_k(PROBLEM, 3, rng=random.Random(7), exact_subsets=0, resamples=2000)
               for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert sampled[0] == pytest.approx(exact, abs=0.05)


def test_k_ladder():
    assert k_ladder(1) == [1]
    assert k_ladder(8) == [1, 2, 4, 8]
    assert k_ladder(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="at least one sample"):
        k_ladder(0)


def test_scaling_curve_costs_and_checks():
    other = _attempts(("x", False), ("y", False), ("z", False), ("y", False))
    points = scaling_curve([PROBLEM, other], seconds_per_token=0.01)
    assert [p.k for p in points] == [1, 2, 4]
    assert points[0].pass_at_k == pytest.approx((0.5 + 0.0) / 2)
    assert points[2].pass_at_k == pytest.approx(0.5) and points[2].maj_at_k == pytest.approx(0.5)
    assert points[1].tokens_per_problem == 20 and points[1].seconds_per_problem == pytest.approx(0.2)
    with pytest.raises(ValueError, match="same number of attempts"):
        scaling_curve([PROBLEM, other[:2]], seconds_per_token=0.01)
    with pytest.raises(ValueError, match="no problems"):
        scaling_curve([], seconds_per_token=0.01)


def test_table_and_figure_are_written(tmp_path):
    curves = {"student": scaling_curve([PROBLEM], 0.01), "teacher": scaling_curve([PROBLEM], 0.02)}
    csv_path, md_path = write_scaling_table(curves, tmp_path)
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "model,k,pass@k,maj@k,tokens_per_problem,seconds_per_problem"
    assert rows[1] == "student,1,0.5000,0.5000,10.0,0.100" and len(rows) == 1 + 2 * 3
    assert md_path.read_text().count("\n") == 2 + 6
    png = plot_scaling(curves, tmp_path / "test_time_scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
