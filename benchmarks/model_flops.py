"""Model FLOPs of the GPU checks' phases, and the device's measured matmul peak, for MFU.

Model FLOPs count the work the method needs, not what a kernel happens to do: a forward pass
costs ``2 N`` per token (``N``: the parameters every token multiplies, i.e. all but the input
embedding, the output projection counted once even when tied) plus ``4 d`` per layer for each
earlier token it attends to (``d``: query heads times head width; scores and weighted values),
and a backward pass twice the forward. Recomputation (activation checkpointing), padding and
the decode loop's finished rows are not counted, so they show as lower utilisation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch


def matmul_parameters(model: Any) -> int:
    """Parameters a token multiplies: all but the input embedding (a tied head counted once)."""
    total = sum(p.numel() for p in model.parameters())  # a tied weight appears once
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return total if head is embedding else total - embedding.numel()


def forward_flops(model: Any, lengths: Iterable[int]) -> float:
    """FLOPs of one causal forward over sequences of ``lengths`` tokens (each token attends to
    itself and every earlier token of its sequence)."""
    config = getattr(model.config, "text_config", None) or model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention_width = config.num_attention_heads * head_dim
    n = matmul_parameters(model)
    flops = 0.0
    for length in lengths:
        attended = length * (length + 1) / 2  # sum over positions of the keys each one reads
        flops += 2 * n * length + 4 * config.num_hidden_layers * attention_width * attended
    return flops


def measured_peak_flops(device: torch.device, dtype: torch.dtype, *, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a square ``size`` matmul in ``dtype`` on ``device``: the best of ``repeats``
    timed runs after a warm-up (the peak the checks divide by)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for i in range(repeats + 2):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best
