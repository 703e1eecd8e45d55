"""The ``hf`` teacher's scoring padded, packed, and with the shared prefix computed once (CPU).

A rollout batch of ``--prompts`` prompts x ``--group-size`` rollouts of random tokens: each
prompt ``--prompt-tokens`` long (system prompt, tool schemas, question), each rollout's own part
uniform in ``--min-own`` to ``--max-own`` tokens. The model is a tiny Qwen3 of the ``--spec``
shape (random weights) on the tool_math tokenizer. Alternating the order, it times
``TeacherScorer.score_rows`` padded (rows sorted by length, ``--batch-rows`` a forward), packed
(``model.packed_sequences``) and packed with the shared prefix (``model.shared_prefix``), checks
they agree, and prints the median of ``--repeats`` and the ratios.

    python benchmarks/shared_prefix_scoring.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reopold_agent.teacher import TeacherScorer
from reopold_agent.teacher_scoring import ScoringRow
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


def scorers(model, batch_rows: int) -> dict[str, TeacherScorer]:
    """The ``hf`` teacher as each setting of ``model.packed_sequences`` / ``model.shared_prefix`` makes it."""
    return {"padded": TeacherScorer(model, pad_token_id=0, batch_rows=batch_rows),
            "packed": TeacherScorer(model, pad_token_id=0, batch_rows=batch_rows, packed=True),
            "shared prefix": TeacherScorer(model, pad_token_id=0, batch_rows=batch_rows, packed=True,
                                           shared_prefix=True)}


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
    rows = [ScoringRow(r, [0] * args.prompt_tokens + [1] * (len(r) - args.prompt_tokens))
            for group in groups for r in group]
    runs = scorers(model, args.batch_rows)
    reference = runs["padded"].score_rows(rows)
    for name, scorer in runs.items():
        for a, b in zip(reference, scorer.score_rows(rows)):
            torch.testing.assert_close(b[1:], a[1:], atol=5e-5, rtol=1e-5)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            start = time.perf_counter()
            runs[name].score_rows(rows)
            times[name].append(time.perf_counter() - start)
    tokens = sum(len(r.token_ids) for r in rows)
    params = sum(x.numel() for x in model.parameters())
    print(f"{args.spec} model ({params / 1e6:.2f}M parameters), {len(rows)} rows, {tokens} tokens, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:14s} {median:.3f} s  ({tokens / median:,.0f} tokens/s)")
    for name in ("padded", "packed"):
        ratios = [a / b for a, b in zip(times[name], times["shared prefix"])]
        print(f"  {name} / shared prefix: median {statistics.median(ratios):.2f}x "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
