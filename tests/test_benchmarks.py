"""Benchmark scripts that must stay runnable: the GPU step checks in their CPU smoke modes."""

import importlib.util
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_vl_reopold_step_runs_in_tiny_cpu_mode(capsys):
    bench = _load("gpu_vl_reopold_step")
    result = bench.main(["--device", "cpu", "--tiny"])
    out = capsys.readouterr().out
    for line in ("rollout ", "teacher ", "update ", "step ", "peak process RSS", "image tokens", "step 1/2:",
                 "step 2/2:"):
        assert line in out
    assert result["episodes"] == 4
    # every episode: the prompt's image and the zoomed crop, each resized to 56x56 = 4 image tokens
    assert result["images_per_episode"] == 2 and result["image_tokens_per_episode"] == 8
    # scripted zoom call + at most 16 sampled tokens per episode, all of them scored and trained on
    assert 4 * 16 < result["model_tokens"] == result["objective/num_valid"] < result["all_tokens"]
    # the update recomputes exactly the behaviour log-probs of rollout (scripted turn included)
    assert result["objective/rho_mean"] == pytest.approx(1.0, abs=1e-4)
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in ("rollout_s", "teacher_s", "update_s"))
    assert math.isfinite(result["objective/loss"])


def test_gpu_vl_reopold_step_shapes_and_refusals():
    bench = _load("gpu_vl_reopold_step")
    spec, vocab = bench.SHAPES["3b"]
    assert (spec.hidden_size, spec.num_layers, spec.num_heads, spec.num_kv_heads, spec.intermediate_size, vocab) == \
        (2048, 36, 16, 2, 11008, 151936)
    assert (spec.vision_depth, spec.vision_hidden_size, spec.window_size, spec.fullatt_block_indexes) == \
        (32, 1280, 112, (7, 15, 23, 31))
    assert spec.mrope_section == (16, 24, 24)
    with pytest.raises(SystemExit, match="only the --tiny"):
        bench.main(["--device", "cpu"])


def test_gpu_reopold_step_runs_in_tiny_cpu_mode(capsys):
    bench = _load("gpu_reopold_step")
    result = bench.main(["--device", "cpu", "--tiny"])
    out = capsys.readouterr().out
    for line in ("rollout ", "outside the models", "teacher ", "update ", "step ", "peak process RSS", "step 1/2:",
                 "step 2/2:"):
        assert line in out
    # every episode: the gold python call, run by the sandboxed tool, then up to 8 sampled tokens
    assert result["episodes"] == 4 and result["tool_calls"] == 4 and result["tool_tokens"] > 0
    assert result["model_tokens"] == result["objective/num_valid"] < result["all_tokens"]
    # the update recomputes exactly the behaviour log-probs of rollout (scripted turn included)
    assert result["objective/rho_mean"] == pytest.approx(1.0, abs=1e-4)
    assert all(math.isfinite(result[k]) and result[k] > 0 for k in ("rollout_s", "teacher_s", "update_s"))
    assert 0 < result["outside_share"] < 1 and math.isfinite(result["objective/loss"])
    # both decode loops and both layouts timed, with MFU; the static cache decodes the same tokens
    assert "rollout  static" in out and "tokens as decode growing: True" in out.split("rollout  static")[1]
    for key in ("mfu/rollout/growing", "mfu/rollout/static", "mfu/teacher/off", "mfu/teacher/on", "mfu/update/off",
                "mfu/update/on", "generated_tok_s/static"):
        assert 0 < result[key] < math.inf, key
    with pytest.raises(SystemExit, match="only the --tiny"):
        bench.main(["--device", "cpu"])
    with pytest.raises(SystemExit, match="--decode takes"):
        bench.main(["--device", "cpu", "--tiny", "--decode", "cuda-graphs"])


def test_model_flops_count_matmuls_and_attention():
    import torch

    flops = _load("model_flops")
    bench = _load("gpu_reopold_step")
    tokenizer = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
    model = bench.build("tiny-student", tokenizer, 1024, torch.float32, torch.device("cpu"), seed=0)
    # hidden 32, 2 layers, 4 heads of 8, 2 kv heads, MLP 64, tied 1024-row head
    layer = 32 * 32 + 32 + 2 * (32 * 16 + 16) + 32 * 32 + 3 * 32 * 64 + 2 * 32
    n = 1024 * 32 + 2 * layer + 32
    assert flops.matmul_parameters(model) == n
    # a 3-token sequence: 2N per token, and 4 * 32 per layer for each of the 1 + 2 + 3 keys read
    assert flops.forward_flops(model, [3]) == 2 * n * 3 + 4 * 2 * 32 * 6
    assert flops.forward_flops(model, [3, 1]) == flops.forward_flops(model, [3]) + flops.forward_flops(model, [1])


def test_gpu_reopold_step_uses_the_qwen2_5_shapes():
    bench = _load("gpu_reopold_step")
    shape = {name: tuple(bench.SHAPES[name][k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                          "num_key_value_heads", "intermediate_size"))
             for name in ("0.5b", "1.5b")}
    assert shape == {"0.5b": (896, 24, 14, 2, 4864), "1.5b": (1536, 28, 12, 2, 8960)}
    assert bench.PROFILES["full"]["vocab"] == 151936


def test_gpu_checks_turn_cudnn_attention_off_unless_asked(capsys):
    import torch

    bench = _load("gpu_reopold_step")
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        bench.main(["--device", "cpu", "--tiny", "--steps", "1"])
        assert not torch.backends.cuda.cudnn_sdp_enabled() and "cuDNN attention: False" in capsys.readouterr().out
        bench.main(["--device", "cpu", "--tiny", "--steps", "1", "--cudnn-attention"])
        assert torch.backends.cuda.cudnn_sdp_enabled() and "cuDNN attention: True" in capsys.readouterr().out
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.skipif(importlib.util.find_spec("trl") is not None, reason="TRL is installed here")
def test_trl_side_by_side_says_where_trl_is_needed(monkeypatch):
    """TRL is not a dependency: without it the comparison stops in one line saying how to install
    it, before building or timing anything."""
    module = _load("trl_side_by_side")
    monkeypatch.setattr("sys.argv", ["trl_side_by_side.py", "--steps", "2", "--runs", "1"])
    monkeypatch.setattr(module, "embedded_paths", lambda: pytest.fail("built models without TRL"))
    with pytest.raises(SystemExit, match=r"TRL is not installed .*pip install -e \. trl"):
        module.main()
