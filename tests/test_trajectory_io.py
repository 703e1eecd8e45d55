import math

import pytest

from reopold_agent.trajectory import ImageRecord, TokenSource, Trajectory
from reopold_agent.trajectory_io import (
    read_trajectories,
    trajectory_from_json,
    trajectory_to_json,
    write_trajectories,
)


def make_traj(step=0, **kw):
    src = ["prompt", "prompt", "model", "model", "tool", "model"]
    return Trajectory(
        token_ids=[5, 6, 7, 8, 9, 10],
        source=src,
        turn=[0, 0, 1, 1, 1, 2],
        loss_mask=[int(s == "model") for s in src],
        logprobs=[None, None, -0.1234567890123, -2.5e-08, None, -3.0],
        teacher_logprobs=[None, -1.0, -0.2, -math.inf, -4.0, math.nan],
        entropy=[None, None, 1.5, 0.25, None, 0.0],
        messages=[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        reward=1.0,
        task="tool_math",
        prompt_id="train-7",
        step=step,
        images=[ImageRecord(path="images/abc.png", token_start=1, token_end=2, grid_thw=[1, 2, 2])],
        **kw,
    )


def assert_same(a: Trajectory, b: Trajectory):
    for key in ("token_ids", "source", "turn", "loss_mask", "logprobs", "entropy", "messages", "reward",
                "step", "images", "prompt_id", "task"):
        assert getattr(a, key) == getattr(b, key), key
    for x, y in zip(a.teacher_logprobs, b.teacher_logprobs):
        assert (x is None and y is None) or (math.isnan(x) and math.isnan(y)) or x == y


def test_round_trip_is_exact_including_nonfinite():
    traj = make_traj()
    line = trajectory_to_json(traj)
    assert "NaN" in line and "\n" not in line
    assert_same(traj, trajectory_from_json(line))


def test_field_names_for_outside_tools():
    line = trajectory_to_json(make_traj())
    for key in ("token_ids", "source", "loss_mask", "logprobs", "teacher_logprobs", "entropy", "messages",
                "reward", "step", "schema_version"):
        assert f'"{key}"' in line


def test_corrupt_line_reported_with_line_number_rest_loads(tmp_path):
    path = tmp_path / "traj.jsonl"
    write_trajectories(path, [make_traj(0), make_traj(1)])
    with open(path, "a") as fh:
        fh.write("{not json\n")
    write_trajectories(path, [make_traj(3)])
    with open(path, "a") as fh:
        fh.write(trajectory_to_json(make_traj(4))[:40])  # cut short, as if still being written
    good, bad = read_trajectories(path)
    assert [t.step for t in good] == [0, 1, 3]
    assert [e.line for e in bad] == [3, 5]
    assert "still being written" in bad[1].reason
    assert str(bad[0]).startswith(f"{path}:3:")


def test_length_mismatch_rejected():
    with pytest.raises(ValueError, match="length 2"):
        Trajectory(token_ids=[1, 2], source=["prompt"], turn=[0, 0], loss_mask=[0, 0],
                   logprobs=[None, None], messages=[])


def test_check_masks():
    traj = make_traj()
    traj.check_masks()
    traj.loss_mask[4] = 1
    with pytest.raises(ValueError, match="token 4 has source 'tool'"):
        traj.check_masks()
    assert TokenSource.MODEL.value == "model"


def test_newer_schema_rejected():
    line = trajectory_to_json(make_traj()).replace('"schema_version":1', '"schema_version":99')
    with pytest.raises(ValueError, match="newer"):
        trajectory_from_json(line)


CORRUPTIONS = [
    ("images", [1]),
    ("images", [{"path": 3, "token_start": 1, "token_end": 2}]),
    ("token_ids", [5, 6, "7", 8, 9, 10]),
    ("token_ids", "567"),
    ("source", ["prompt", "prompt", "banana", "model", "tool", "model"]),
    ("turn", [0, 0, 1.5, 1, 1, 2]),
    ("loss_mask", [0, 0, 2, 1, 0, 1]),
    ("logprobs", [None, None, [1], -2.5e-08, None, -3.0]),
    ("teacher_logprobs", {"a": 1}),
    ("entropy", [None, None, "high", 0.25, None, 0.0]),
    ("messages", [{"role": "user", "content": 3}]),
    ("messages", "hello"),
    ("messages", [{"role": "banana", "content": "hi"}]),
    ("messages", [{"role": "user", "content": [1]}]),
    ("reward", "1.0"),
    ("reward", True),
    ("truncated", "no"),
    ("step", "abc"),
    ("tool_calls", 1.5),
    ("task", ["tool_math"]),
    ("info", [1]),
]


@pytest.mark.parametrize("field, value", CORRUPTIONS, ids=[f"{f}={v!r}"[:40] for f, v in CORRUPTIONS])
def test_a_wrong_typed_field_skips_its_line_with_the_field_named(tmp_path, field, value):
    import json

    good = trajectory_to_json(make_traj(0))
    record = json.loads(good)
    record[field] = value
    path = tmp_path / "t.jsonl"
    path.write_text(good + "\n" + json.dumps(record) + "\n" + good + "\n")
    trajs, errors = read_trajectories(path)
    assert len(trajs) == 2 and len(errors) == 1
    assert str(errors[0]).startswith(f"{path}:2: field {field!r}: expected ")
