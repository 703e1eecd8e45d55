"""Packed sequences: the layout, and scores and gradients equal to the padded path's."""

import pytest
import torch

from reopold_agent.demo.tiny_models import TinyLMSpec
from reopold_agent.sequence_packing import first_fit_decreasing, pack_rows, width_groups
from reopold_agent.sequence_scoring import SequenceScorer, sequence_logprobs
from reopold_agent.teacher import TeacherScorer
from reopold_agent.teacher_scoring import ScoringRow
from tests import tiny

LENGTHS = [5, 17, 3, 40, 22, 9, 1, 30, 40, 12]
"""Several-fold spread, two rows at full width, a single-token row."""
QWEN2 = TinyLMSpec(family="qwen2", hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


def _rows(lengths=LENGTHS, seed=0):
    T = max(lengths)
    g = torch.Generator().manual_seed(seed)
    attn_BT = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()
    return torch.randint(3, 250, (len(lengths), T), generator=g) * attn_BT, attn_BT


def test_rows_are_packed_first_fit_decreasing_with_positions_reset():
    ids_BT = torch.tensor([[11, 12, 13], [21, 0, 0], [31, 32, 0]])
    attn_BT = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    packed = pack_rows(ids_BT, attn_BT, pad_token_id=0)
    # capacity 3: row 0 alone; rows 2 and 1 share the second packed row
    assert packed.ids_PL.tolist() == [[11, 12, 13], [31, 32, 21]]
    assert packed.position_ids_PL.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert packed.fill_P == [3, 3]
    assert packed.packed_index_N.tolist() == [0, 1, 2, 5, 3, 4]
    assert packed.padded_index_N.tolist() == [0, 1, 2, 3, 6, 7]
    from_M, to_M = packed.prediction_pairs()
    assert from_M.tolist() == [0, 1, 3] and to_M.tolist() == [1, 2, 7]  # no pair crosses a sequence


def test_an_unfilled_tail_is_a_sequence_of_its_own_and_capacity_is_respected():
    ids_BT = torch.tensor([[1, 2, 3, 4], [5, 0, 0, 0]])
    attn_BT = (ids_BT > 0).long()
    packed = pack_rows(ids_BT, attn_BT, pad_token_id=9, capacity=8)
    assert packed.ids_PL.tolist() == [[1, 2, 3, 4, 5]]
    assert packed.position_ids_PL.tolist() == [[0, 1, 2, 3, 0]]
    tail = pack_rows(ids_BT[:, :3], torch.tensor([[1, 1, 1], [1, 1, 0]]), pad_token_id=9)
    assert tail.ids_PL.tolist() == [[1, 2, 3], [5, 0, 9]] and tail.position_ids_PL.tolist() == [[0, 1, 2], [0, 1, 0]]
    assert first_fit_decreasing([4, 3, 2, 1], 5) == [[0, 3], [1, 2]]
    with pytest.raises(ValueError, match="does not fit a packed row of 3"):
        first_fit_decreasing([4], 3)


def test_left_padded_rows_are_refused():
    with pytest.raises(ValueError, match="right-padded"):
        pack_rows(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]), pad_token_id=0)


def test_width_groups_keep_every_row_near_the_group_width():
    assert width_groups([40, 38, 33, 31, 10, 9]) == [(slice(0, 3), 40), (slice(3, 4), 31), (slice(4, 6), 10)]
    assert width_groups([5]) == [(slice(0, 1), 5)]


@pytest.mark.parametrize("spec,attention", [(QWEN2, "sdpa"), ("micro", "sdpa"), (QWEN2, "eager")])
def test_packed_scores_and_gradients_equal_the_padded_path(spec, attention):
    model = tiny.model(spec, seed=3)
    model.set_attn_implementation(attention)
    ids_BT, attn_BT = _rows()
    real_BT = attn_BT.bool()
    real_BT[:, 0] = False  # column 0 has no prefix
    results = {}
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        logp_BT, ent_BT = sequence_logprobs(model, ids_BT, attn_BT, with_entropy=True, packed=packed, chunk_rows=64)
        (logp_BT * real_BT).sum().backward()
        results[packed] = (logp_BT.detach(), ent_BT, {n: p.grad.clone() for n, p in model.named_parameters()})
    (logp, ent, grads), (p_logp, p_ent, p_grads) = results[False], results[True]
    torch.testing.assert_close(p_logp[real_BT], logp[real_BT], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p_ent[real_BT], ent[real_BT], rtol=1e-5, atol=1e-5)
    assert (p_logp[~real_BT] == 0).all() and (p_ent[~real_BT] == 0).all()
    for name, grad in grads.items():  # float rounding of sums over ~200 tokens, relative to the largest entry
        torch.testing.assert_close(p_grads[name], grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))


def test_the_scorer_packs_when_asked_and_the_teacher_scores_the_same():
    model = tiny.model(QWEN2, seed=4)
    ids_BT, attn_BT = _rows(seed=1)
    real_BT = attn_BT.bool()
    real_BT[:, 0] = False
    with torch.no_grad():
        padded, _ = SequenceScorer(model)(ids_BT, attn_BT)
        packed, _ = SequenceScorer(model, packed=True)(ids_BT, attn_BT)
    torch.testing.assert_close(packed[real_BT], padded[real_BT], rtol=1e-5, atol=1e-5)
    assert (packed[~real_BT] == 0).all() and not (padded[~real_BT] == 0).all()  # really the packed path
    rows = [ScoringRow(ids_BT[b, :n].tolist(), [1] * n) for b, n in enumerate(LENGTHS)]
    plain = TeacherScorer(model, pad_token_id=0, batch_rows=4).score_rows(rows)
    packed_rows = TeacherScorer(model, pad_token_id=0, batch_rows=4, packed=True).score_rows(rows)
    for a, b in zip(plain, packed_rows):
        assert a.shape == b.shape
        torch.testing.assert_close(b[1:], a[1:], rtol=1e-5, atol=1e-5)


def test_rows_of_similar_length_run_padded_and_spread_rows_run_packed():
    model = tiny.model(QWEN2, seed=5)
    calls = []
    model.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((tuple(kwargs["input_ids"].shape), kwargs["attention_mask"] is None)),
        with_kwargs=True)
    similar_BT, similar_attn_BT = _rows([40, 38, 39, 40])
    with torch.no_grad():
        logp_BT, _ = sequence_logprobs(model, similar_BT, similar_attn_BT, packed=True)
    assert calls == [((4, 40), False)]  # packing would save under 10% of the slots
    assert (logp_BT[similar_attn_BT == 0] == 0).all()
    calls.clear()
    spread_BT, spread_attn_BT = _rows()
    with torch.no_grad():
        sequence_logprobs(model, spread_BT, spread_attn_BT, packed=True)
    assert calls and all(no_mask for _, no_mask in calls)  # packed: positions, no attention mask
    assert sum(shape[0] * shape[1] for shape, _ in calls) <= 0.9 * spread_BT.numel()


@pytest.mark.parametrize("packed", [True, False])
def test_model_packed_sequences_reaches_the_hf_teacher(tmp_path, packed):
    from reopold_agent.commands import load_model, load_tokenizer
    from reopold_agent.teacher_setup import build_teacher
    from reopold_agent.train_config import ModelConfig, TrainConfig

    student_path, teacher_path = tiny.save_tool_math_models(tmp_path)
    config = TrainConfig(model=ModelConfig(packed_sequences=packed))
    assert TrainConfig().model.packed_sequences  # on by default
    tokenizer = load_tokenizer(str(student_path))
    scorer = build_teacher(config, str(teacher_path), tokenizer, student=load_model(str(student_path),
                           dtype=torch.float32, role="student"), vision=None, device="cpu", load_model=load_model,
                           load_tokenizer=load_tokenizer, teacher_dtype=torch.float32)
    assert scorer.packed is packed
