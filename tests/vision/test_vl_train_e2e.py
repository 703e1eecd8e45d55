"""End to end: ``reopold-agent train --task visual_qa`` with tiny vision-language checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reopold_agent.cli import main
from reopold_agent.run_logging import read_metrics
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.trajectory_io import read_trajectories
from reopold_agent.vision.loading import load_model, load_processor
from reopold_agent.vision import VisionProcessor
from reopold_agent.vision.storage import load_pixel_inputs
from tests import tiny


@pytest.fixture(scope="module")
def vl_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl_models")
    return tiny.vl_checkpoint(root / "student", seed=0), tiny.vl_checkpoint(root / "teacher", seed=1, spec="micro")


def _args(models, out, *extra):
    student, teacher = models
    return ["train", "--task", "visual_qa", "--student", str(student), "--teacher", str(teacher),
            "--steps", "2", "--output-dir", str(out), "--set", "task.env_kwargs.level=dots",
            "--set", "train.prompts_per_step=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_turn_tokens=32", "--set", "rollout.max_episode_tokens=512",
            "--set", f"rollout.image_min_pixels={tiny.VL_PIXELS}", "--set", f"rollout.image_max_pixels={tiny.VL_PIXELS}",
            "--set", "train.mini_batches=1", "--set", "train.micro_batch_rows=2",
            "--set", "eval.num_problems=2", "--set", "eval.samples=1", "--set", "eval.every=2",
            "--set", "train.torch_threads=1", "--set", "train.save_every=2", *extra]


def test_two_step_vl_run_trains_stores_images_once_and_scores_with_the_same_pixels(vl_models, tmp_path):
    out = tmp_path / "run"
    assert main(_args(vl_models, out)) == 0
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics if "objective/loss" in m] == [0, 1]
    assert any("eval/greedy_accuracy" in m for m in metrics)
    trajs, errors = read_trajectories(out / "trajectories" / "step_000001.jsonl")
    assert not errors and len(trajs) == 4
    images = sorted((out / "images").iterdir())
    assert images and all(len(t.images) >= 1 for t in trajs)
    teacher = load_model(vl_models[1], dtype=torch.float32, role="teacher")
    vision = VisionProcessor.for_model(teacher.config, load_processor(vl_models[1]).image_processor,
                                       min_pixels=tiny.VL_PIXELS, max_pixels=tiny.VL_PIXELS)
    for traj in trajs:
        assert all(m == (s == "model") for m, s in zip(traj.loss_mask, traj.source))
        assert sum(s == "image" for s in traj.source) == sum(r.token_end - r.token_start for r in traj.images)
        load_pixel_inputs(traj, out, vision)  # the stored images recompute the exact forward
        ids = torch.tensor([traj.token_ids])
        attn = torch.ones_like(ids)
        ref, _ = sequence_logprobs(teacher, ids, attn, extra_inputs=vision.forward_inputs([traj.pixel_inputs], ids, attn))
        torch.testing.assert_close(torch.tensor(traj.teacher_logprobs[1:]), ref[0, 1:], atol=1e-5, rtol=0)
    # the checkpoint is a complete VL folder: it evaluates through the same loading code
    checkpoint = out / "checkpoints" / "step_000002"
    assert load_processor(checkpoint).image_processor.merge_size == 2
    assert main(["eval", "--task", "visual_qa", "--student", str(checkpoint), "--set", "task.env_kwargs.level=dots",
                 "--set", f"rollout.image_min_pixels={tiny.VL_PIXELS}", "--set", f"rollout.image_max_pixels={tiny.VL_PIXELS}",
                 "--set", "rollout.max_turn_tokens=32", "--set", "eval.num_problems=2", "--set", "eval.samples=1"]) == 0


def test_a_text_teacher_for_a_vl_student_is_refused_in_one_line(vl_models, tmp_path, capsys):
    from reopold_agent.demo.tiny_models import build_causal_lm

    text_teacher = tmp_path / "text_teacher"
    model = build_causal_lm(tiny.tokenizer(), "nano")
    model.save_pretrained(text_teacher)
    tiny.tokenizer().save_pretrained(text_teacher)
    assert main(_args((vl_models[0], text_teacher), tmp_path / "run")) == 2
    assert "text-only" in capsys.readouterr().err
