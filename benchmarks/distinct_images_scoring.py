"""Vision-language scoring with each distinct image encoded once, against encoding every copy (CPU seconds).

A batch of ``--prompts`` prompts x ``--group`` rollouts: each prompt holds one image of
``--image-side`` pixels square (random patches) and the same text; each rollout adds its own
random tokens. A tiny Qwen2.5-VL model of the ``--spec`` shape (random weights) scores the batch
without gradients (as the teacher does) and with a backward (as the update does), once with
``reopold_agent.vision.distinct_images`` encoding each distinct image once and once with every
copy encoded, alternated; the script prints the medians of ``--repeats`` and their ratio.

    python benchmarks/distinct_images_scoring.py --image-side 224 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import reopold_agent.sequence_scoring as sequence_scoring
from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
from reopold_agent.demo.tiny_vl import build_tiny_vl
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.vision import mrope_position_ids
from reopold_agent.vision.distinct_images import encode_images_once


def batch(model, args):
    """(input_ids [B, T], attention_mask [B, T], forward inputs with pixel values and 3D positions)."""
    vc = model.config.vision_config
    side = args.image_side // vc.patch_size
    grid = torch.tensor([1, side, side])
    image_tokens = side * side // vc.spatial_merge_size ** 2
    dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    image_id = model.config.image_token_id
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    rows, pixels = [], []
    for _ in range(args.prompts):
        prompt = (torch.randint(20, vocab, (24,), generator=g).tolist() + [image_id] * image_tokens
                  + torch.randint(20, vocab, (24,), generator=g).tolist())
        image = torch.randn(side * side, dim, generator=g)
        for _ in range(args.group):
            own = int(torch.randint(30, 90, (1,), generator=g))
            rows.append(prompt + torch.randint(20, vocab, (own,), generator=g).tolist())
            pixels.append(image)
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, :len(row)], attn[b, :len(row)] = torch.tensor(row), 1
    grids = grid.repeat(len(rows), 1)
    extra = {"position_ids": mrope_position_ids(ids, attn, grids, image_token_id=image_id,
                                                spatial_merge_size=vc.spatial_merge_size),
             "pixel_values": torch.cat(pixels), "image_grid_thw": grids}
    return ids, attn, extra


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="micro")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--image-side", type=int, default=224, help="pixels; a multiple of 28")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_tiny_vl(task_tokenizer(gold_conversations("visual_qa", count=16)), args.spec, seed=0)
    ids, attn, extra = batch(model, args)
    ways = {"every copy": lambda backbone, inputs: inputs, "once": encode_images_once}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
            sequence_scoring.encode_images_once = ways[name]
            start = time.perf_counter()
            with torch.no_grad():
                sequence_logprobs(model, ids, attn, extra_inputs=extra)
            middle = time.perf_counter()
            logp, _ = sequence_logprobs(model, ids, attn, extra_inputs=extra)
            (logp * attn).sum().backward()
            model.zero_grad(set_to_none=True)
            end = time.perf_counter()
            times.setdefault((name, "no grad (teacher)"), []).append(middle - start)
            times.setdefault((name, "with backward (update)"), []).append(end - middle)
    sequence_scoring.encode_images_once = encode_images_once
    print(f"{args.spec} VL model, {ids.shape[0]} rows ({args.prompts} prompts x {args.group}), "
          f"{args.image_side}px images, up to {ids.shape[1]} tokens, {args.threads} thread(s), median of {args.repeats}:")
    for part in ("no grad (teacher)", "with backward (update)"):
        every, once = (statistics.median(times[(name, part)]) for name in ("every copy", "once"))
        print(f"  {part:24s} every copy {every:.3f} s, once {once:.3f} s: {every / once:.2f}x")


if __name__ == "__main__":
    main()
