"""GPU check: one REOPOLD step with a Qwen2.5-0.5B-shaped student and a 1.5B-shaped teacher.

Random weights, bf16, no downloads. A batch of multi-turn tool episodes is built from random
token ids with the layout of a tool_math episode (prompt, model turn ending in a tool call, tool
output, model answer); the student samples every model turn with the real decode loop, the
teacher scores the whole sequences, and the policy update runs the REOPOLD objective. Prints the
time split, tokens per second and peak GPU memory.

    python benchmarks/gpu_reopold_step.py --episodes 64 --turn-tokens 256
    python benchmarks/gpu_reopold_step.py --device cpu --tiny     # smoke test, seconds on CPU

``--tiny`` runs the same code with tiny Qwen2 models and a small vocabulary, so that the test
suite keeps this script runnable on machines without a GPU.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from reopold_agent.batching import collate
from reopold_agent.policy_update import policy_update
from reopold_agent.rollout.backend import SamplingParams
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.teacher import TeacherScorer
from reopold_agent.train_config import ObjectiveConfig, OptimConfig
from reopold_agent.trajectory import Trajectory
from reopold_agent.vision.loading import enable_activation_checkpointing

SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
    "tiny-student": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2),
    "tiny-teacher": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2),
}
VOCAB = 151936
PROFILES = {
    "full": dict(student="0.5b", teacher="1.5b", vocab=VOCAB, episodes=64, prompt_tokens=256, tool_tokens=128,
                 turn_tokens=256, micro_batch=8),
    "tiny": dict(student="tiny-student", teacher="tiny-teacher", vocab=512, episodes=4, prompt_tokens=12,
                 tool_tokens=6, turn_tokens=8, micro_batch=2),
}
"""Defaults without and with ``--tiny`` (the sizes can be overridden)."""


def build(shape: str, dtype: torch.dtype, vocab: int, device: torch.device) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=vocab, tie_word_embeddings=shape == "0.5b", max_position_embeddings=32768,
                         **SHAPES[shape])
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype)


def play(backend, episodes: int, prompt_len: int, tool_len: int, turn_tokens: int, vocab: int,
         g: torch.Generator):
    """Two model turns per episode around one tool output; returns trajectories."""
    seqs = [torch.randint(10, vocab, (prompt_len,), generator=g).tolist() for _ in range(episodes)]
    src = [["prompt"] * prompt_len for _ in range(episodes)]
    lps = [[None] * prompt_len for _ in range(episodes)]
    ents = [[None] * prompt_len for _ in range(episodes)]
    for turn in range(2):
        gens = backend.generate(seqs, [turn_tokens] * episodes, SamplingParams(),
                                seeds=[turn * episodes + i for i in range(episodes)])
        for i, gen in enumerate(gens):
            seqs[i] += gen.token_ids
            src[i] += ["model"] * len(gen.token_ids)
            lps[i] += gen.logprobs
            ents[i] += gen.entropy
            if turn == 0:
                tool = torch.randint(10, vocab, (tool_len,), generator=g).tolist()
                seqs[i] += tool
                src[i] += ["tool"] * tool_len
                lps[i] += [None] * tool_len
                ents[i] += [None] * tool_len
    return [Trajectory(token_ids=s, source=so, turn=[0] * len(s), loss_mask=[int(x == "model") for x in so],
                       logprobs=lp, entropy=en, messages=[], prompt_id=str(i // 8))
            for i, (s, so, lp, en) in enumerate(zip(seqs, src, lps, ents))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    p.add_argument("--tiny", action="store_true", help="tiny models: a smoke test of this script")
    p.add_argument("--episodes", type=int)
    p.add_argument("--prompt-tokens", type=int)
    p.add_argument("--tool-tokens", type=int)
    p.add_argument("--turn-tokens", type=int)
    p.add_argument("--micro-batch", type=int)
    args = p.parse_args(argv)
    for key, value in PROFILES["tiny" if args.tiny else "full"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the check; prints the figures and returns them."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU (or --device cpu --tiny for the smoke test)")
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("on the CPU only the --tiny smoke test runs")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    g = torch.Generator().manual_seed(0)
    student = build(args.student, torch.float32, args.vocab, device)
    enable_activation_checkpointing(student)
    teacher = build(args.teacher, torch.bfloat16 if cuda else torch.float32, args.vocab, device)
    backend = HFGenerationBackend(student, pad_token_id=0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        t0 = time.perf_counter()
        trajs = play(backend, args.episodes, args.prompt_tokens, args.tool_tokens, args.turn_tokens, args.vocab, g)
        sync()
        t1 = time.perf_counter()
        TeacherScorer(teacher, pad_token_id=0, batch_rows=16).score(trajs)
        sync()
        t2 = time.perf_counter()
        batch = collate(trajs, pad_token_id=0)
        stats = policy_update(student, optimizer, scheduler, batch, step=10, settings=ObjectiveConfig(),
                              optim=OptimConfig(micro_batch_rows=args.micro_batch), total_steps=300,
                              backward=lambda loss: loss.backward(),
                              clip_grad=lambda m: torch.nn.utils.clip_grad_norm_(student.parameters(), m))
        sync()
        t3 = time.perf_counter()
    model_tokens = sum(t.num_model_tokens for t in trajs)
    all_tokens = sum(t.num_tokens for t in trajs)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}  torch {torch.__version__}  "
          f"student {args.student} (fp32 weights) / teacher {args.teacher}, bf16 autocast: {cuda}")
    print(f"episodes {args.episodes}, model tokens {model_tokens}, all tokens {all_tokens}")
    print(f"rollout  {t1 - t0:7.2f} s  ({model_tokens / (t1 - t0):,.0f} generated tok/s)")
    print(f"teacher  {t2 - t1:7.2f} s  ({all_tokens / (t2 - t1):,.0f} scored tok/s)")
    print(f"update   {t3 - t2:7.2f} s  ({all_tokens / (t3 - t2):,.0f} trained tok/s)")
    print(f"step     {t3 - t0:7.2f} s; teacher share {100 * (t2 - t1) / (t3 - t0):.1f}%")
    print(f"peak {'GPU memory' if cuda else 'process RSS'} {peak_gib:.2f} GiB")
    print({k: round(v, 4) for k, v in stats.items() if k.startswith("objective/")})
    return {"episodes": args.episodes, "model_tokens": model_tokens, "all_tokens": all_tokens,
            "rollout_s": t1 - t0, "teacher_s": t2 - t1, "update_s": t3 - t2, "peak_gib": peak_gib, **stats}


if __name__ == "__main__":
    main()
