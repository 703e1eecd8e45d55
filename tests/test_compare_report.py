"""The comparison report: summaries over seeds, rollouts to target, the table and figures."""

import json
import math

import pytest
import yaml

from reopold_agent.compare_report import (plot_compare_accuracy, plot_compare_diagnostics, read_run,
                                          summarise, write_compare_table)

# (objective, seed) -> greedy and sampled accuracy after 0, 1 and 2 steps (4 rollouts a step)
RUNS = {
    ("rkl", 0): ([0.1, 0.2, 0.3], [0.1, 0.1, 0.2]),
    ("rkl", 1): ([0.1, 0.3, 0.35], [0.0, 0.2, 0.2]),
    ("reopold", 0): ([0.1, 0.4, 0.5], [0.1, 0.3, 0.4]),
    ("reopold", 1): ([0.1, 0.3, 0.5], [0.1, 0.2, 0.4]),
}


def _write_run(root, objective, seed, greedy, sampled):
    run = root / f"{objective}_seed{seed}"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"train": {"steps": 2, "prompts_per_step": 2}, "rollout": {"group_size": 2}}))
    lines = []
    for step in range(3):
        if step < 2:
            lines.append(json.dumps({"step": step, "time/step_s": 30.0, "objective/entropy_mean": 1.0 + step,
                                     "objective/reward_mean": -0.5, "objective/selected_ratio": 0.4}))
        lines.append(json.dumps({"step": step, "eval/greedy_accuracy": greedy[step],
                                 "eval/sampled_accuracy": sampled[step]}))
    lines.append('{"step": 3, "eval/greedy')  # a line cut short: skipped and reported
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def curves(tmp_path):
    return [read_run(_write_run(tmp_path, o, s, *values), o, s) for (o, s), values in RUNS.items()]


def test_read_run(curves):
    rkl0 = curves[0]
    assert rkl0.eval_steps == [0, 1, 2] and rkl0.eval_rollouts == [0, 4, 8]
    assert rkl0.greedy == [0.1, 0.2, 0.3] and rkl0.seconds == 60.0
    assert len(rkl0.errors) == 1 and rkl0.errors[0].line == 6


def test_summary_target_defaults_to_the_reference_final_accuracy(curves):
    summaries, target = summarise(curves, reference="rkl")
    assert target == pytest.approx(0.325)
    rkl, reopold = summaries
    assert (rkl.objective, reopold.objective) == ("rkl", "reopold")
    assert rkl.final_greedy == pytest.approx((0.325, math.sqrt(2 * 0.025 ** 2)))
    assert reopold.final_sampled == pytest.approx((0.4, 0.0))
    assert rkl.best_greedy == pytest.approx((0.325, rkl.final_greedy[1]))
    # seed means: rkl 0.1, 0.25, 0.325 -> reaches at step 2 (8 rollouts);
    # reopold 0.1, 0.35, 0.5 -> step 1 (4 rollouts): twice as sample-efficient
    assert rkl.rollouts_to_target == 8 and reopold.rollouts_to_target == 4
    assert reopold.efficiency_vs_reference == pytest.approx(2.0) and rkl.efficiency_vs_reference == 1.0
    assert reopold.minutes_per_run == pytest.approx(1.0) and reopold.seeds == 2


def test_explicit_target_and_missing_reference(curves):
    summaries, target = summarise(curves, reference="grpo", target=0.45)
    assert target == 0.45
    rkl, reopold = summaries
    assert rkl.rollouts_to_target is None and reopold.rollouts_to_target == 8
    assert reopold.efficiency_vs_reference is None
    assert summarise(curves, reference="grpo")[1] is None


def test_table_and_figures(curves, tmp_path):
    summaries, target = summarise(curves)
    csv_path, md_path = write_compare_table(summaries, target, "rkl", tmp_path / "out")
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("objective,seeds,final_greedy_mean") and rows[0].endswith("efficiency_vs_rkl,minutes_per_run")
    assert rows[2].startswith("reopold,2,0.5,0.0,0.4,0.0,0.5,0.0,4,2.000,1.00")
    md = md_path.read_text()
    assert "Target: 32.5% greedy" in md and "| reopold | 2 | 50.0 ± 0.0 | 40.0 ± 0.0 | 50.0 ± 0.0 | 4 | 2.00x | 1.0 |" in md
    for png in (plot_compare_accuracy(curves, tmp_path / "a.png"), plot_compare_diagnostics(curves, tmp_path / "d.png")):
        assert png.read_bytes()[:4] == b"\x89PNG"
