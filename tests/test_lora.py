"""LoRA students: only the adapter trains, checkpoints hold it, resume restores it, the merged
copy loads with ``from_pretrained``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from reopold_agent.cli import main
from reopold_agent.commands import load_model
from reopold_agent.config_loading import ConfigError, from_dict
from reopold_agent.lora import (
    LoraUnavailable,
    adapted_model,
    adapter_base,
    attach_lora,
    checkpoint_weights,
    is_adapter_folder,
    is_lora_model,
    load_checkpoint_weights,
    trainable_parameters,
)
from reopold_agent.lora_config import LoraSettings
from reopold_agent.sequence_scoring import SequenceScorer
from reopold_agent.train_config import TrainConfig
from tests import tiny


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return tiny.save_tool_math_models(tmp_path_factory.mktemp("models"))


def _train_args(models, out, *, steps, extra=()):
    student, teacher = models
    return ["train", "--task", "tool_math", "--student", str(student), "--teacher", str(teacher),
            "--steps", str(steps), "--output-dir", str(out),
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=24", "--set", "rollout.max_episode_tokens=200",
            "--set", "eval.num_problems=2", "--set", "eval.samples=1", "--set", "eval.every=0",
            "--set", "eval.teacher=false", "--set", "train.torch_threads=1", "--set", "train.save_every=1",
            "--set", "train.lr=1e-2", "--set", "objective.switch_fraction=0.0", "--set", "model.lora.r=4", "--set", "model.lora.alpha=8", *extra]


def _weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


def test_one_update_moves_the_adapter_and_leaves_the_base_bit_identical():
    torch.manual_seed(0)
    student = attach_lora(tiny.model(), LoraSettings(r=4, alpha=8.0))
    base_before = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_" not in n}
    adapter_before = {n: p.detach().clone() for n, p in student.named_parameters() if "lora_" in n}
    assert {n for n, p in student.named_parameters() if p.requires_grad} == set(adapter_before)
    optimizer = torch.optim.AdamW(trainable_parameters(student), lr=1e-2)
    ids_BT = torch.randint(0, 200, (2, 12))
    logp_BT, _ = SequenceScorer(adapted_model(student))(ids_BT, torch.ones_like(ids_BT))
    (-logp_BT.sum()).backward()
    optimizer.step()
    for name, before in base_before.items():
        assert torch.equal(dict(student.named_parameters())[name], before), name
    moved = [n for n, p in student.named_parameters() if n in adapter_before and not torch.equal(p, adapter_before[n])]
    assert any("lora_B" in n for n in moved) and len(moved) >= len(adapter_before) // 2


def test_checkpoint_weights_are_the_adapter_and_load_back():
    student = attach_lora(tiny.model(), LoraSettings(r=2))
    weights = checkpoint_weights(student)
    assert weights and all("lora_" in name for name in weights)
    changed = {name: torch.full_like(t, 0.5) for name, t in weights.items()}
    load_checkpoint_weights(student, changed)
    assert all(torch.equal(t, changed[n]) for n, t in checkpoint_weights(student).items())
    with pytest.raises(ValueError, match="no place"):
        load_checkpoint_weights(student, {"base_model.model.nowhere.lora_A.weight": torch.zeros(1)})
    plain = tiny.model()
    assert not is_lora_model(plain) and adapted_model(plain) is plain
    assert checkpoint_weights(plain).keys() == plain.state_dict().keys()


def test_adapter_initialisation_follows_the_seed_and_leaves_the_global_rng():
    state = torch.get_rng_state()
    first, again, other = (checkpoint_weights(attach_lora(tiny.model(), LoraSettings(r=2), seed=s)) for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_adapter_folders_are_recognised_and_name_their_base(tmp_path):
    student = attach_lora(tiny.model(), LoraSettings(r=2))
    student.save_pretrained(tmp_path / "adapter")
    assert is_adapter_folder(tmp_path / "adapter") and not is_adapter_folder(tmp_path)
    with pytest.raises(ValueError, match="names no base model"):  # built in memory: no base path recorded
        adapter_base(tmp_path / "adapter")
    with pytest.raises(ValueError, match="cannot read the adapter config"):
        adapter_base(tmp_path)


def test_missing_peft_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(LoraUnavailable, match=r"pip install 'reopold-agent\[lora\]'"):
        attach_lora(tiny.model(), LoraSettings())


def test_config_reads_lora_and_refuses_it_with_the_vllm_sampler():
    config = from_dict(TrainConfig, {"model": {"lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]}}})
    assert config.model.lora == LoraSettings(r=8, target_modules=["q_proj", "v_proj"])
    assert from_dict(TrainConfig, {}).model.lora is None
    with pytest.raises(ConfigError, match="rollout.backend=hf"):
        from_dict(TrainConfig, {"model": {"lora": {}}, "rollout": {"backend": "vllm"}})
    with pytest.raises(ConfigError, match="model.lora.r must be >= 1"):
        from_dict(TrainConfig, {"model": {"lora": {"r": 0}}})


def test_unmatched_target_modules_is_a_usage_error(tiny_models, tmp_path, capsys):
    code = main(_train_args(tiny_models, tmp_path / "run", steps=1,
                            extra=["--set", "model.lora.target_modules=[no_such_proj]"]))
    assert code == 2
    assert "model.lora:" in capsys.readouterr().err


def test_lora_run_saves_adapters_resumes_them_and_merges(tiny_models, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(_train_args(tiny_models, straight, steps=2)) == 0
    assert main(_train_args(tiny_models, split, steps=1)) == 0
    assert main(_train_args(tiny_models, split, steps=2, extra=["--resume"])) == 0
    assert "resumed from step 1" in capsys.readouterr().out
    ckpt = straight / "checkpoints" / "step_000002"
    assert (ckpt / "adapter_config.json").is_file() and not (ckpt / "model.safetensors").exists()
    adapter = _weights(ckpt, "adapter_model.safetensors")
    assert all("lora_" in name for name in adapter)
    assert any("lora_B" in n and t.abs().max() > 0 for n, t in adapter.items())  # B starts at zero
    resumed = _weights(split / "checkpoints" / "step_000002", "adapter_model.safetensors")
    for name, tensor in adapter.items():  # the resumed run continued from the saved adapter
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)
    # the merged copy is a plain model: base weights untouched where no adapter sits, and it
    # computes what the base model with the adapter applied computes
    base = _weights(tiny_models[0], "model.safetensors")
    merged = _weights(straight / "merged", "model.safetensors")
    untouched = [n for n in base if not n.endswith("proj.weight")]
    assert untouched and all(torch.equal(merged[n], base[n]) for n in untouched)
    assert any(not torch.equal(merged[n], base[n]) for n in base if n.endswith("proj.weight"))
    plain = AutoModelForCausalLM.from_pretrained(straight / "merged")
    with_adapter = AutoModelForCausalLM.from_pretrained(ckpt)  # transformers applies the adapter to its base
    ids_BT = torch.randint(0, 200, (1, 10))
    as_student = load_model(str(ckpt), dtype=torch.float32, role="student")  # what eval --student CKPT loads
    assert not is_lora_model(as_student)
    with torch.no_grad():
        torch.testing.assert_close(plain(ids_BT).logits, with_adapter(ids_BT).logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain(ids_BT).logits, as_student(ids_BT).logits, rtol=1e-4, atol=1e-5)
