"""Stopping a role's supervised training by measured accuracy (measured_stop.train_to_target).

The measurement here is a fixed function of the training step, so the search itself is checked:
where it measures, when it goes back and refines, and when it gives up.
"""

from __future__ import annotations

import pytest

from reopold_agent.demo.measured_stop import AccuracyTarget, EmbeddedBuildError, train_to_target
from reopold_agent.supervised import SupervisedConfig, SupervisedRun, tokenize_conversation
from tests import tiny


def _run() -> SupervisedRun:
    examples = [tokenize_conversation(tiny.tokenizer(), tiny.CONVERSATION)]
    return SupervisedRun(tiny.model(seed=1), examples, SupervisedConfig(steps=40, batch_size=1, lr=1e-3,
                                                                         warmup_steps=1), pad_token_id=0)


def _curve(points: dict[int, float]):
    """Accuracy as a step function of the run's step: the value of the last point at or before it."""
    def at(run):
        return lambda: max((s, a) for s, a in points.items() if s <= run.step)[1]
    return at


def test_stops_at_the_first_measurement_inside_the_band():
    run = _run()
    measure = _curve({0: 0.0, 12: 0.2, 30: 0.9})(run)
    out = train_to_target(run, AccuracyTarget(low=0.15, high=0.35, first_check=4, every=4, fine_every=1,
                                              max_steps=40), measure, log=lambda _: None)
    assert out["steps"] == 12 and out["accuracy"] == 0.2
    assert [s for s, _ in out["measurements"]] == [4, 8, 12]
    assert run.step == 12


def test_a_jump_over_the_band_goes_back_and_measures_finer():
    run = _run()
    measure = _curve({0: 0.0, 10: 0.25, 11: 0.9})(run)
    logs = []
    out = train_to_target(run, AccuracyTarget(low=0.15, high=0.35, first_check=4, every=4, fine_every=1,
                                              max_steps=40), measure, log=logs.append)
    assert [s for s, _ in out["measurements"]] == [4, 8, 12, 9, 10]
    assert out["steps"] == 10 and out["accuracy"] == 0.25 and run.step == 10
    assert any("back to step 8" in line for line in logs)


def test_a_jump_over_the_band_even_at_the_fine_spacing_fails_with_one_line():
    run = _run()
    measure = _curve({0: 0.0, 10: 0.9})(run)
    with pytest.raises(EmbeddedBuildError, match=r"jumped past its accuracy band \[15%, 35%\] to 90.0% at step 10"):
        train_to_target(run, AccuracyTarget(low=0.15, high=0.35, first_check=4, every=4, fine_every=2,
                                            max_steps=40), measure, log=lambda _: None, role="student")


def test_never_reaching_the_band_fails_after_max_steps():
    run = _run()
    with pytest.raises(EmbeddedBuildError, match=r"reached only 5.0% greedy accuracy after 12 steps \(needs 95%"):
        train_to_target(run, AccuracyTarget(low=0.95, first_check=4, every=4, fine_every=4, max_steps=12),
                        lambda: 0.05, log=lambda _: None, role="teacher")
    assert run.step == 12


def test_a_band_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="accuracy band"):
        AccuracyTarget(low=0.5, high=0.4)


@pytest.mark.parametrize("spacing", [dict(every=5, fine_every=10), dict(first_check=50, max_steps=40),
                                     dict(fine_every=0)])
def test_inconsistent_spacings_are_refused(spacing):
    with pytest.raises(ValueError, match="fine_every"):
        AccuracyTarget(low=0.5, **spacing)
