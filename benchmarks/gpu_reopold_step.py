"""GPU check: one REOPOLD step with a Qwen2.5-0.5B-shaped student and a 1.5B-shaped teacher.

Random weights, bf16, no downloads. A batch of multi-turn tool episodes is built from random
token ids with the layout of a tool_math episode (prompt, model turn ending in a tool call, tool
output, model answer); the student samples every model turn with the real decode loop, the
teacher scores the whole sequences, and the policy update runs the REOPOLD objective. Prints the
time split, tokens per second and peak GPU memory.

    python benchmarks/gpu_reopold_step.py --episodes 64 --turn-tokens 256
"""

from __future__ import annotations

import argparse
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
}
VOCAB = 151936


def build(shape: str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    config = Qwen2Config(vocab_size=VOCAB, tie_word_embeddings=shape == "0.5b", max_position_embeddings=32768,
                         **SHAPES[shape])
    return Qwen2ForCausalLM(config).to(device="cuda", dtype=dtype)


def play(backend, episodes: int, prompt_len: int, tool_len: int, turn_tokens: int, g: torch.Generator):
    """Two model turns per episode around one tool output; returns trajectories."""
    seqs = [torch.randint(10, VOCAB, (prompt_len,), generator=g).tolist() for _ in range(episodes)]
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
                tool = torch.randint(10, VOCAB, (tool_len,), generator=g).tolist()
                seqs[i] += tool
                src[i] += ["tool"] * tool_len
                lps[i] += [None] * tool_len
                ents[i] += [None] * tool_len
    return [Trajectory(token_ids=s, source=so, turn=[0] * len(s), loss_mask=[int(x == "model") for x in so],
                       logprobs=lp, entropy=en, messages=[], prompt_id=str(i // 8))
            for i, (s, so, lp, en) in enumerate(zip(seqs, src, lps, ents))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--tool-tokens", type=int, default=128)
    p.add_argument("--turn-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=8)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this check needs a CUDA GPU")
    g = torch.Generator().manual_seed(0)
    student = build("0.5b", torch.float32)
    enable_activation_checkpointing(student)
    teacher = build("1.5b", torch.bfloat16)
    backend = HFGenerationBackend(student, pad_token_id=0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        t0 = time.perf_counter()
        trajs = play(backend, args.episodes, args.prompt_tokens, args.tool_tokens, args.turn_tokens, g)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        TeacherScorer(teacher, pad_token_id=0, batch_rows=16).score(trajs)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        batch = collate(trajs, pad_token_id=0)
        stats = policy_update(student, optimizer, scheduler, batch, step=10, settings=ObjectiveConfig(),
                              optim=OptimConfig(micro_batch_rows=args.micro_batch), total_steps=300,
                              backward=lambda loss: loss.backward(),
                              clip_grad=lambda m: torch.nn.utils.clip_grad_norm_(student.parameters(), m))
        torch.cuda.synchronize()
        t3 = time.perf_counter()
    model_tokens = sum(t.num_model_tokens for t in trajs)
    all_tokens = sum(t.num_tokens for t in trajs)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"episodes {args.episodes}, model tokens {model_tokens}, all tokens {all_tokens}")
    print(f"rollout  {t1 - t0:7.2f} s  ({model_tokens / (t1 - t0):,.0f} generated tok/s)")
    print(f"teacher  {t2 - t1:7.2f} s  ({all_tokens / (t2 - t1):,.0f} scored tok/s)")
    print(f"update   {t3 - t2:7.2f} s  ({all_tokens / (t3 - t2):,.0f} trained tok/s)")
    print(f"step     {t3 - t0:7.2f} s; teacher share {100 * (t2 - t1) / (t3 - t0):.1f}%")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print({k: round(v, 4) for k, v in stats.items() if k.startswith("objective/")})


if __name__ == "__main__":
    main()
