"""Reverse-KL baselines: hand values and gradients, and Remark 3.1 checked by enumeration."""

import itertools
import math

import pytest
import torch

from reopold_agent.objectives import ObjectiveInputs, RklConfig, rkl_objective, rkl_sg_objective

F64 = torch.float64
NAN, INF = math.nan, math.inf


def make_batch(log_ratio=(0.1, -0.1, 0.0)):
    # Valid tokens 0 and 1; token 2 is masked and holds NaN/inf everywhere.
    # R = teacher - logp = [0.5, -1.0]; rho = [e^0.1, e^-0.1]; N = 2.
    logp = torch.tensor([[-1.0, -2.0, NAN]], dtype=F64, requires_grad=True)
    old = logp.detach() - torch.tensor([log_ratio], dtype=F64)
    old[0, 2] = -INF
    return ObjectiveInputs(logprobs=logp, old_logprobs=old,
                           teacher_logprobs=torch.tensor([[-0.5, -3.0, INF]], dtype=F64),
                           entropy=torch.tensor([[1.0, 2.0, NAN]], dtype=F64),
                           loss_mask=torch.tensor([[1.0, 1.0, 0.0]]))


# loss = -(0.5 e^0.1 - e^-0.1) / 2 = 0.17612597949906975 for both (the value ignores sg).
LOSS = -(0.5 * math.exp(0.1) - math.exp(-0.1)) / 2


def test_rkl_value_and_gradient_through_reward():
    batch = make_batch()
    loss, stats = rkl_objective(batch, step=0, config=RklConfig())
    assert loss.item() == pytest.approx(LOSS, abs=1e-12)
    assert loss.item() == pytest.approx(0.17612597949906975, abs=1e-12)
    loss.backward()
    # d/dlogp [-rho (teacher - logp)] / N = -rho (R - 1) / N: [-e^.1 (-.5) / 2, -e^-.1 (-2) / 2]
    expected = torch.tensor([[0.25 * math.exp(0.1), math.exp(-0.1), 0.0]], dtype=F64)
    torch.testing.assert_close(batch.logprobs.grad, expected, atol=1e-12, rtol=0)
    assert stats["objective/reward_mean"] == pytest.approx(-0.25, abs=1e-12)
    assert stats["objective/num_valid"] == stats["objective/num_selected"] == 2.0


def test_rkl_sg_value_and_gradient_through_ratio_only():
    batch = make_batch()
    loss, _ = rkl_sg_objective(batch, step=0, config=RklConfig())
    assert loss.item() == pytest.approx(LOSS, abs=1e-12)
    loss.backward()
    # -rho R / N: [-e^.1 * .5 / 2, -e^-.1 * (-1) / 2]
    expected = torch.tensor([[-0.25 * math.exp(0.1), 0.5 * math.exp(-0.1), 0.0]], dtype=F64)
    torch.testing.assert_close(batch.logprobs.grad, expected, atol=1e-12, rtol=0)


def test_rkl_ratio_clip():
    # log ratios 0.5 / -0.5 with eps 0.2: token 0 (R=+.5, rho=e^.5) clips to 1.2 * .5;
    # token 1 (R=-1, rho=e^-.5) clips to 0.8 * -1. loss = -(0.6 - 0.8) / 2 = 0.1, no gradient
    # through rho; vanilla keeps the R path: d/dlogp0 [-1.2 (t0 - logp0) / 2] = +0.6, and
    # d/dlogp1 [-0.8 (t1 - logp1) / 2] = +0.4.
    batch = make_batch(log_ratio=(0.5, -0.5, 0.0))
    loss, stats = rkl_objective(batch, step=0, config=RklConfig(ratio_clip=0.2))
    assert loss.item() == pytest.approx(0.1, abs=1e-12)
    assert stats["objective/ratio_clip_frac"] == 1.0
    loss.backward()
    torch.testing.assert_close(batch.logprobs.grad, torch.tensor([[0.6, 0.4, 0.0]], dtype=F64),
                               atol=1e-12, rtol=0)


# --- Remark 3.1 on an enumerable policy ---------------------------------------------------------
#
# Student: o1 ~ softmax(a) over V tokens, o2 | o1 ~ softmax(b[o1]); teacher likewise with fixed
# logits. With rho = 1 at old = theta, the per-sample surrogate gradients are
#   vanilla: sum_t (g_t R_t - g_t),   stop-gradient: sum_t g_t R_t,   g_t = grad log pi(o_t|ctx).
# They differ sample by sample but E[g_t | ctx] = 0 makes the expectations equal. Both equal
# the gradient of the per-token reverse KL with the context distribution held fixed,
#   grad [ -KL(pi1 || T1) - sum_a sg(pi1(a)) KL(pi2(.|a) || T2(.|a)) ],
# and differ from the full sequence-level -KL(pi_seq || T_seq) gradient by exactly
# E[g_1 R_2]: the per-token surrogate gives the first token no credit for the second reward.

V = 3


def _policy(seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(V, generator=gen, dtype=F64).requires_grad_()
    b = torch.randn(V, V, generator=gen, dtype=F64).requires_grad_()
    t1 = torch.log_softmax(torch.randn(V, generator=gen, dtype=F64), -1)
    t2 = torch.log_softmax(torch.randn(V, V, generator=gen, dtype=F64), -1)
    return a, b, t1, t2


def _flat_grad(scalar, params):
    grads = torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params)])


def _expected_surrogate_grads(a, b, t1, t2, length):
    """Exact E_{o ~ pi}[grad of -loss] for rkl and rkl_sg, plus per-sample grads."""
    lp1, lp2 = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    totals = {"rkl": 0.0, "rkl_sg": 0.0}
    per_sample = []
    for seq in itertools.product(range(V), repeat=length):
        logps, teachers = [lp1[seq[0]]], [t1[seq[0]]]
        if length == 2:
            logps.append(lp2[seq[0], seq[1]])
            teachers.append(t2[seq[0], seq[1]])
        logp, teacher = torch.stack(logps).unsqueeze(0), torch.stack(teachers).unsqueeze(0)
        weight = logp.detach().sum().exp()  # pi(o)
        batch = ObjectiveInputs(logprobs=logp, old_logprobs=logp.detach(),
                                teacher_logprobs=teacher, loss_mask=torch.ones(1, length),
                                normalizer=1.0)  # loss = -sum_t rho_t R_t of this sample
        grads = {}
        for name, fn in (("rkl", rkl_objective), ("rkl_sg", rkl_sg_objective)):
            loss, _ = fn(batch, step=0, config=RklConfig())
            grads[name] = _flat_grad(-loss, (a, b))
            totals[name] = totals[name] + weight * grads[name]
        per_sample.append(grads)
    return totals, per_sample


def test_remark_3_1_single_token_equals_reverse_kl_gradient():
    a, b, t1, t2 = _policy(0)
    totals, per_sample = _expected_surrogate_grads(a, b, t1, t2, length=1)
    lp1 = torch.log_softmax(a, -1)
    neg_kl = (lp1.exp() * (t1 - lp1)).sum()  # -KL(pi || T)
    true_grad = _flat_grad(neg_kl, (a, b))
    torch.testing.assert_close(totals["rkl"], true_grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(totals["rkl_sg"], true_grad, atol=1e-10, rtol=0)
    # Genuinely different estimators: the vanilla extra term -g is non-zero per sample.
    assert max((g["rkl"] - g["rkl_sg"]).abs().max().item() for g in per_sample) > 1e-2


def test_remark_3_1_two_tokens_exact_expectations():
    a, b, t1, t2 = _policy(1)
    totals, per_sample = _expected_surrogate_grads(a, b, t1, t2, length=2)
    assert max((g["rkl"] - g["rkl_sg"]).abs().max().item() for g in per_sample) > 1e-2
    torch.testing.assert_close(totals["rkl"], totals["rkl_sg"], atol=1e-10, rtol=0)

    lp1, lp2 = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    p1, p2 = lp1.exp(), lp2.exp()
    kl1 = (p1 * (lp1 - t1)).sum()
    kl2_given_a = (p2 * (lp2 - t2)).sum(-1)  # [V]
    token_level = -kl1 - (p1.detach() * kl2_given_a).sum()
    torch.testing.assert_close(totals["rkl_sg"], _flat_grad(token_level, (a, b)),
                               atol=1e-10, rtol=0)

    # Sequence level: -KL(pi_seq || T_seq) = -kl1 - sum_a pi1(a) KL_2(a), context differentiable.
    seq_level = -kl1 - (p1 * kl2_given_a).sum()
    gap = _flat_grad(seq_level, (a, b)) - totals["rkl_sg"]
    # The gap is E[g_1 R_2] = sum_a pi1(a) grad log pi1(a) E_{o2|a}[R_2]
    #                      = -sum_a grad pi1(a) KL_2(a)   (KL_2 held fixed).
    missing = _flat_grad(-(p1 * kl2_given_a.detach()).sum(), (a, b))
    torch.testing.assert_close(gap, missing, atol=1e-10, rtol=0)
    assert gap.abs().max().item() > 1e-3  # so the per-token surrogate is not the sequence KL
