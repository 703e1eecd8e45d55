"""Shared-prefix scoring equals scoring every whole row (tiny Qwen2-shaped model, fp32)."""

import pytest
import torch

from reopold_agent.batching import pad_right
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.shared_prefix import continuation_buckets, group_logprobs, groups_logprobs, prefix_groups
from tests import tiny


def test_prefix_groups_by_the_tokens_before_the_first_scored_position():
    rows = [[1, 2, 3, 9], [1, 2, 3, 8, 8], [1, 2, 4, 9], [1, 2, 3, 7]]
    groups, singles = prefix_groups(rows, [3, 3, 3, 3])
    assert [(g.prefix_len, g.rows) for g in groups] == [(3, [0, 1, 3])] and singles == [2]
    with pytest.raises(ValueError, match="row 1: first scored position 5"):
        prefix_groups(rows, [3, 5, 3, 3])


@pytest.mark.parametrize("with_entropy", [False, True])
def test_group_logprobs_equal_the_whole_rows_forward(with_entropy):
    torch.manual_seed(0)
    model = tiny.model(seed=4).eval()
    prefix = torch.randint(3, 200, (23,)).tolist()
    rows = [prefix + torch.randint(3, 200, (n,)).tolist() for n in (1, 9, 31, 4)]
    shared = group_logprobs(model, rows, len(prefix), pad_token_id=0, with_entropy=with_entropy, chunk_rows=7)
    ids, attn = pad_right(rows, 0)
    with torch.no_grad():
        logp_BT, ent_BT = sequence_logprobs(model, ids, attn, with_entropy=with_entropy)
    for b, row in enumerate(rows):
        logp_T, ent_T = shared[b]
        assert logp_T.shape == (len(row),)
        torch.testing.assert_close(logp_T, logp_BT[b, :len(row)], atol=2e-5, rtol=1e-5)
        if with_entropy:
            torch.testing.assert_close(ent_T, ent_BT[b, :len(row)], atol=2e-5, rtol=1e-5)
        else:
            assert ent_T is None


def test_group_logprobs_refuse_rows_without_the_prefix():
    model = tiny.model().eval()
    with pytest.raises(ValueError, match="same 3 tokens"):
        group_logprobs(model, [[1, 2, 3, 4], [1, 2, 5, 4]], 3, pad_token_id=0)
    with pytest.raises(ValueError, match="continue after them"):
        group_logprobs(model, [[1, 2, 3, 4], [1, 2, 3]], 3, pad_token_id=0)


def test_group_logprobs_give_the_whole_rows_gradient():
    """The prefix runs once; its activations collect every row's gradient, exactly."""
    torch.manual_seed(1)
    prefix = torch.randint(3, 200, (17,)).tolist()
    rows = [prefix + torch.randint(3, 200, (n,)).tolist() for n in (5, 12, 2)]
    weights = [torch.randn(len(r)) for r in rows]

    def grads(shared):
        model = tiny.model(seed=5)
        if shared:
            scored = [logp for logp, _ in group_logprobs(model, rows, len(prefix), pad_token_id=0)]
        else:
            ids, attn = pad_right(rows, 0)
            logp_BT, _ = sequence_logprobs(model, ids, attn)
            scored = [logp_BT[b, :len(r)] for b, r in enumerate(rows)]
        sum((w * logp).sum() for w, logp in zip(weights, scored)).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    shared, whole = grads(True), grads(False)
    assert shared.keys() == whole.keys() and shared
    for name in whole:
        torch.testing.assert_close(shared[name], whole[name], atol=1e-5, rtol=1e-4)


def _groups(seed: int) -> tuple[list[list[list[int]]], list[int]]:
    """Three groups with prefixes of 1, 23 and 9 tokens and rows of ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    groups, prefix_lens = [], [1, 23, 9]
    for P, lengths in zip(prefix_lens, ((3, 8), (1, 9, 31, 4), (12,))):
        prefix = torch.randint(3, 200, (P,), generator=g).tolist()
        groups.append([prefix + torch.randint(3, 200, (n,), generator=g).tolist() for n in lengths])
    return groups, prefix_lens


def test_several_groups_in_one_prefix_forward_equal_the_whole_rows_and_their_gradient():
    """Prefixes of other lengths are left-padded together, each row continuing at its own
    positions, continuations in buckets of similar length (one forward each, every bucket
    starting from the prefixes' cache): the log-probs, entropies and the parameters' gradient
    are those of whole rows."""
    groups, prefix_lens = _groups(7)
    rows = [row for group in groups for row in group]
    buckets = continuation_buckets([len(r) - P for group, P in zip(groups, prefix_lens) for r in group])
    assert len(buckets) >= 2, "the case must exercise several continuation buckets"
    weights = [torch.randn(len(r), generator=torch.Generator().manual_seed(len(r))) for r in rows]

    def run(shared):
        model = tiny.model(seed=8)
        calls = []
        model.model.register_forward_hook(lambda *_: calls.append(1))
        if shared:
            scored = groups_logprobs(model, groups, prefix_lens, pad_token_id=0, with_entropy=True, chunk_rows=5)
        else:
            ids, attn = pad_right(rows, 0)
            logp_BT, ent_BT = sequence_logprobs(model, ids, attn, with_entropy=True)
            scored = [(logp_BT[b, :len(r)], ent_BT[b, :len(r)]) for b, r in enumerate(rows)]
        sum((w * logp).sum() for w, (logp, _) in zip(weights, scored)).backward()
        return scored, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)

    (shared, shared_grads, forwards), (whole, whole_grads, _) = run(True), run(False)
    assert forwards == 1 + len(buckets)
    for (logp, ent), (logp_w, ent_w), row in zip(shared, whole, rows):
        assert logp.shape == ent.shape == (len(row),)
        torch.testing.assert_close(logp[1:], logp_w[1:], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ent[1:], ent_w[1:], atol=2e-5, rtol=1e-5)
    assert shared_grads.keys() == whole_grads.keys() and shared_grads
    for name in whole_grads:
        torch.testing.assert_close(shared_grads[name], whole_grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("packed", [False, True])
def test_teacher_scores_groups_once_with_the_same_log_probs(packed):
    """The hf teacher with shared_prefix: two prompts x 3 rollouts and a lone row score as
    without it; rows without a student token are scored the usual way."""
    from reopold_agent.teacher import TeacherScorer
    from reopold_agent.teacher_scoring import ScoringRow

    torch.manual_seed(2)
    rows = []
    for prompt_len, lengths in ((11, (4, 9, 1)), (20, (6, 6, 13))):
        prompt = torch.randint(3, 200, (prompt_len,)).tolist()
        for n in lengths:
            rows.append(ScoringRow(prompt + torch.randint(3, 200, (n,)).tolist(), [0] * prompt_len + [1] * n))
    rows.append(ScoringRow(torch.randint(3, 200, (9,)).tolist(), [0] * 4 + [1] * 5))
    rows.append(ScoringRow(torch.randint(3, 200, (5,)).tolist(), [0] * 5))
    model = tiny.model(seed=6)
    plain = TeacherScorer(model, pad_token_id=0, packed=packed).score_rows(rows)
    shared_scorer = TeacherScorer(model, pad_token_id=0, packed=packed, shared_prefix=True)
    shared = shared_scorer.score_rows(rows)
    assert len(shared) == len(rows)
    for a, b, row in zip(plain, shared, rows):
        assert b.shape == (len(row.token_ids),)
        torch.testing.assert_close(b[1:], a[1:], atol=2e-5, rtol=1e-5)


def test_continuation_buckets_hold_rows_of_similar_length_longest_first():
    """Every row in exactly one bucket, each filling at least half its bucket's width; equal
    lengths make one bucket (one forward, as before buckets)."""
    lengths = [30, 90, 44, 61, 90, 31, 45, 120]
    buckets = continuation_buckets(lengths)
    assert sorted(g for b in buckets for g in b) == list(range(len(lengths)))
    for bucket in buckets:
        assert min(lengths[g] for g in bucket) >= 0.5 * max(lengths[g] for g in bucket)
    assert [lengths[g] for g in buckets[0]] == [120, 90, 90, 61]
    assert continuation_buckets([50] * 6) == [list(range(6))]
