"""Teacher scoring with and without the shared prefix computed once, seconds on the CPU.

A rollout batch of ``--prompts`` prompts x ``--group-size`` rollouts of random tokens: each
prompt ``--prompt-tokens`` long (system prompt, tool schemas, question), each rollout's own part
uniform in ``--min-own`` to ``--max-own`` tokens. The model is a tiny Qwen3 of the ``--spec``
shape (random weights) on the tool_math tokenizer. Alternating which goes first, it times the padded scoring the ``hf``
teacher does (rows sorted by length, ``--batch-rows`` a forward) and
:func:`reopold_agent.shared_prefix.group_logprobs` per prompt, checks they agree, and prints the
median of ``--repeats`` and the ratio.

    python benchmarks/shared_prefix_scoring.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reopold_agent.batching import pad_right
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.shared_prefix import group_logprobs
from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.demo.tiny_models import build_causal_lm


def rollout_rows(prompts: int, group_size: int, prompt_tokens: int, own: tuple[int, int], vocab: int,
                 seed: int) -> list[list[list[int]]]:
    """Per prompt, its ``group_size`` rows of token ids (the prompt, then the rollout's own tokens)."""
    g = torch.Generator().manual_seed(seed)
    groups = []
    for _ in range(prompts):
        prompt = torch.randint(5, vocab, (prompt_tokens,), generator=g).tolist()
        lengths = torch.randint(own[0], own[1] + 1, (group_size,), generator=g).tolist()
        groups.append([prompt + torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths])
    return groups


@torch.no_grad()
def padded(model, rows: list[list[int]], batch_rows: int) -> list[torch.Tensor]:
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list = [None] * len(rows)
    for start in range(0, len(order), batch_rows):
        picked = order[start:start + batch_rows]
        ids, attn = pad_right([rows[i] for i in picked], 0)
        logp, _ = sequence_logprobs(model, ids, attn)
        for b, i in enumerate(picked):
            out[i] = logp[b, :len(rows[i])]
    return out


@torch.no_grad()
def shared(model, groups: list[list[list[int]]], prompt_tokens: int) -> list[torch.Tensor]:
    return [logp for rows in groups for logp, _ in group_logprobs(model, rows, prompt_tokens, pad_token_id=0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", default="small", help="tiny model shape: nano, micro or small")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=157)
    p.add_argument("--min-own", type=int, default=30)
    p.add_argument("--max-own", type=int, default=120)
    p.add_argument("--batch-rows", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = task_tokenizer(gold_conversations("tool_math", count=16))  # the task's 512-token vocabulary
    model = build_causal_lm(tokenizer, args.spec, seed=0).eval()
    groups = rollout_rows(args.prompts, args.group_size, args.prompt_tokens, (args.min_own, args.max_own),
                          len(tokenizer), seed=0)
    rows = [r for rows in groups for r in rows]
    for a, b in zip(padded(model, rows, args.batch_rows), shared(model, groups, args.prompt_tokens)):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-5)
    times: dict[str, list[float]] = {"padded": [], "shared prefix": []}
    runs = {"padded": lambda: padded(model, rows, args.batch_rows),
            "shared prefix": lambda: shared(model, groups, args.prompt_tokens)}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    tokens = sum(len(r) for r in rows)
    params = sum(x.numel() for x in model.parameters())
    print(f"{args.spec} model ({params / 1e6:.2f}M parameters), {len(rows)} rows, {tokens} tokens, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:14s} {median:.3f} s  ({tokens / median:,.0f} tokens/s)")
    ratios = [a / b for a, b in zip(times["padded"], times["shared prefix"])]
    print(f"  padded / shared prefix: median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
