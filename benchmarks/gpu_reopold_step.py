"""GPU check: one REOPOLD step on tool_math, a Qwen2.5-0.5B-shaped student, a 1.5B-shaped teacher.

Random weights, bf16, no downloads. Episodes are real ``tool_math`` episodes (``ToolMathEnv``
with the real sandboxed python tool) played by the real :class:`RolloutEngine` with the real
:class:`HFGenerationBackend`, except for one stand-in (``gpu_check.GoldFirstTurn``): the first
assistant turn of every episode is the gold python call (a random model would never call the
tool), scored by the student in one teacher-forced forward, so its behaviour log-probs and
entropies are the student's own. The tool runs in the sandbox, its output is templated and
appended, and the student samples the second turn with the real decode loop, up to
``--turn-tokens`` tokens (``max_turns`` is 2, so the episode ends there). Then the teacher scores
the batch and one policy update runs the REOPOLD objective, under bf16 autocast on a GPU.

The tokenizer is the project's small byte-level BPE with the Qwen chat template (no hub
access). The models keep Qwen's full vocabulary (151,936 rows), so the embedding and the
vocabulary projection cost what they cost in the real models; sampled ids beyond the
tokenizer's vocabulary decode to no text. Prints the time split (the rollout's split into
model, tool calls and templating too: the share outside the models), tokens per second, model
FLOP utilisation against a measured bf16 matmul peak (:mod:`model_flops`) and peak memory.

The rollout is timed once per decode loop (``--decode``: the growing cache, a static cache,
and a static cache with the decode step compiled into CUDA graphs; same seeds, so the same
episodes up to float rounding), and teacher scoring and the update once per layout
(``--packing``: padded rows and packed sequences) on the first decode loop's episodes.

    python benchmarks/gpu_reopold_step.py --episodes 64 --turn-tokens 256
    python benchmarks/gpu_reopold_step.py --episodes 256 --decode static,compiled --packing on
    python benchmarks/gpu_reopold_step.py --device cpu --tiny     # smoke test, seconds on CPU

``--tiny`` runs the same code with tiny Qwen2 models (1,024 embedding rows, more than the
tokenizer has, like Qwen's), so that the test suite keeps this script runnable without a GPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.envs.tool_math import ToolMathEnv
from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.rollout.engine import EpisodeRequest, RolloutEngine
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.sandbox import SandboxConfig, make_sandbox
from reopold_agent.teacher import TeacherScorer
from reopold_agent.tool_protocol import render_tool_call
from reopold_agent.vision.loading import enable_activation_checkpointing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import (  # noqa: E402 - this script's neighbour
    GoldFirstTurn, check_device, check_parser, parse_with_profile, timed_teacher_and_update)
from model_flops import forward_flops, measured_peak_flops  # noqa: E402

SHAPES = {
    # Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-1.5B-Instruct config.json
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "tiny-student": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "tiny-teacher": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=False),
}
QWEN_VOCAB = 151936
"""Embedding rows of the Qwen2.5 0.5B-3B checkpoints."""
PROFILES = {
    "full": dict(student="0.5b", teacher="1.5b", vocab=QWEN_VOCAB, episodes=64, group_size=8, turn_tokens=256,
                 micro_batch=8, teacher_rows=16, decode="growing,static,compiled", packing="off,on"),
    "tiny": dict(student="tiny-student", teacher="tiny-teacher", vocab=1024, episodes=4, group_size=2,
                 turn_tokens=8, micro_batch=2, teacher_rows=4, decode="growing,static", packing="off,on"),
}
"""Defaults without and with ``--tiny`` (every one can be overridden)."""


def build(shape: str, tokenizer, vocab: int, dtype: torch.dtype, device: torch.device, seed: int):
    """A randomly initialised Qwen2 causal LM of shape ``shape`` (tokenizer's special ids), made on ``device``."""
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=32768, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **SHAPES[shape])
    torch.manual_seed(seed)
    with torch.device(device):
        return Qwen2ForCausalLM._from_config(config, dtype=dtype)


def gold_calls(env: ToolMathEnv, items: int) -> dict[str, str]:
    """Question -> gold python call of the first ``items`` items of the env's split."""
    calls = {}
    for index in range(items):
        item = env.load_item(index)
        calls[item["question"]] = render_tool_call("python", {"code": item["code"]})
    return calls


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = check_parser(__doc__.splitlines()[0], "tiny models: a smoke test of this script")
    p.add_argument("--decode", help="comma-separated decode loops to time: growing (the default cache), static "
                                    "(StaticCache, fixed-shape steps), compiled (static + torch.compile of the step)")
    p.add_argument("--packing", help="comma-separated teacher/update layouts to time: off (padded rows), on (packed)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU (default: a measured matmul)")
    return parse_with_profile(p, argv, PROFILES)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the check; prints the figures and returns them."""
    args = parse_args(argv)
    device = check_device(args)
    cuda = device.type == "cuda"
    decodes, packings = args.decode.split(","), args.packing.split(",")
    if set(decodes) - set(DECODE_LOOPS) or set(packings) - {"off", "on"}:
        raise SystemExit(f"--decode takes {', '.join(DECODE_LOOPS)}; --packing takes off, on")
    tokenizer = task_tokenizer(gold_conversations("tool_math", count=16))
    student = build(args.student, tokenizer, args.vocab, torch.float32, device, args.seed)
    enable_activation_checkpointing(student)
    teacher = build(args.teacher, tokenizer, args.vocab, torch.bfloat16 if cuda else torch.float32, device,
                    args.seed + 1)
    pad = tokenizer.pad_token_id
    peak = args.peak_tflops * 1e12 if args.peak_tflops else \
        measured_peak_flops(device, torch.bfloat16 if cuda else torch.float32, size=8192 if cuda else 512)
    sandbox = make_sandbox(SandboxConfig())
    envs = [ToolMathEnv(sandbox=sandbox, split="train", max_tool_rounds=2) for _ in range(args.episodes)]
    calls = gold_calls(envs[0], -(-args.episodes // args.group_size))

    def gold_text(prompt_text: str) -> str:
        return next(call for question, call in calls.items() if question in prompt_text)

    config = RolloutConfig(group_size=args.group_size, max_turn_tokens=max(args.turn_tokens, 128),
                           max_episode_tokens=32768, max_turns=2)
    requests = [EpisodeRequest(seed=i, options={"index": i // args.group_size}, sample_index=i % args.group_size)
                for i in range(args.episodes)]
    scorer = TeacherScorer(teacher, pad_token_id=pad, batch_rows=args.teacher_rows)
    rollouts: dict[str, tuple[float, list, dict]] = {}
    try:
        for decode in decodes:
            hf = HFGenerationBackend(student, pad_token_id=pad, static_cache=decode != "growing",
                                     compile_decode=decode == "compiled")
            engine = RolloutEngine(GoldFirstTurn(hf, tokenizer, args.turn_tokens, gold_text=gold_text), tokenizer,
                                   config)
            try:
                time_rollouts(engine, decode, rollouts, envs, requests, args, device)
            except Exception as exc:  # noqa: BLE001 - one failing loop (a compiler error) leaves the others' figures
                if decode == decodes[0]:
                    raise
                print(f"decode {decode} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        sandbox.close()
    trajs = rollouts[decodes[0]][1]
    phases: dict[str, tuple[float, float, dict]] = {}
    for packing in packings:
        for i in range(args.steps):
            phases[packing] = timed_teacher_and_update(trajs, scorer, student, pad_token_id=pad,
                                                       micro_batch=args.micro_batch, device=device, autocast=cuda,
                                                       packed=packing == "on")
            print(f"step {i + 1}/{args.steps}: packing {packing}: teacher {phases[packing][0]:.2f} s, "
                  f"update {phases[packing][1]:.2f} s")
    return report(args, rollouts, phases, student, teacher, peak, cuda)


DECODE_LOOPS = ("growing", "static", "compiled")


def time_rollouts(engine, decode: str, rollouts: dict, envs, requests, args, device: torch.device) -> None:
    """``args.steps`` timed rollouts (seeds ``args.seed + i``, the same for every decode loop);
    ``rollouts[decode]`` holds the last one's seconds, trajectories and engine timings."""
    cuda = device.type == "cuda"
    for i in range(args.steps):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            t0 = time.perf_counter()
            trajs = engine.run(envs, requests, seed=args.seed + i, task="tool_math")
            if cuda:
                torch.cuda.synchronize()
        rollouts[decode] = (time.perf_counter() - t0, trajs, dict(engine.timings))
        print(f"step {i + 1}/{args.steps}: decode {decode}: rollout {rollouts[decode][0]:.2f} s")


def report(args, rollouts: dict, phases: dict, student, teacher, peak: float, cuda: bool) -> dict[str, float]:
    """Print the figures of the last step of every decode loop and layout; return them (the
    first decode loop's and the last layout's under the plain keys)."""
    first, last = next(iter(rollouts)), list(phases)[-1]
    trajs = rollouts[first][1]
    lengths = [t.num_tokens for t in trajs]
    model_tokens, all_tokens = sum(t.num_model_tokens for t in trajs), sum(lengths)
    tool_calls = sum(t.tool_calls for t in trajs)
    flops = {"rollout": forward_flops(student, lengths), "teacher": forward_flops(teacher, lengths),
             "update": 3 * forward_flops(student, lengths)}  # backward = twice the forward
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}  torch {torch.__version__}  "
          f"student {args.student} (fp32 weights) / teacher {args.teacher}, bf16 autocast: {cuda}, "
          f"cuDNN attention: {args.cudnn_attention}; matmul peak {peak / 1e12:.3g} TFLOP/s")
    print(f"episodes {len(trajs)}, tool calls {tool_calls}, model tokens {model_tokens}, all tokens {all_tokens}")
    out: dict[str, float] = {}
    for decode, (seconds, decoded, timing) in rollouts.items():
        outside = (timing["env_s"] + timing["template_s"]) / seconds
        same = [t.token_ids for t in decoded] == [t.token_ids for t in trajs]
        print(f"rollout  {decode:8s} {seconds:7.2f} s  ({model_tokens / seconds:,.0f} generated tok/s, MFU "
              f"{100 * flops['rollout'] / seconds / peak:.2f}%; model {timing['generate_s']:.2f} s, tool calls "
              f"{timing['env_s']:.2f} s, templating {timing['template_s']:.2f} s: {100 * outside:.1f}% outside the "
              f"models; tokens as decode {first}: {same})")
        out.update({f"rollout_s/{decode}": seconds, f"generated_tok_s/{decode}": model_tokens / seconds,
                    f"mfu/rollout/{decode}": flops["rollout"] / seconds / peak, f"outside_share/{decode}": outside})
    for packing, (teacher_s, update_s, _) in phases.items():
        print(f"teacher  packing {packing:3s} {teacher_s:7.2f} s  ({all_tokens / teacher_s:,.0f} scored tok/s, MFU "
              f"{100 * flops['teacher'] / teacher_s / peak:.2f}%)")
        print(f"update   packing {packing:3s} {update_s:7.2f} s  ({all_tokens / update_s:,.0f} trained tok/s, MFU "
              f"{100 * flops['update'] / update_s / peak:.2f}%)")
        out.update({f"teacher_s/{packing}": teacher_s, f"update_s/{packing}": update_s,
                    f"mfu/teacher/{packing}": flops["teacher"] / teacher_s / peak,
                    f"mfu/update/{packing}": flops["update"] / update_s / peak})
    rollout_s, (teacher_s, update_s, stats) = rollouts[first][0], phases[last]
    total_s = rollout_s + teacher_s + update_s
    print(f"step     {total_s:7.2f} s (decode {first}, packing {last}); teacher share "
          f"{100 * teacher_s / total_s:.1f}%")
    print(f"peak {'GPU memory' if cuda else 'process RSS'} {peak_gib:.2f} GiB")
    print({k: round(v, 4) for k, v in stats.items() if k.startswith("objective/")})
    return {**out, "episodes": len(trajs), "tool_calls": tool_calls, "model_tokens": model_tokens,
            "all_tokens": all_tokens, "tool_tokens": sum(s == "tool" for t in trajs for s in t.source),
            "rollout_s": rollout_s, "teacher_s": teacher_s, "update_s": update_s,
            "outside_share": out[f"outside_share/{first}"], "peak_gib": peak_gib, "peak_flops": peak, **stats}


if __name__ == "__main__":
    main()
