"""One REOPOLD update with and without shared-prefix scoring (``model.shared_prefix``), CPU seconds.

The batch of ``benchmarks/shared_prefix_scoring.py`` (prompts x rollouts of random tokens, the
prompt shared, each rollout's own tokens the student's) with behaviour and teacher log-probs
from two tiny models; the student is a tiny Qwen3 of the ``--spec`` shape. It times one
``policy_update`` (``--mini-batches`` optimiser steps, ``--micro-batch-rows`` rows a forward),
alternating the order, and prints the median of ``--repeats`` and the ratio.

    python benchmarks/shared_prefix_update.py --mini-batches 1 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reopold_agent.batching import collate
from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.demo.tiny_models import build_causal_lm
from reopold_agent.policy_update import policy_update
from reopold_agent.sequence_scoring import SequenceScorer, sequence_logprobs
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig
from reopold_agent.trajectory import Trajectory
from shared_prefix_scoring import rollout_rows


def trajectories(groups, prompt_tokens: int, behaviour, teacher) -> list[Trajectory]:
    out = []
    for p, rows in enumerate(groups):
        for ids in rows:
            t = torch.tensor([ids])
            with torch.no_grad():
                lp, ent = sequence_logprobs(behaviour, t, torch.ones_like(t), with_entropy=True)
                tlp, _ = sequence_logprobs(teacher, t, torch.ones_like(t))
            mask = [0] * prompt_tokens + [1] * (len(ids) - prompt_tokens)
            out.append(Trajectory(token_ids=ids, source=["prompt" if m == 0 else "model" for m in mask],
                                  turn=[0] * len(ids), loss_mask=mask, messages=[], prompt_id=f"p{p}",
                                  logprobs=[v if m else None for v, m in zip(lp[0].tolist(), mask)],
                                  entropy=[v if m else None for v, m in zip(ent[0].tolist(), mask)],
                                  teacher_logprobs=[None] + tlp[0, 1:].tolist(), reward=0.0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="small")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=157)
    p.add_argument("--min-own", type=int, default=30, help="fewest own tokens of a rollout")
    p.add_argument("--max-own", type=int, default=120, help="most own tokens of a rollout")
    p.add_argument("--mini-batches", type=int, default=1)
    p.add_argument("--micro-batch-rows", type=int, default=16)
    p.add_argument("--split", choices=("rows", "prompts"), default="rows", help="train.mini_batch_split")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = task_tokenizer(gold_conversations("tool_math", count=16))
    student = build_causal_lm(tokenizer, args.spec, seed=0)
    teacher = build_causal_lm(tokenizer, args.spec, seed=1).eval()
    groups = rollout_rows(args.prompts, args.group_size, args.prompt_tokens, (args.min_own, args.max_own), len(tokenizer), seed=0)
    batch = collate(trajectories(groups, args.prompt_tokens, student, teacher), pad_token_id=0)
    times: dict[str, list[float]] = {"unshared": [], "shared prefix": []}
    for r in range(args.repeats):
        for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
            scorer = SequenceScorer(student, shared_prefix=name == "shared prefix")
            opt = torch.optim.SGD(student.parameters(), lr=0.0)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            start = time.perf_counter()
            policy_update(scorer, opt, sched, batch, step=0, settings=ObjectiveConfig(name="reopold"),
                          optim=TrainLoopConfig(mini_batches=args.mini_batches, micro_batch_rows=args.micro_batch_rows,
                                                mini_batch_split=args.split),
                          total_steps=10, backward=lambda loss: loss.backward(),
                          clip_grad=lambda m: torch.nn.utils.clip_grad_norm_(student.parameters(), m),
                          generator=torch.Generator().manual_seed(r))
            times[name].append(time.perf_counter() - start)
    print(f"{args.spec} student, {batch.num_rows} rows, {args.mini_batches} mini-batch(es) of micro-batches of "
          f"{args.micro_batch_rows} rows, {args.threads} thread(s), median of {args.repeats}:")
    for name, values in times.items():
        print(f"  {name:14s} {statistics.median(values):.3f} s")
    ratios = [a / b for a, b in zip(times["unshared"], times["shared prefix"])]
    print(f"  unshared / shared prefix: median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
