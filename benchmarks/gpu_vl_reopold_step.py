"""GPU check: one REOPOLD step of a Qwen2.5-VL-3B-shaped student on visual_qa image-tool episodes.

Random weights, bf16, no downloads. The student and the teacher have the shape of
Qwen/Qwen2.5-VL-3B-Instruct (``--teacher-shape 7b`` for the 7B, ``3b-half`` for a smaller teacher
of 18 layers); the image processor is the real Qwen2-VL one, built from its parameters. Episodes
are real ``visual_qa`` episodes (``VisualQAEnv(level="dots")``, a 448x448 image in the prompt)
played by the real :class:`RolloutEngine` with the real :class:`HFGenerationBackend`, except
for one stand-in (``gpu_check.GoldFirstTurn``):

* the first assistant turn of every episode is the gold ``zoom`` call into the asked cell (a
  random model would never call the tool), so every episode holds a second image, the 4x zoomed
  crop, returned by the real zoom tool. Its tokens are scored by the student in one
  teacher-forced forward with the episode's pixel inputs, so their behaviour log-probs and
  entropies are the student's own;
* the second assistant turn is sampled by the student with the real decode loop, up to
  ``--turn-tokens`` tokens (``max_turns`` is 2, so the episode ends there).

The tokenizer is the project's small byte-level BPE with the Qwen chat template and vision
tokens (no hub access). The models keep Qwen's full vocabulary (151,936 rows for 3B), so the
embedding and the vocabulary projection cost what they cost in the real models; sampled ids
beyond the tokenizer's vocabulary decode to no text, as Qwen's own padding rows beyond its
tokenizer do (the environment sees fewer characters; model, teacher and update see every token).
Then the teacher scores the batch (with the same pixel inputs), and one policy update runs the
REOPOLD objective, all under bf16 autocast as in ``gpu_reopold_step.py``. Prints the time split,
tokens per second, image tokens per episode and peak memory.

Both models hold bf16 parameters (the student's AdamW state too: about 30 GB for the 3B student
with its gradients, plus 7.5 GB for a 3B teacher or 16.6 GB for 7B). ``--dtype fp32`` keeps fp32
student weights as the trainer does (``model_dtypes``); weights, gradients and AdamW state are
then about 60 GB for 3B.

    python benchmarks/gpu_vl_reopold_step.py --episodes 64 --turn-tokens 256
    python benchmarks/gpu_vl_reopold_step.py --device cpu --tiny     # smoke test, seconds on CPU

``--tiny`` runs the same code with tiny Qwen2.5-VL models (``reopold_agent.demo.tiny_vl`` specs
``nano`` student, ``micro`` teacher; 1,024 embedding rows, more than the tokenizer has, like
Qwen's) on 56x56 images.
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.envs.visual_qa import VisualQAEnv
from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.rollout.engine import EpisodeRequest, RolloutEngine
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.teacher import TeacherScorer
from reopold_agent.tool_protocol import render_tool_call
from reopold_agent.vision import VisionProcessor
from reopold_agent.vision.loading import enable_activation_checkpointing
from reopold_agent.demo.tiny_vl import TINY_VL_SPECS, TinyVLSpec, build_tiny_processor, vision_token_ids

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import (  # noqa: E402 - this script's neighbour
    GoldFirstTurn, check_device, check_parser, parse_with_profile, timed_steps)

_QWEN25_VL_VISION = dict(vision_depth=32, vision_hidden_size=1280, vision_num_heads=16, vision_intermediate_size=3420,
                         patch_size=14, temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                         fullatt_block_indexes=(7, 15, 23, 31), max_position_embeddings=128000)
QWEN_VOCAB = 151936
"""Embedding rows of Qwen2.5(-VL) 0.5B-3B checkpoints."""
SHAPES: dict[str, tuple[TinyVLSpec, int]] = {
    # Qwen/Qwen2.5-VL-3B-Instruct config.json (head_dim 128, mrope_section [16, 24, 24])
    "3b": (TinyVLSpec(hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
                      tie_word_embeddings=True, **_QWEN25_VL_VISION), QWEN_VOCAB),
    "3b-half": (TinyVLSpec(hidden_size=2048, intermediate_size=11008, num_layers=18, num_heads=16, num_kv_heads=2,
                           tie_word_embeddings=True, **_QWEN25_VL_VISION), QWEN_VOCAB),
    # Qwen/Qwen2.5-VL-7B-Instruct
    "7b": (TinyVLSpec(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                      tie_word_embeddings=False, **_QWEN25_VL_VISION), 152064),
    # tiny: 1024 rows, more than the tokenizer's ids, so sampled ids beyond them occur here too
    **{name: (spec, 1024) for name, spec in TINY_VL_SPECS.items()},
}
"""Model shapes: (spec, vocabulary size)."""
PROFILES = {
    "full": dict(student_shape="3b", teacher_shape="3b", episodes=64, group_size=8, turn_tokens=256,
                 image_min_pixels=3136, image_max_pixels=401408, micro_batch=4, teacher_rows=8, dtype="bf16",
                 teacher_dtype="bf16"),
    "tiny": dict(student_shape="nano", teacher_shape="micro", episodes=4, group_size=2, turn_tokens=16,
                 image_min_pixels=3136, image_max_pixels=3136, micro_batch=2, teacher_rows=4, dtype="fp32",
                 teacher_dtype="fp32"),
}
"""Defaults without and with ``--tiny`` (every one can be overridden)."""
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_ASKED_BOX = re.compile(r"inside \[(\d+), (\d+), (\d+), (\d+)\]")


def vl_config(spec: TinyVLSpec, vocab_size: int, tokenizer) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of shape ``spec`` with the tokenizer's special and vision token ids."""
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    text = dict(vocab_size=vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
                rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                 "mrope_section": list(spec.mrope_section)}, **special)
    vision = dict(depth=spec.vision_depth, hidden_size=spec.vision_hidden_size, num_heads=spec.vision_num_heads,
                  intermediate_size=spec.vision_intermediate_size, out_hidden_size=spec.hidden_size,
                  patch_size=spec.patch_size, temporal_patch_size=spec.temporal_patch_size,
                  spatial_merge_size=spec.spatial_merge_size, window_size=spec.window_size,
                  fullatt_block_indexes=list(spec.fullatt_block_indexes))
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec.tie_word_embeddings,
                            **vision_token_ids(tokenizer))


def build(shape: str, tokenizer, dtype: torch.dtype, device: torch.device, seed: int):
    """A randomly initialised Qwen2.5-VL model of ``shape``, created directly on ``device``."""
    spec, vocab = SHAPES[shape]
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            vl_config(spec, vocab, tokenizer), dtype=dtype)
    return model


def zoom_into_asked_cell(prompt_text: str) -> str:
    """The gold first turn of a ``dots`` episode: the zoom call into the cell its prompt asks about."""
    match = _ASKED_BOX.search(prompt_text)
    if match is None:
        raise ValueError("the prompt names no cell 'inside [x0, y0, x1, y1]'; use VisualQAEnv(level='dots')")
    return render_tool_call("zoom", {"bbox": [int(v) for v in match.groups()]})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = check_parser(__doc__.splitlines()[0], "tiny VL models and 56x56 images: a smoke test of this script")
    p.add_argument("--student-shape", choices=sorted(SHAPES))
    p.add_argument("--teacher-shape", choices=sorted(SHAPES), help="3b (default), 3b-half (smaller) or 7b")
    p.add_argument("--image-min-pixels", type=int)
    p.add_argument("--image-max-pixels", type=int, help="rollout.image_max_pixels (default 401408)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="student parameter dtype (default bf16, tiny fp32)")
    p.add_argument("--teacher-dtype", choices=sorted(DTYPES), help="teacher parameter dtype (default bf16, tiny fp32)")
    p.add_argument("--autocast", action=argparse.BooleanOptionalAction,
                   help="run the step under bf16 autocast (default: on a GPU)")
    return parse_with_profile(p, argv, PROFILES)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the check; prints the figures and returns them."""
    args = parse_args(argv)
    device = check_device(args)
    cuda = device.type == "cuda"
    autocast = cuda if args.autocast is None else args.autocast
    tokenizer = task_tokenizer(gold_conversations("visual_qa", count=16))
    student = build(args.student_shape, tokenizer, DTYPES[args.dtype], device, args.seed)
    enable_activation_checkpointing(student)
    teacher = build(args.teacher_shape, tokenizer, DTYPES[args.teacher_dtype], device, args.seed + 1)
    spec = SHAPES[args.student_shape][0]
    image_processor = build_tiny_processor(tokenizer, min_pixels=args.image_min_pixels,
                                           max_pixels=args.image_max_pixels, spec=spec).image_processor
    vision = VisionProcessor.for_model(student.config, image_processor, min_pixels=args.image_min_pixels,
                                       max_pixels=args.image_max_pixels)
    vision.check_compatible(teacher.config, "teacher")
    pad = tokenizer.pad_token_id
    backend = GoldFirstTurn(HFGenerationBackend(student, pad_token_id=pad, vision=vision), tokenizer, args.turn_tokens,
                            gold_text=zoom_into_asked_cell)
    config = RolloutConfig(group_size=args.group_size, max_turn_tokens=max(args.turn_tokens, 128),
                           max_episode_tokens=32768, max_turns=2, render_tools=True,
                           image_min_pixels=args.image_min_pixels, image_max_pixels=args.image_max_pixels)
    engine = RolloutEngine(backend, tokenizer, config, vision=vision)
    envs = [VisualQAEnv(level="dots", max_tool_rounds=2) for _ in range(args.episodes)]
    requests = [EpisodeRequest(seed=i, options={"index": i // args.group_size}, sample_index=i % args.group_size)
                for i in range(args.episodes)]
    scorer = TeacherScorer(teacher, pad_token_id=pad, batch_rows=args.teacher_rows, vision=vision)
    step = timed_steps(args.steps, lambda i: engine.run(envs, requests, seed=args.seed + i, task="visual_qa"),
                       scorer, student, pad_token_id=pad, micro_batch=args.micro_batch, device=device,
                       autocast=autocast, vision=vision)
    trajs, stats = step.trajectories, step.stats
    for env in envs:
        env.close()
    model_tokens = sum(t.num_model_tokens for t in trajs)
    all_tokens = sum(t.num_tokens for t in trajs)
    image_tokens = sum(r.token_end - r.token_start for t in trajs for r in t.images)
    images = sum(len(t.images) for t in trajs)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    n = len(trajs)
    timing = engine.timings
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}  torch {torch.__version__}  "
          f"student {args.student_shape} ({args.dtype}) / teacher {args.teacher_shape} ({args.teacher_dtype}), "
          f"bf16 autocast: {autocast}, cuDNN attention: {args.cudnn_attention}")
    print(f"episodes {n}, model tokens {model_tokens}, all tokens {all_tokens}, images {images}")
    print(f"per episode: {images / n:.2f} images, {image_tokens / n:.1f} image tokens, "
          f"{all_tokens / n:.1f} tokens, {model_tokens / n:.1f} model tokens")
    print(f"rollout  {step.rollout_s:7.2f} s  ({model_tokens / step.rollout_s:,.0f} generated tok/s; model "
          f"{timing.get('generate_s', 0.0):.2f} s, env {timing.get('env_s', 0.0):.2f} s, "
          f"templating/images {timing.get('template_s', 0.0):.2f} s)")
    total_s = step.rollout_s + step.teacher_s + step.update_s
    print(f"teacher  {step.teacher_s:7.2f} s  ({all_tokens / step.teacher_s:,.0f} scored tok/s)")
    print(f"update   {step.update_s:7.2f} s  ({all_tokens / step.update_s:,.0f} trained tok/s)")
    print(f"step     {total_s:7.2f} s; teacher share {100 * step.teacher_s / total_s:.1f}%")
    print(f"peak {'GPU memory' if cuda else 'process RSS'} {peak_gib:.2f} GiB")
    print({k: round(v, 4) for k, v in stats.items() if k.startswith("objective/")})
    return {"episodes": n, "model_tokens": model_tokens, "all_tokens": all_tokens, "images_per_episode": images / n,
            "image_tokens_per_episode": image_tokens / n, "rollout_s": step.rollout_s, "teacher_s": step.teacher_s,
            "update_s": step.update_s, "peak_gib": peak_gib, **stats}


if __name__ == "__main__":
    main()
