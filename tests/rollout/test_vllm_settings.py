"""``rollout.backend: vllm`` settings and the refusals that need no vLLM: one line, exit code 2."""

from __future__ import annotations

import importlib.util

import pytest

from reopold_agent.cli import main
from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.demo.tiny_models import build_causal_lm
from tests import tiny

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = task_tokenizer(gold_conversations("tool_math", count=40))
    for name in ("student", "teacher"):
        model = build_causal_lm(tok, "nano", seed=0)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root / "student", root / "teacher"


def _train(student, teacher, out, *sets):
    argv = ["train", "--task", "tool_math", "--student", str(student), "--teacher", str(teacher), "--steps", "1",
            "--output-dir", str(out), "--set", "eval.num_problems=0", "--set", "train.torch_threads=1"]
    for item in sets:
        argv += ["--set", item]
    return main(argv)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_vllm_settings_are_refused_in_one_line(text_models, tmp_path, capsys):
    cases = [
        (["rollout.backend=vlm"], "rollout.backend: expected one of 'hf', 'vllm'"),
        (["rollout.backend=vllm", "rollout.vllm.max_model_len=100"], "rollout.vllm.max_model_len (100) must be at least"),
        (["rollout.vllm.gpu_memory_utilization=1.5"], "gpu_memory_utilization must be in (0, 1]"),
        (["objective.tis_cap=0.5"], "tis_cap must be >= 1 or null"),
    ]
    for sets, message in cases:
        assert _train(*text_models, tmp_path / "run", *sets) == 2, sets
        assert message in _one_line(capsys)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_without_vllm_the_vllm_backend_stops_in_one_line(text_models, tmp_path, capsys):
    assert _train(*text_models, tmp_path / "run", "rollout.backend=vllm") == 2
    err = _one_line(capsys)
    assert "rollout.backend=vllm needs vLLM, which cannot be imported here" in err


def test_a_vision_language_student_is_refused_by_the_vllm_backend(tmp_path, capsys):
    student = tiny.vl_checkpoint(tmp_path / "student", seed=0)
    teacher = tiny.vl_checkpoint(tmp_path / "teacher", seed=1)
    capsys.readouterr()  # saving may print progress bars; only the CLI's output is checked
    argv = ["train", "--task", "visual_qa", "--student", str(student), "--teacher", str(teacher), "--steps", "1",
            "--output-dir", str(tmp_path / "run"), "--set", "eval.num_problems=0", "--set", "rollout.backend=vllm",
            "--set", f"rollout.image_min_pixels={tiny.VL_PIXELS}", "--set", f"rollout.image_max_pixels={tiny.VL_PIXELS}"]
    assert main(argv) == 2
    assert "rollout.backend=vllm samples text students only" in _one_line(capsys)


def test_the_vllm_backend_refuses_several_training_processes(text_models):
    from reopold_agent.errors import UsageError
    from reopold_agent.commands import vllm_backend
    from reopold_agent.train_config import TrainConfig

    with pytest.raises(UsageError, match="single training process, not 2"):
        vllm_backend(str(text_models[0]), TrainConfig(), processes=2)
