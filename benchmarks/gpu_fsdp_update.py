"""GPU check: the student's update under DDP's layout vs FSDP2, memory and time, on one device.

A randomly initialised Qwen2.5-shaped student (no download) is scored through ``SequenceScorer``
as the trainer does, prepared by accelerate with the chosen strategy, and updated with AdamW on
random token rows; FSDP2 also gathers the full weights as the sampler copy's refresh does.

    torchrun --nproc_per_node 1 benchmarks/gpu_fsdp_update.py --strategy ddp --shape 0.5b
    torchrun --nproc_per_node 1 benchmarks/gpu_fsdp_update.py --strategy fsdp --shape 0.5b
    torchrun --nproc_per_node 2 benchmarks/gpu_fsdp_update.py --strategy fsdp --shape tiny-student --device cpu

Prints one JSON line (rank 0): seconds per update, peak GPU memory, resident memory after the
first update, and for FSDP2 the seconds of one full-weight gather. On a CPU, accelerate chooses
FSDP only once ``tests/fsdp_cases.fsdp_accelerator`` has routed its state (see that module).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reopold_agent.sequence_scoring import SequenceScorer  # noqa: E402
from reopold_agent.sharded_state import gather_full_weights  # noqa: E402

SHAPES = {
    # Qwen/Qwen2.5-0.5B-Instruct and Qwen/Qwen2.5-1.5B-Instruct config.json
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True, vocab_size=151936),
    "tiny-student": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, tie_word_embeddings=True, vocab_size=1024),
}


def accelerator_for(strategy: str, device: str):
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    cpu = device == "cpu"
    if strategy == "ddp":
        return Accelerator(cpu=cpu, mixed_precision="no" if cpu else "bf16")
    if cpu:
        from tests.fsdp_cases import fsdp_accelerator

        return fsdp_accelerator()
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    return Accelerator(mixed_precision="bf16", fsdp_plugin=plugin)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), required=True)
    parser.add_argument("--shape", choices=tuple(SHAPES), default="0.5b")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--rows", type=int, default=8, help="rows a micro-batch")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens a row")
    parser.add_argument("--steps", type=int, default=4, help="timed updates after one warm-up update")
    args = parser.parse_args(argv)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    accelerator = accelerator_for(args.strategy, args.device)
    torch.manual_seed(0)
    student = Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=32768, **SHAPES[args.shape]))
    student.gradient_checkpointing_enable()
    student = student.to(accelerator.device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    scorer, optimizer = accelerator.prepare(SequenceScorer(student), optimizer)
    vocab = SHAPES[args.shape]["vocab_size"]
    ids_BT = torch.randint(0, vocab, (args.rows, args.tokens), device=accelerator.device)
    mask_BT = torch.ones_like(ids_BT)
    cuda = accelerator.device.type == "cuda"

    def update() -> None:
        with accelerator.autocast():
            logp_BT, _ = scorer(ids_BT, mask_BT, chunk_rows=1024)
        accelerator.backward(-logp_BT.mean())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update()
    resident = torch.cuda.memory_allocated() / 1e9 if cuda else None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        update()
    if cuda:
        torch.cuda.synchronize()
    report = {"strategy": args.strategy, "shape": args.shape, "processes": accelerator.num_processes,
              "rows": args.rows, "tokens": args.tokens, "seconds_per_update": (time.perf_counter() - start) / args.steps,
              "resident_gb_after_first_update": resident,
              "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}
    if args.strategy == "fsdp":
        start = time.perf_counter()
        gather_full_weights(student, main_only=False)
        if cuda:
            torch.cuda.synchronize()
        report["full_weight_gather_s"] = time.perf_counter() - start
    if accelerator.is_main_process:
        print(json.dumps(report))
    accelerator.end_training()
    return report


if __name__ == "__main__":
    main()
