"""Padded against packed sequences: teacher scoring and the policy update, seconds on the CPU.

Builds a student and a teacher of the embedded tool_math default's shapes (random weights, the
task's tokenizer) and a rollout batch of ``--episodes`` random-token episodes whose lengths are
spread uniformly over ``--min-tokens`` to ``--max-tokens`` (multi-turn episodes differ several
fold in length: a first-turn answer against two tool rounds), a third of each episode prompt and
the rest model tokens. Then it times, alternating which goes first, the teacher's
``score_rows`` (``model.teacher_batch_rows`` rows a forward) and one ``policy_update`` of the
REOPOLD objective (the default's mini- and micro-batches), padded and packed, and prints the
median of ``--repeats`` and the tokens per second of each.

    python benchmarks/packed_scoring.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reopold_agent.batching import collate
from reopold_agent.demo.embedded import RECIPES, gold_conversations, task_tokenizer
from reopold_agent.policy_update import policy_update
from reopold_agent.sequence_scoring import SequenceScorer, sequence_logprobs
from reopold_agent.teacher import TeacherScorer
from reopold_agent.teacher_scoring import ScoringRow
from reopold_agent.demo.tiny_models import build_causal_lm
from reopold_agent.train_config import ObjectiveConfig, TrainLoopConfig
from reopold_agent.trajectory import Trajectory


def episode_lengths(count: int, low: int, high: int, seed: int) -> list[int]:
    """``count`` lengths drawn uniformly from ``[low, high]``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (count,), generator=g).tolist()


def random_trajectories(student, teacher, lengths: list[int], vocab: int, group_size: int, seed: int) -> list:
    """Episodes of random tokens: a third prompt, the rest model tokens, with the student's
    behaviour log-probs and entropies and the teacher's log-probs."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(5, vocab, (1, n), generator=g)
        prompt = max(n // 3, 1)
        mask = [0] * prompt + [1] * (n - prompt)
        with torch.no_grad():
            lp, ent = sequence_logprobs(student, ids, torch.ones_like(ids), with_entropy=True)
            tlp, _ = sequence_logprobs(teacher, ids, torch.ones_like(ids))
        out.append(Trajectory(
            token_ids=ids[0].tolist(), source=["prompt"] * prompt + ["model"] * (n - prompt), turn=[0] * n,
            loss_mask=mask, messages=[], prompt_id=f"p{i // group_size}",
            logprobs=[v if m else None for v, m in zip(lp[0].tolist(), mask)],
            entropy=[v if m else None for v, m in zip(ent[0].tolist(), mask)],
            teacher_logprobs=[None] + tlp[0, 1:].tolist(), reward=float(i % 2),
        ))
    return out


def time_update(student, batch, packed: bool, optim: TrainLoopConfig) -> float:
    """Seconds of one REOPOLD policy update (SGD at lr 0, so every run sees the same weights)."""
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    t0 = time.perf_counter()
    policy_update(SequenceScorer(student, packed=packed), opt, sched, batch, step=200, settings=ObjectiveConfig(),
                  optim=optim, total_steps=400, backward=lambda loss: loss.backward(),
                  clip_grad=lambda m: torch.nn.utils.clip_grad_norm_(student.parameters(), m),
                  generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - t0


def time_teacher(teacher, rows, pad: int, batch_rows: int, packed: bool) -> float:
    """Seconds of the hf teacher backend's ``score_rows`` over ``rows``."""
    scorer = TeacherScorer(teacher, pad_token_id=pad, batch_rows=batch_rows, packed=packed)
    t0 = time.perf_counter()
    scorer.score_rows(rows)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--min-tokens", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher-rows", type=int, default=16)
    p.add_argument("--mini-batches", type=int, default=4)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = RECIPES["tool_math"]
    tokenizer = task_tokenizer(gold_conversations("tool_math", count=16))
    student = build_causal_lm(tokenizer, recipe.student_spec, seed=args.seed)
    teacher = build_causal_lm(tokenizer, recipe.teacher_spec, seed=args.seed + 1)
    lengths = episode_lengths(args.episodes, args.min_tokens, args.max_tokens, args.seed)
    trajs = random_trajectories(student, teacher, lengths, len(tokenizer), 4, args.seed)
    batch = collate(trajs, pad_token_id=tokenizer.pad_token_id)
    rows = [ScoringRow(t.token_ids, t.loss_mask) for t in trajs]
    optim = TrainLoopConfig(micro_batch_rows=args.micro_batch, mini_batches=args.mini_batches)
    times: dict[str, list[float]] = {k: [] for k in ("teacher_padded", "teacher_packed", "update_padded",
                                                     "update_packed")}
    for r in range(args.repeats + 1):  # the first round warms up and is not counted
        order = (False, True) if r % 2 else (True, False)
        for packed in order:
            name = "packed" if packed else "padded"
            t_teacher = time_teacher(teacher, rows, tokenizer.pad_token_id, args.teacher_rows, packed)
            t_update = time_update(student, batch, packed, optim)
            if r:
                times[f"teacher_{name}"].append(t_teacher)
                times[f"update_{name}"].append(t_update)
    tokens = sum(lengths)
    print(f"{args.episodes} episodes of {min(lengths)}-{max(lengths)} tokens (mean {tokens / len(lengths):.0f}), "
          f"{args.threads} threads, medians of {args.repeats}")
    out = {}
    for key, values in times.items():
        out[key] = statistics.median(values)
        print(f"{key:15s} {out[key]:.4f} s  ({tokens / out[key]:,.0f} tok/s)")
    for part in ("teacher", "update"):
        out[f"{part}_speedup"] = out[f"{part}_padded"] / out[f"{part}_packed"]
        print(f"{part}: packed {out[f'{part}_speedup']:.2f}x the padded path")
    return out


if __name__ == "__main__":
    main()
