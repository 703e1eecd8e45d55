"""PNG figures of a run: training curves, token-reward histogram, reward against entropy."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from reopold_agent.plots import (
    metric_series, plot_reward_histogram, plot_run, read_metrics, token_rewards)

from .replay.fixtures import real_run, tool_trajectory, write_synthetic_run


def _check_png(path, min_size=(600, 400)):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 20  # drawn, not blank


def test_plots_of_a_real_run(tmp_path):
    run = real_run()
    result = plot_run(run, tmp_path / "figs")
    names = sorted(p.name for p in result.paths)
    assert names == ["reward_histogram.png", "reward_vs_entropy.png", "training_curves.png"]
    assert result.errors == [] and result.notes == []
    for path in result.paths:
        _check_png(path)
    assert (tmp_path / "figs" / "training_curves.png").stat().st_size > 20_000


def test_metrics_reader_reports_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 0, "objective/loss": 1.0}) + "\n{oops\n"
                    + json.dumps({"step": 1, "objective/loss": None}) + "\n"
                    + json.dumps({"step": 2, "objective/loss": 0.5}) + "\n")
    records, errors = read_metrics(path)
    assert len(records) == 3 and [(e.line, e.path) for e in errors] == [(2, str(path))]
    steps, values = metric_series(records, "objective/loss")
    assert steps.tolist() == [0.0, 2.0] and values.tolist() == [1.0, 0.5]


def test_token_rewards_on_valid_tokens_only():
    rewards, entropies = token_rewards([tool_trajectory(0), tool_trajectory(0, teacher_logprobs=None)])
    assert rewards.tolist() == pytest.approx([-0.5, 0, -3, 0, -0.1, 2, -3])
    assert entropies.tolist() == [0.5, 1.0, 2.0, 0.1, 3.0, 0.2, 1.5]


def test_histogram_marks_the_floor(tmp_path):
    rng = np.random.default_rng(0)
    rewards = np.concatenate([rng.normal(0, 0.05, 5000), -rng.exponential(2.0, 1000)])
    path = plot_reward_histogram(rewards, math.log(0.3) / 0.7, tmp_path / "h.png")
    _check_png(path)


def test_synthetic_run_skips_bad_lines_and_notes_what_is_missing(tmp_path):
    run = write_synthetic_run(tmp_path / "run")
    (run / "metrics.jsonl").write_text("not json\n")
    result = plot_run(run)
    assert [p.name for p in result.paths] == ["reward_histogram.png", "reward_vs_entropy.png"]
    assert result.paths[0].parent == run / "plots"
    assert any("training curves skipped" in n for n in result.notes)
    assert {(e.line) for e in result.errors if e.path.endswith("metrics.jsonl")} == {1}
    assert any(e.path.endswith("step_000001.jsonl") and e.line == 2 for e in result.errors)
