import math

import pytest
import torch

from reopold_agent.batching import collate
from reopold_agent.trajectory import Trajectory


def traj(ids, src, reward=0.0, prompt_id="p0", teacher=True):
    lp = [-0.5 if s == "model" else None for s in src]
    return Trajectory(
        token_ids=ids, source=src, turn=[0] * len(ids), loss_mask=[int(s == "model") for s in src],
        logprobs=lp, entropy=[1.0 if s == "model" else None for s in src], messages=[], reward=reward,
        prompt_id=prompt_id, teacher_logprobs=([None] + [-1.0] * (len(ids) - 1)) if teacher else None,
    )


def test_valid_exactly_on_model_tokens_and_padding_ignored():
    # pad id 7 equals a real token id: validity must come from the loss mask, not the id
    a = traj([1, 7, 7, 3], ["prompt", "model", "model", "tool"])
    b = traj([1, 2], ["prompt", "model"])
    batch = collate([a, b], pad_token_id=7)
    assert batch.input_ids_BT.tolist() == [[1, 7, 7, 3], [1, 2, 7, 7]]
    assert batch.valid_BT.tolist() == [[False, True, True, False], [False, True, False, False]]
    assert batch.attention_mask_BT.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.old_logprobs_BT[0].tolist() == [0.0, -0.5, -0.5, 0.0]
    assert batch.teacher_logprobs_BT[1].tolist() == [0.0, -1.0, 0.0, 0.0]


def test_tool_token_with_loss_mask_is_rejected():
    bad = traj([1, 2, 3], ["prompt", "model", "tool"])
    bad.loss_mask[2] = 1
    with pytest.raises(ValueError, match="source 'tool'"):
        collate([bad], pad_token_id=0)


def test_missing_or_nonfinite_teacher_on_model_token_is_rejected():
    t = traj([1, 2, 3], ["prompt", "model", "model"])
    t.teacher_logprobs[2] = math.nan
    with pytest.raises(ValueError, match=r"teacher_logprobs\[2\]"):
        collate([t], pad_token_id=0)
    with pytest.raises(ValueError, match="no teacher scores"):
        collate([traj([1, 2], ["prompt", "model"], teacher=False)], pad_token_id=0)


def test_group_advantages_per_prompt():
    ts = [traj([1, 2], ["prompt", "model"], reward=r, prompt_id=p) for r, p in [(1, "a"), (0, "a"), (1, "b"), (1, "b")]]
    adv = collate(ts, pad_token_id=0).advantages_B
    assert adv[0] > 0 > adv[1] and adv[2] == 0 and adv[3] == 0
    torch.testing.assert_close(adv[0], -adv[1])


def test_select_trims_to_longest_row():
    a = traj([1, 2, 3, 4], ["prompt", "model", "model", "model"])
    b = traj([1, 2], ["prompt", "model"])
    sub = collate([a, b], pad_token_id=0).select([1])
    assert sub.input_ids_BT.shape == (1, 2) and sub.traj_index_B.tolist() == [1]
