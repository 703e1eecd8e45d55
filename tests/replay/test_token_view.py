"""Per-token fields, REOPOLD selection per phase, colours and the per-turn KL (hand-derived)."""

import math

import pytest

from reopold_agent.replay.loading import RunInfo
from reopold_agent.replay.token_view import (
    FIELDS, build_token_table, colour_scale, fmt, step_entropy_threshold, token_details,
    trajectory_kl, turn_kl)

from .fixtures import CONFIG, FLOOR, image_trajectory, tool_trajectory

INFO = RunInfo(None, CONFIG)
MODEL = [3, 4, 5, 6, 9, 10, 11]


def test_rewards_and_clipped_rewards():
    table = build_token_table(tool_trajectory(0), INFO)
    assert [table.reward[t] for t in MODEL] == pytest.approx([-0.5, 0, -3, 0, -0.1, 2, -3])
    assert [table.clipped[t] for t in MODEL] == pytest.approx([-0.5, 0, FLOOR, 0, -0.1, 2, FLOOR])
    assert table.reward[0] is None and table.reward[7] is None  # prompt and tool tokens


def test_exploration_drops_tokens_below_the_floor():
    table = build_token_table(tool_trajectory(0), INFO)
    assert table.phase == "exploration" and table.threshold is None
    assert [table.selection[t] for t in MODEL] == [True, True, False, True, True, True, False]


def test_refinement_uses_the_step_threshold():
    trajs = [tool_trajectory(1), image_trajectory(1)]
    tau = step_entropy_threshold(trajs, 0.2)
    assert tau == 3.0  # 2nd largest of 10 valid entropies
    table = build_token_table(trajs[0], INFO, threshold=tau)
    assert table.phase == "refinement"
    assert [table.selection[t] for t in MODEL] == [False, False, False, False, True, False, False]
    alone = build_token_table(trajs[0], INFO)  # without the step: this episode's own top-20%
    assert [alone.selection[t] for t in MODEL] == [False, False, True, False, True, False, False]


def test_absent_values_are_absent_not_errors():
    table = build_token_table(tool_trajectory(1, teacher_logprobs=None, entropy=None), INFO)
    assert all(v is None for v in table.reward + table.clipped + table.selection)
    assert table.note == "no teacher scores yet"
    details = dict(token_details(table, 3, "x"))
    assert details["reward R"] == "absent" and details["teacher log-prob"] == "absent"
    assert details["student log-prob"] == "-1.0000"
    evaluation = build_token_table(tool_trajectory(1), INFO, evaluation=True)
    assert evaluation.phase is None and evaluation.note.startswith("evaluation episode")


def test_token_details_lists_every_field():
    table = build_token_table(tool_trajectory(0), INFO)
    details = dict(token_details(table, 5, " x"))
    assert details == {
        "token": "5 / 12", "id": "15", "text": "' x'", "source": "model", "turn": "1",
        "reward R": "-3.0000", "clipped reward max(R,c)": "-1.7200",
        "student log-prob": "-2.0000", "teacher log-prob": "-5.0000", "entropy": "+2.0000",
        "REOPOLD selection": "no", "loss mask": "1", "trainer - sampler log-prob": "absent"}


def test_a_vllm_episode_shows_the_gap_and_rewards_from_the_trainers_logprobs():
    # the trainer recomputed token 5 (-2.0 sampled) as -1.0: R = -5 - (-1) = -4, gap +1
    trainer = [None] * 3 + [-1.0, -0.5, -1.0, -0.25] + [None] * 2 + [-0.1, -3.0, -1.0]
    table = build_token_table(tool_trajectory(0, trainer_logprobs=trainer, sampler="vllm"), INFO)
    gaps = table.values("mismatch")
    assert gaps[5] == 1.0 and gaps[3] == 0.0 and gaps[0] is None and gaps[7] is None
    assert table.reward[5] == -4.0 and table.reward[3] == -0.5
    details = dict(token_details(table, 5, " x"))
    assert details["trainer - sampler log-prob"] == "+1.0000" and details["student log-prob"] == "-2.0000"
    scale = colour_scale("mismatch", table)
    assert scale.colour(math.log(2.0)) == scale.colour(5.0) != scale.colour(0.0) == "#f7f7f7"


def test_turn_kl_is_the_mean_of_logp_minus_teacher():
    kl = turn_kl(tool_trajectory(0))
    assert kl == pytest.approx({1: 0.875, 2: 1.1 / 3})
    assert trajectory_kl(tool_trajectory(0)) == pytest.approx(4.6 / 7)
    assert turn_kl(tool_trajectory(0, teacher_logprobs=None)) == {1: None, 2: None}


def test_colour_scales_and_legends():
    table = build_token_table(tool_trajectory(0), INFO)
    reward = colour_scale("reward", table)
    assert reward.colour(-4.0) == "#b2182b" and reward.colour(0.0) == "#f7f7f7"
    assert reward.colour(10.0) == "#2166ac" and reward.colour(None) is None
    assert reward.colour(-2.0) == "#ef8a62"
    assert ("floor c=-1.72", reward.colour(FLOOR)) in reward.legend()
    assert colour_scale("selection", table).colour(True) != colour_scale("selection", table).colour(False)
    assert colour_scale("entropy", table).vmax == 3.0
    assert all(colour_scale(f, table).legend() for f in FIELDS)
    assert fmt(None) == "absent" and fmt(0.5) == "+0.5000" and fmt(True) == "yes"
