"""Contract every registered objective keeps: signature, outputs, masking, import isolation."""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reopold_agent.objectives import (
    OBJECTIVE_CONFIGS, OBJECTIVES, ObjectiveInputs, ReopoldConfig, get_objective, valid_mask)

NAMES = sorted(OBJECTIVES)
COMMON_KEYS = {"objective/loss", "objective/num_valid", "objective/num_selected",
               "objective/selected_ratio", "objective/ratio_clip_frac", "objective/rho_mean",
               "objective/rho_max", "objective/rho_off_frac", "objective/entropy_mean"}
REOPOLD_KEYS = COMMON_KEYS | {
    "objective/phase", "objective/below_floor_frac", "objective/reward_mean",
    "objective/reward_p10", "objective/reward_p50", "objective/reward_p90", "objective/reward_values",
    "objective/entropy_threshold"}
# reopold in both phases; others ignore step.
CASES = [(name, step) for name in NAMES for step in ((0, 5) if name == "reopold" else (0,))]


def _config(name):
    return ReopoldConfig(switch_step=3) if name == "reopold" else OBJECTIVE_CONFIGS[name]()


def _batch(seed=0, poison=True, dtype=torch.float32, B=4, T=6):
    """Random batch; with ``poison`` every masked position holds NaN or inf in every tensor."""
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen, dtype=dtype) * 3
    fields = dict(old_logprobs=logp + 0.1 * torch.randn(B, T, generator=gen, dtype=dtype),
                  teacher_logprobs=logp - torch.randn(B, T, generator=gen, dtype=dtype),
                  entropy=torch.rand(B, T, generator=gen, dtype=dtype) * 3)
    mask = torch.rand(B, T, generator=gen) > 0.35
    mask[0, 0], mask[-1, -1] = True, False
    if poison:
        logp = torch.where(mask, logp, math.nan)
        fields = {k: torch.where(mask, v, -math.inf if k != "entropy" else math.nan)
                  for k, v in fields.items()}
        fields["old_logprobs"][~mask] = math.inf
    logp.requires_grad_()
    return ObjectiveInputs(logprobs=logp, loss_mask=mask.float(),
                           advantages=torch.randn(B, generator=gen, dtype=dtype), **fields)


def test_registry_names_and_lookup():
    assert set(OBJECTIVES) == {"reopold", "rkl", "rkl_sg", "grpo", "sft"}
    assert set(OBJECTIVE_CONFIGS) == set(OBJECTIVES)
    assert get_objective("rkl_sg") is OBJECTIVES["rkl_sg"]
    with pytest.raises(ValueError, match="grpo, reopold, rkl, rkl_sg, sft"):
        get_objective("gkd")


@pytest.mark.parametrize("name, step", CASES)
def test_returns_scalar_loss_and_float_stats(name, step):
    loss, stats = OBJECTIVES[name](_batch(), step=step, config=_config(name))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    assert all(isinstance(k, str) and type(v) is float for k, v in stats.items() if not k.endswith("_values"))
    for key in (k for k in stats if k.endswith("_values")):  # token values, for a whole step's percentiles
        assert stats[key].shape == (stats["objective/num_valid"],) and not stats[key].requires_grad
    assert COMMON_KEYS <= stats.keys()
    if name == "reopold":
        assert stats.keys() == REOPOLD_KEYS
    assert stats["objective/loss"] == pytest.approx(loss.item(), abs=1e-7)
    # Stable keys: a different batch gives the same key set.
    assert OBJECTIVES[name](_batch(seed=1), step=step, config=_config(name))[1].keys() == \
        stats.keys()


@pytest.mark.parametrize("name, step", CASES)
def test_masked_positions_get_exactly_zero_gradient_and_never_leak(name, step):
    poisoned, clean = _batch(poison=True), _batch(poison=False)
    loss_p, stats_p = OBJECTIVES[name](poisoned, step=step, config=_config(name))
    loss_c, stats_c = OBJECTIVES[name](clean, step=step, config=_config(name))
    loss_p.backward()
    loss_c.backward()
    assert loss_p.item() == loss_c.item()
    grad = poisoned.logprobs.grad
    masked = ~valid_mask(poisoned.loss_mask)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))
    assert torch.equal(grad, clean.logprobs.grad)
    assert grad[~masked].abs().sum() > 0
    for key, value in stats_p.items():
        if key.endswith("_values"):
            assert torch.equal(value, stats_c[key]), key
            continue
        assert value == stats_c[key] or (math.isnan(value) and math.isnan(stats_c[key])), key


@pytest.mark.parametrize("name, step", CASES)
def test_no_gradient_reaches_teacher_old_or_entropy(name, step):
    base = _batch(poison=False)
    leaves = {k: getattr(base, k).clone().requires_grad_()
              for k in ("old_logprobs", "teacher_logprobs", "entropy", "advantages")}
    batch = ObjectiveInputs(logprobs=base.logprobs, loss_mask=base.loss_mask, **leaves)
    OBJECTIVES[name](batch, step=step, config=_config(name))[0].backward()
    for key, leaf in leaves.items():
        assert leaf.grad is None or not leaf.grad.any(), key


@pytest.mark.parametrize("name, step", CASES)
def test_all_masked_gives_zero_loss_and_zero_gradients(name, step):
    base = _batch(poison=False)
    batch = dataclasses.replace(base, loss_mask=torch.zeros_like(base.loss_mask))
    loss, stats = OBJECTIVES[name](batch, step=step, config=_config(name))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(base.logprobs.grad, torch.zeros_like(base.logprobs))
    assert stats["objective/num_valid"] == 0.0


@pytest.mark.parametrize("name", [n for n in NAMES if n != "reopold"])
def test_micro_batches_with_global_normalizer_sum_to_full_batch(name):
    full = _batch(poison=False, dtype=torch.float64)
    full_loss, _ = OBJECTIVES[name](full, step=0, config=_config(name))
    full_loss.backward()
    count = float(valid_mask(full.loss_mask).sum())
    logp = full.logprobs.detach().clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 1), slice(1, 4)):
        fields = {f.name: getattr(full, f.name)[rows] for f in dataclasses.fields(full)
                  if isinstance(getattr(full, f.name), torch.Tensor)}
        fields["logprobs"] = logp[rows]
        loss, _ = OBJECTIVES[name](ObjectiveInputs(**fields, normalizer=count), step=0,
                                   config=_config(name))
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(full_loss.item(), abs=1e-12)
    torch.testing.assert_close(logp.grad, full.logprobs.grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_config_type_is_rejected(name):
    wrong = OBJECTIVE_CONFIGS["sft"]() if name != "sft" else ReopoldConfig()
    with pytest.raises(TypeError, match=name):
        OBJECTIVES[name](_batch(), step=0, config=wrong)


def test_inputs_validate_shapes():
    with pytest.raises(ValueError, match="teacher_logprobs"):
        ObjectiveInputs(logprobs=torch.zeros(2, 3), loss_mask=torch.ones(2, 3),
                        teacher_logprobs=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="advantages"):
        ObjectiveInputs(logprobs=torch.zeros(2, 3), loss_mask=torch.ones(2, 3),
                        advantages=torch.zeros(3))
    with pytest.raises(ValueError, match="logprobs"):
        ObjectiveInputs(logprobs=torch.zeros(6), loss_mask=torch.ones(6))


def test_import_pulls_in_torch_only():
    """What the objectives themselves import. ``reopold_agent/__init__`` registers the
    environments with gymnasium (``import reopold_agent`` promises that), so the parent package
    is stood in for by a bare one whose ``__init__`` does not run."""
    code = ("import importlib.util, sys, types\n"
            "spec = importlib.util.find_spec('reopold_agent')\n"
            "parent = types.ModuleType('reopold_agent')\n"
            "parent.__path__ = list(spec.submodule_search_locations)\n"
            "sys.modules['reopold_agent'] = parent\n"
            "import reopold_agent.objectives\n"
            "heavy = {'transformers', 'gymnasium', 'accelerate', 'qwen_vl_utils', 'e2b',\n"
            "         'e2b_code_interpreter', 'tokenizers', 'PIL', 'yaml'}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy or\n"
            "             (m.startswith('reopold_agent.') and\n"
            "              not m.startswith('reopold_agent.objectives')))\n"
            "print(','.join(bad))\n")
    repo_root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=repo_root).stdout.strip()
    assert out == "", f"reopold_agent.objectives imported {out}"
