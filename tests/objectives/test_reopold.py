"""REOPOLD loss: hand-derived values and gradients in both phases, masks, schedule, overrides."""

import math

import pytest
import torch

from reopold_agent.objectives import (
    ObjectiveInputs, ReopoldConfig, entropy_threshold, reopold_keep_mask, reopold_objective,
    selected_token_count)

F64 = torch.float64
NAN, INF = math.nan, math.inf
FLOOR = math.log(0.3) / 0.7  # -1.719961149037052

# Batch used throughout. Row 1, position 2 is not student-generated (loss_mask 0).
LOGP = [[-1.0, -2.0, -0.5], [-0.2, -3.0, -1.0]]
TEACHER = [[-0.5, -4.0, -0.5], [-0.2, -3.5, -9.0]]
# R = teacher - logp = [[0.5, -2.0, 0.0], [0.0, -0.5, -8.0 (masked)]]
LOG_RATIO = [[0.1, 0.0, -0.2], [0.0, 0.3, 0.0]]  # logp - old_logp, so rho = exp(LOG_RATIO)
ENTROPY = [[0.1, 2.0, 0.5], [1.5, 0.3, 99.0]]  # 99 sits on the masked token
MASK = [[1, 1, 1], [1, 1, 0]]


def loss_of(logprobs, old_logprobs, teacher_logprobs, entropy, loss_mask, *, step, config,
            entropy_threshold=None, normalizer=None):
    """reopold_objective on positional [B, T] tensors."""
    batch = ObjectiveInputs(logprobs=logprobs, old_logprobs=old_logprobs,
                            teacher_logprobs=teacher_logprobs, entropy=entropy, loss_mask=loss_mask,
                            entropy_threshold=entropy_threshold, normalizer=normalizer)
    return reopold_objective(batch, step=step, config=config)


def make_batch(logp=LOGP, teacher=TEACHER, log_ratio=LOG_RATIO, entropy=ENTROPY, mask=MASK):
    logp_BT = torch.tensor(logp, dtype=F64, requires_grad=True)
    old_BT = logp_BT.detach() - torch.tensor(log_ratio, dtype=F64)
    return (logp_BT, old_BT, torch.tensor(teacher, dtype=F64), torch.tensor(entropy, dtype=F64),
            torch.tensor(mask))


def loss_and_grad(step, config, **kw):
    logp, old, teacher, entropy, mask = make_batch(**kw)
    loss, stats = loss_of(logp, old, teacher, entropy, mask, step=step, config=config)
    loss.backward()
    return loss, logp.grad, stats


def test_floor_value():
    assert ReopoldConfig(lam=0.3).floor == pytest.approx(-1.7200, abs=5e-5)
    assert ReopoldConfig(lam=0.3).floor == math.log(0.3) / 0.7
    assert ReopoldConfig(lam=0.3).floor != pytest.approx(math.log(0.3 / 0.7))  # the wrong form


def test_exploration_value_gradient_and_stats():
    # step 0 < switch_step: M = valid & (R >= c). R = -2.0 < c = -1.72 at (0,1) is dropped.
    # Selected: (0,0) rho=e^.1 R=.5; (0,2) rho=e^-.2 R=0; (1,0) rho=1 R=0; (1,1) rho=e^.3 R=-.5
    # loss = -(0.5 e^0.1 - 0.5 e^0.3) / 4 = 0.030585986187544436
    loss, grad, stats = loss_and_grad(0, ReopoldConfig(switch_step=1))
    assert loss.item() == pytest.approx(0.030585986187544436, abs=1e-12)
    # dL/dlogp_t = -rho_t * R_hat_t * M_t / N
    expected = torch.tensor([[-0.5 * math.exp(0.1) / 4, 0.0, 0.0],
                             [0.0, 0.5 * math.exp(0.3) / 4, 0.0]], dtype=F64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    assert stats["objective/phase"] == 0.0
    assert stats["objective/num_valid"] == 5.0 and stats["objective/num_selected"] == 4.0
    assert stats["objective/selected_ratio"] == pytest.approx(0.8, abs=1e-12)
    assert stats["objective/below_floor_frac"] == pytest.approx(0.2, abs=1e-12)
    # valid R = [0.5, -2, 0, 0, -0.5]: mean -0.4; sorted [-2, -0.5, 0, 0, 0.5]; nearest rank
    # indices floor(q*4 + 0.5) = 0, 2, 4 for q = 0.1, 0.5, 0.9.
    assert stats["objective/reward_mean"] == pytest.approx(-0.4, abs=1e-12)
    assert (stats["objective/reward_p10"], stats["objective/reward_p50"],
            stats["objective/reward_p90"]) == (-2.0, 0.0, 0.5)
    assert stats["objective/entropy_mean"] == pytest.approx(0.88, abs=1e-12)  # 4.4 / 5
    rho_mean = (math.exp(0.1) + 1 + math.exp(-0.2) + 1 + math.exp(0.3)) / 5
    assert stats["objective/rho_mean"] == pytest.approx(rho_mean, abs=1e-12)
    # valid rho = e^0.1, 1, e^-0.2, 1, e^0.3: only e^0.3 - 1 = 0.35 is beyond 0.2 (e^-0.2 is 0.18 below 1)
    assert stats["objective/rho_max"] == pytest.approx(math.exp(0.3), abs=1e-12)
    assert stats["objective/rho_off_frac"] == pytest.approx(0.2, abs=1e-12)
    assert stats["objective/ratio_clip_frac"] == 0.0
    assert math.isnan(stats["objective/entropy_threshold"])
    assert stats["objective/loss"] == loss.item()


def test_refinement_value_and_gradient():
    # step 1 >= switch_step 1. Valid entropies [0.1, 2.0, 0.5, 1.5, 0.3], beta 0.4:
    # keep ceil(0.4*5) = 2 -> tau = 1.5 -> tokens (0,1) (H=2.0) and (1,0) (H=1.5).
    # R_hat(0,1) = max(-2.0, c) = c, rho = 1;  R_hat(1,0) = 0.
    # loss = -(c + 0) / 2 = 0.859980574518526
    loss, grad, stats = loss_and_grad(1, ReopoldConfig(beta=0.4, switch_step=1))
    assert loss.item() == pytest.approx(-FLOOR / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.859980574518526, abs=1e-12)
    expected = torch.tensor([[0.0, -FLOOR / 2, 0.0], [-0.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    assert stats["objective/phase"] == 1.0
    assert stats["objective/num_selected"] == 2.0
    assert stats["objective/entropy_threshold"] == 1.5
    assert stats["objective/below_floor_frac"] == pytest.approx(0.2, abs=1e-12)


def test_refinement_default_beta_keeps_one_token():
    # beta 0.2 of 5 valid tokens: ceil(1.0) = 1 -> only (0,1), loss = -c / 1.
    loss, grad, _ = loss_and_grad(5, ReopoldConfig(switch_step=5))
    assert loss.item() == pytest.approx(-FLOOR, abs=1e-12)
    assert grad[0, 1].item() == pytest.approx(-FLOOR, abs=1e-12)
    assert torch.count_nonzero(grad).item() == 1


def test_negative_rewards_return_in_refinement_with_rho():
    # Same selected token (0,1) but with rho = e^0.4 and R = -1.0 > c: no floor, R_hat = -1.
    # loss = -(e^0.4 * -1) / 1 = e^0.4 ; dL/dlogp = -rho * R_hat = e^0.4
    loss, grad, _ = loss_and_grad(
        3, ReopoldConfig(switch_step=3), teacher=[[-0.5, -3.0, -0.5], [-0.2, -3.5, -9.0]],
        log_ratio=[[0.1, 0.4, -0.2], [0.0, 0.3, 0.0]])
    assert loss.item() == pytest.approx(math.exp(0.4), abs=1e-12)
    assert grad[0, 1].item() == pytest.approx(math.exp(0.4), abs=1e-12)


def test_switch_step_boundary():
    config = ReopoldConfig(switch_step=10)
    assert not config.is_refinement(9) and config.is_refinement(10)
    assert loss_and_grad(9, config)[2]["objective/phase"] == 0.0
    assert loss_and_grad(10, config)[2]["objective/phase"] == 1.0


def test_ratio_clip_pessimistic_form_and_fraction():
    # Four valid tokens, all R >= c (exploration), eps = 0.2:
    #  rho=e^.5, R=+1 -> min(1.6487, 1.2)   = 1.2      clipped, no gradient
    #  rho=e^.5, R=-1 -> min(-1.6487, -1.2) = -1.6487  not clipped
    #  rho=e^-.5, R=-1 -> min(-0.6065, -0.8) = -0.8    clipped, no gradient
    #  rho=e^-.5, R=+1 -> min(0.6065, 0.8)  = 0.6065   not clipped
    # loss = -(1.2 - e^.5 - 0.8 + e^-.5) / 4 = 0.1605476527513...
    loss, grad, stats = loss_and_grad(
        0, ReopoldConfig(ratio_clip=0.2), logp=[[-1.0, -1.0, -1.0, -1.0]],
        teacher=[[0.0, -2.0, -2.0, 0.0]], log_ratio=[[0.5, 0.5, -0.5, -0.5]],
        entropy=[[1.0] * 4], mask=[[1, 1, 1, 1]])
    assert loss.item() == pytest.approx(-(0.4 - math.exp(0.5) + math.exp(-0.5)) / 4, abs=1e-12)
    expected = torch.tensor([[0.0, math.exp(0.5) / 4, 0.0, -math.exp(-0.5) / 4]], dtype=F64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    assert stats["objective/ratio_clip_frac"] == 0.5


@pytest.mark.parametrize("step", [0, 1])
def test_masked_positions_with_nan_and_inf_never_leak(step):
    config = ReopoldConfig(beta=0.4, switch_step=1)
    ref_loss, ref_grad, ref_stats = loss_and_grad(step, config)
    logp, old, teacher, entropy, mask = make_batch(logp=[[-1.0, -2.0, -0.5], [-0.2, -3.0, NAN]],
                                                   teacher=[[-0.5, -4.0, -0.5], [-0.2, -3.5, -INF]],
                                                   entropy=[[0.1, 2.0, 0.5], [1.5, 0.3, NAN]])
    old[1, 2] = INF
    loss, stats = loss_of(logp, old, teacher, entropy, mask, step=step, config=config)
    loss.backward()
    assert loss.item() == ref_loss.item()
    assert torch.isfinite(logp.grad).all() and logp.grad[1, 2].item() == 0.0
    torch.testing.assert_close(logp.grad, ref_grad, atol=0, rtol=0)
    assert stats.keys() == ref_stats.keys()
    for key, value in stats.items():
        if key.endswith("_values"):
            assert torch.equal(value, ref_stats[key])
        else:
            assert value == ref_stats[key] or (math.isnan(value) and math.isnan(ref_stats[key]))


@pytest.mark.parametrize("step", [0, 1])
def test_no_selected_token_gives_exact_zero(step):
    # Exploration: every valid R = -5 < c is dropped. Refinement: nothing valid at all.
    mask = [[1, 1, 1], [1, 1, 0]] if step == 0 else [[0, 0, 0], [0, 0, 0]]
    logp, old, _, entropy, mask_t = make_batch(mask=mask)
    teacher = logp.detach() - 5.0
    loss, stats = loss_of(logp, old, teacher, entropy, mask_t, step=step,
                          config=ReopoldConfig(switch_step=1))
    assert loss.requires_grad and loss.item() == 0.0
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert stats["objective/num_selected"] == 0.0 and stats["objective/selected_ratio"] == 0.0
    if step == 1:  # no valid token: the ratio statistics read as on-policy
        assert stats["objective/rho_max"] == 1.0 and stats["objective/rho_off_frac"] == 0.0


def test_old_logprobs_none_means_on_policy():
    logp, _, teacher, entropy, mask = make_batch()
    loss, stats = loss_of(logp, None, teacher, entropy, mask, step=0,
                          config=ReopoldConfig())
    # rho = 1: loss = -(0.5 + 0 + 0 - 0.5) / 4 = 0, gradient -R_hat / 4 on selected tokens.
    assert loss.item() == 0.0 and stats["objective/rho_mean"] == 1.0
    loss.backward()
    assert logp.grad[0, 0].item() == -0.125 and logp.grad[1, 1].item() == 0.125


def test_refinement_needs_entropy():
    logp, old, teacher, _, mask = make_batch()
    with pytest.raises(ValueError, match="entropy"):
        loss_of(logp, old, teacher, None, mask, step=1, config=ReopoldConfig(switch_step=0))
    loss_of(logp, old, teacher, None, mask, step=0, config=ReopoldConfig(switch_step=1))


def test_external_threshold_and_normalizer_are_honoured():
    logp, old, teacher, entropy, mask = make_batch()
    # tau = 0.4 keeps valid H in {2.0, 0.5, 1.5}: (0,1) R_hat=c, (0,2) R=0, (1,0) R=0.
    # normalizer 10: loss = -(c * 1 + e^-0.2 * 0 + 0) / 10
    loss, stats = loss_of(logp, old, teacher, entropy, mask, step=1,
                          config=ReopoldConfig(switch_step=1), entropy_threshold=0.4,
                          normalizer=10.0)
    assert loss.item() == pytest.approx(-FLOOR / 10, abs=1e-12)
    assert stats["objective/num_selected"] == 3.0
    assert stats["objective/entropy_threshold"] == pytest.approx(0.4, abs=1e-12)
    with pytest.raises(ValueError, match="normalizer"):
        loss_of(logp, old, teacher, entropy, mask, step=1, config=ReopoldConfig(),
                normalizer=0.0)


def _random_batch(seed, B=6, T=7):
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen, dtype=F64) * 3
    teacher = logp - torch.randn(B, T, generator=gen, dtype=F64) * 1.5
    old = logp + 0.1 * torch.randn(B, T, generator=gen, dtype=F64)
    entropy = torch.rand(B, T, generator=gen, dtype=F64) * 4
    mask = torch.rand(B, T, generator=gen) > 0.3
    return logp, old, teacher, entropy, mask


@pytest.mark.parametrize("step", [0, 1])
def test_micro_batches_with_global_threshold_and_normalizer_sum_to_full_batch(step):
    config = ReopoldConfig(beta=0.3, switch_step=1)
    logp, old, teacher, entropy, mask = _random_batch(0)
    full_logp = logp.clone().requires_grad_()
    full_loss, _ = loss_of(full_logp, old, teacher, entropy, mask, step=step, config=config)
    full_loss.backward()

    tau = entropy_threshold(entropy, mask, config.beta)
    full = ObjectiveInputs(logprobs=logp, old_logprobs=old, teacher_logprobs=teacher,
                           entropy=entropy, loss_mask=mask, entropy_threshold=tau)
    count = selected_token_count(full, step=step, config=config)
    assert count.item() == reopold_keep_mask(full, step=step, config=config).sum().item() > 0
    micro_logp = logp.clone().requires_grad_()
    total, local_total = 0.0, 0.0
    for rows in (slice(0, 2), slice(2, 4), slice(4, 6)):
        args = (micro_logp[rows], old[rows], teacher[rows], entropy[rows], mask[rows])
        loss, _ = loss_of(*args, step=step, config=config, entropy_threshold=tau,
                          normalizer=count.clamp_min(1))
        loss.backward()
        total += loss.item()
        local_total += loss_of(*args, step=step, config=config)[0].item()
    assert total == pytest.approx(full_loss.item(), abs=1e-12)
    torch.testing.assert_close(micro_logp.grad, full_logp.grad, atol=1e-12, rtol=0)
    assert local_total != pytest.approx(full_loss.item(), abs=1e-6)  # the overrides matter


def test_exploration_mask_uses_behaviour_reward_so_the_normaliser_is_exact():
    # After an update pi_theta moved: token (0,1) had R_old = -1.0 >= c under pi_old but
    # R = -2.0 < c under pi_theta; token (1,1) the opposite (R_old = -2.5, R = -0.5).
    # The mask follows R_old, so the token counted by selected_token_count is the one in the loss.
    config = ReopoldConfig(switch_step=10)
    logp, old, teacher, entropy, mask = make_batch(log_ratio=[[0.0, 1.0, 0.0], [0.0, -2.0, 0.0]])
    batch = ObjectiveInputs(logprobs=logp, old_logprobs=old, teacher_logprobs=teacher,
                            entropy=entropy, loss_mask=mask)
    keep = reopold_keep_mask(batch, step=0, config=config)
    assert keep.tolist() == [[True, True, True], [True, False, False]]
    count = selected_token_count(batch, step=0, config=config)
    loss, stats = loss_of(logp, old, teacher, entropy, mask, step=0, config=config,
                          normalizer=count)
    loss.backward()
    assert stats["objective/num_selected"] == count.item() == 4
    # (0,1) is selected with its pi_theta reward floored: R_hat = c, rho = e^1
    assert logp.grad[0, 1].item() == pytest.approx(-math.exp(1.0) * FLOOR / 4, abs=1e-12)
    assert logp.grad[1, 1].item() == 0.0
