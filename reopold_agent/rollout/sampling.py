"""Batch-invariant sampling: the Gumbel-max trick with counter-based noise.

A row samples ``argmax(warped_logits + gumbel)`` where the Gumbel noise of vocabulary entry ``v``
at decode step ``t`` is a hash of ``(row seed, t, v)``, computed on the logits' device with
integer tensor arithmetic. No RNG state is shared between rows, so the token a row samples
depends only on its own logits, its seed and the step: not on its index in the batch, on the
other rows or on their padding. The rollout engine relies on this, because which episodes share
a generation batch depends on how long their tools take.

Hash: ``mix32`` is a 32-bit xor-shift-multiply finaliser (the "lowbias32" constants). A row key
is ``mix32`` of the seed's two 32-bit halves, a step key mixes the row key with the step, and the
noise input is the step key XOR a per-vocabulary key (itself ``mix32(v)``), mixed once more.
Values stay in ``[0, 2**32)`` held in int64 and multipliers are taken in [-2**31, 2**31), so no
product overflows int64 (overflow is undefined behaviour in C++ even where it usually wraps).

Uniform: the top 24 bits ``k`` of the hash give ``u = (k + 0.5) / 2**24``, exact in float32 and
strictly inside (0, 1); ``gumbel = -log(-log(u))`` then lies in about [-2.9, 17.3]. Deliberate
departure from exact sampling: a token whose warped logit is more than ~20 below the best one
can never win (its probability is below ~2e-9).

Cost: about 20 elementwise ops on a ``[B, V]`` int64/float32 tensor per decode step, mostly in
place, instead of ``softmax`` + ``multinomial``.
"""

from __future__ import annotations

import torch

from .backend import SamplingParams

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _signed(c: int) -> int:
    """The representative of ``c`` modulo 2**32 in [-2**31, 2**31)."""
    return c - (1 << 32) if c >= 1 << 31 else c


_MUL_A = _signed(0x7FEB352D)
_MUL_B = _signed(0x846CA68B)


def mix32(x, *, inplace: bool = False):
    """A bijective 32-bit integer hash of ``x`` in [0, 2**32) (int64 tensor or Python int).

    Multipliers lie in [-2**31, 2**31), so ``|x * c| < 2**63``; masking a negative product keeps
    its two's-complement low 32 bits, which are those of the unsigned product. ``inplace``
    overwrites a tensor ``x`` (saves memory traffic on ``[B, V]`` tensors).
    """
    if isinstance(x, torch.Tensor) and not inplace:
        x = x.clone()
    x ^= x >> 16
    x *= _MUL_A
    x &= _MASK32
    x ^= x >> 15
    x *= _MUL_B
    x &= _MASK32
    x ^= x >> 16
    return x


def row_keys(seeds: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Fold per-row seeds (any Python ints, taken modulo 2**64) into 32-bit keys.

    Returns:
        keys_B: int64 in [0, 2**32).
    """
    full = [s & ((1 << 64) - 1) for s in seeds]
    lo = torch.tensor([s & _MASK32 for s in full], dtype=torch.long, device=device)
    hi = torch.tensor([s >> 32 for s in full], dtype=torch.long, device=device)
    return mix32(mix32(lo ^ _GOLDEN) ^ hi)


def uniform_noise(keys_B: torch.Tensor, step: int | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Counter-based uniforms for every (row, vocabulary entry) at one decode step.

    Args:
        keys_B: row keys from :func:`row_keys`.
        step: decode step (>= 0) within the row's turn: one for all rows, or [B] int64, each
            row's own (rows that joined a running batch later are at earlier steps).
        vocab_size: V.

    Returns:
        u_BV: float32 in (0, 1), a function of (key, step, v) only.
    """
    step_B = mix32((keys_B + ((step * _GOLDEN) & _MASK32)) & _MASK32)
    vocab_V = mix32(torch.arange(vocab_size, dtype=torch.long, device=keys_B.device), inplace=True)
    h_BV = mix32(step_B[:, None] ^ vocab_V[None, :], inplace=True)
    h_BV >>= 8
    return h_BV.to(torch.float32).mul_(2.0 ** -24).add_(2.0 ** -25)


def gumbel_noise(keys_B: torch.Tensor, step: int | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` from :func:`uniform_noise`. [B, V] float32."""
    return uniform_noise(keys_B, step, vocab_size).log_().neg_().log_().neg_()


def warp(logits_BV: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k and top-p as ``-inf`` masks; every op is row-wise. [B, V]."""
    logits_BV = logits_BV / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits_BV, min(params.top_k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits_BV, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs > params.top_p  # keep the token crossing top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits_BV = logits_BV.masked_fill(drop, float("-inf"))
    return logits_BV


def sample(logits_BV: torch.Tensor, params: SamplingParams, keys_B: torch.Tensor,
           step: int | torch.Tensor) -> torch.Tensor:
    """One id per row from the warped distribution (greedy argmax when temperature is 0).

    Args:
        logits_BV: raw next-token logits (float32).
        params: temperature, top-k, top-p.
        keys_B: row keys from :func:`row_keys`.
        step: decode step, so consecutive tokens of a row get fresh noise (an int, or [B] int64
            per row).

    Returns:
        ids_B: int64.
    """
    if params.suppress_token_ids:
        logits_BV = logits_BV.index_fill(-1, torch.tensor(params.suppress_token_ids, device=logits_BV.device),
                                          float("-inf"))
    if params.temperature <= 0:
        return logits_BV.argmax(-1)
    return (warp(logits_BV, params) + gumbel_noise(keys_B, step, logits_BV.shape[-1])).argmax(-1)
