"""Log-probabilities of chosen tokens and full-vocabulary entropy, computed in row chunks.

REOPOLD needs, per generated token, the student's log-probability of the sampled token and the
Shannon entropy of the student's full next-token distribution (method sections 1 and 3). The
naive route (``logits.float().log_softmax(-1)``) materialises a ``[B, T, V]`` fp32 tensor, which
at V ~ 150k and T ~ 8k is tens of GiB. Everything here works on at most ``chunk_rows`` token
positions at a time, so the extra memory is O(chunk_rows x V) in fp32, forward and backward.

Two entry points:

- :func:`token_logprobs_and_entropy` starts from logits (any float dtype). A custom autograd
  function recomputes each chunk's softmax in backward and writes the gradient straight into a
  ``logits``-shaped, ``logits``-dtype buffer (the gradient itself), so backward is chunked too.
- :func:`hidden_logprobs_and_entropy` starts from final hidden states and the LM-head weight, so
  the logits never exist in full at all. Each chunk runs under
  ``torch.utils.checkpoint`` (non-reentrant) when a gradient is needed: autograd keeps only the
  chunk's hidden slice and recomputes the ``[chunk, V]`` projection in backward. Without the
  checkpoint, autograd would save every chunk's ``[chunk, V]`` log-softmax and the peak would be
  O(B x T x V) again; ``checkpoint_chunks=False`` turns it off for callers who prefer speed.

Chunking rule (both functions): when ``chunk_rows >= T`` a chunk is ``chunk_rows // T`` whole
sequences; otherwise it is a run of at most ``chunk_rows`` positions inside one sequence. Every
chunk is therefore a strided *view* of the input, so non-contiguous inputs such as
``logits[:, :-1]`` are never copied in full.

Numerics: each chunk is upcast to fp32 (fp64 inputs stay fp64; the hidden path multiplies in
the weight's dtype, as the model's own LM head does, and upcasts the product), divided by
``temperature``, and passed to ``log_softmax``. Outputs are fp32 (fp64 for fp64 inputs).
Vocabulary entries with logit ``-inf`` contribute 0 to the entropy (0 log 0 = 0) and never
produce NaN, forward or backward. Backward is first-order only (no double backward).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["token_logprobs_and_entropy", "hidden_logprobs_and_entropy"]


def _row_blocks(B: int, T: int, chunk_rows: int) -> Iterator[tuple[slice, slice]]:
    """Yields (rows, positions) slices covering [B, T] in row-major order, <= chunk_rows each."""
    if T == 0:
        return
    if chunk_rows >= T:
        per = chunk_rows // T
        for b0 in range(0, B, per):
            yield slice(b0, min(b0 + per, B)), slice(0, T)
    else:
        for b in range(B):
            for t0 in range(0, T, chunk_rows):
                yield slice(b, b + 1), slice(t0, min(t0 + chunk_rows, T))


def _check_args(lead_shape: tuple[int, ...], token_ids_BT: Tensor, chunk_rows: int,
                temperature: float) -> None:
    assert len(lead_shape) == 2, f"expected [B, T, ...] input, got leading shape {lead_shape}"
    assert tuple(token_ids_BT.shape) == lead_shape, (
        f"token_ids_BT shape {tuple(token_ids_BT.shape)} != {lead_shape}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs; fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_stats(logits_CV: Tensor, ids_C: Tensor, temperature: float, with_entropy: bool,
                 entropy_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``ids_C`` and entropy for one chunk; differentiable through plain autograd.

    Args:
        logits_CV: [C, V] logits, any float dtype.
        ids_C: [C] token ids.
        temperature: divides the logits before the softmax.
        with_entropy: compute the entropy.
        entropy_grad: let the entropy carry a gradient (else it is computed from detached values).

    Returns:
        ``(logp_C, entropy_C)`` in fp32 (fp64 for fp64 input); ``entropy_C`` is None when
        ``with_entropy`` is False.
    """
    z_CV = logits_CV.to(_stat_dtype(logits_CV.dtype))
    if temperature != 1.0:
        z_CV = z_CV / temperature
    logp_CV = torch.log_softmax(z_CV, dim=-1)
    logp_C = logp_CV.gather(-1, ids_C.long().unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp_C, None
    if not entropy_grad:
        with torch.no_grad():  # one extra [C, V] buffer: p, overwritten by -p log p in place
            p_CV = logp_CV.exp()
            return logp_C, torch.special.entr(p_CV, out=p_CV).sum(-1)
    p_CV = logp_CV.exp()
    # 0 * log 0 := 0: zero the log where p underflows/is exactly 0 so no -inf meets a 0.
    safe_CV = logp_CV.masked_fill(p_CV == 0, 0.0)
    return logp_C, -(p_CV * safe_CV).sum(-1)


class _ChunkedLogitStats(torch.autograd.Function):
    """Chunked forward and backward for logp/entropy from a full logits tensor."""

    @staticmethod
    def forward(ctx, logits_BTV: Tensor, ids_BT: Tensor, chunk_rows: int, temperature: float,
                with_entropy: bool, entropy_grad: bool) -> tuple[Tensor, Tensor]:
        B, T, _ = logits_BTV.shape
        dtype = _stat_dtype(logits_BTV.dtype)
        logp_BT = logits_BTV.new_empty((B, T), dtype=dtype)
        ent_BT = logits_BTV.new_empty((B, T) if with_entropy else (0,), dtype=dtype)
        for rows, pos in _row_blocks(B, T, chunk_rows):
            lp, ent = _chunk_stats(logits_BTV[rows, pos].reshape(-1, logits_BTV.shape[-1]),
                                   ids_BT[rows, pos].reshape(-1), temperature, with_entropy, False)
            logp_BT[rows, pos] = lp.view(logp_BT[rows, pos].shape)
            if with_entropy:
                ent_BT[rows, pos] = ent.view(ent_BT[rows, pos].shape)
        ctx.save_for_backward(logits_BTV, ids_BT, ent_BT)
        ctx.cfg = (chunk_rows, temperature, with_entropy and entropy_grad)
        if not (with_entropy and entropy_grad):
            ctx.mark_non_differentiable(ent_BT)
        return logp_BT, ent_BT

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp_BT: Tensor | None, g_ent_BT: Tensor | None):
        logits_BTV, ids_BT, ent_BT = ctx.saved_tensors
        chunk_rows, temperature, ent_has_grad = ctx.cfg
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        B, T, V = logits_BTV.shape
        dtype = _stat_dtype(logits_BTV.dtype)
        grad_BTV = torch.empty_like(logits_BTV)
        for rows, pos in _row_blocks(B, T, chunk_rows):
            z_CV = logits_BTV[rows, pos].reshape(-1, V).to(dtype)
            if temperature != 1.0:
                z_CV = z_CV / temperature
            logp_CV = torch.log_softmax(z_CV, dim=-1)
            del z_CV
            p_CV = logp_CV.exp()
            g_lp = (g_logp_BT[rows, pos].reshape(-1, 1).to(dtype) if g_logp_BT is not None
                    else p_CV.new_zeros((p_CV.shape[0], 1)))
            # d logp(o)/dz_j = 1[j=o] - p_j ;  dH/dz_j = -p_j (log p_j + H)
            if ent_has_grad and g_ent_BT is not None:
                g_h = g_ent_BT[rows, pos].reshape(-1, 1).to(dtype)
                h = ent_BT[rows, pos].reshape(-1, 1)
                coef_CV = logp_CV.masked_fill_(p_CV == 0, 0.0).add_(h).mul_(g_h).add_(g_lp)
            else:
                coef_CV = g_lp
            grad_CV = p_CV.mul_(coef_CV).neg_()
            grad_CV.scatter_add_(-1, ids_BT[rows, pos].reshape(-1, 1).long(), g_lp)
            if temperature != 1.0:
                grad_CV.div_(temperature)
            grad_BTV[rows, pos] = grad_CV.view(grad_BTV[rows, pos].shape)  # casts on copy
        return grad_BTV, None, None, None, None, None


def token_logprobs_and_entropy(
    logits_BTV: Tensor,
    token_ids_BT: Tensor,
    *,
    chunk_rows: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = True,
    entropy_grad: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of given tokens and next-token entropy from logits, chunk by chunk.

    Args:
        logits_BTV: [B, T, V] logits, any float dtype (bf16/fp16/fp32/fp64), may be a
            non-contiguous view. Position t scores ``token_ids_BT[:, t]`` (shift beforehand).
        token_ids_BT: [B, T] integer token ids in ``[0, V)``.
        chunk_rows: token positions processed at once; extra memory is O(chunk_rows x V) fp32.
        temperature: logits are divided by it before the softmax (1.0 = none). Use the
            sampling temperature when scoring rollouts.
        with_entropy: also return the entropy; False skips that work.
        entropy_grad: when False (default) the entropy is a detached diagnostic/selection
            signal and carries no gradient; when True it is differentiable.

    Returns:
        ``(logp_BT, entropy_BT)``: [B, T] fp32 log pi(token) and [B, T] fp32 Shannon entropy
        in nats of the full (tempered) distribution, or None when ``with_entropy`` is False.
        ``logp_BT`` is differentiable w.r.t. ``logits_BTV`` (first-order only); the gradient
        w.r.t. the logits has the logits' dtype.

    Raises:
        ValueError: if ``chunk_rows < 1`` or ``temperature <= 0``.
    """
    _check_args(tuple(logits_BTV.shape[:-1]), token_ids_BT, chunk_rows, temperature)
    logp_BT, ent_BT = _ChunkedLogitStats.apply(logits_BTV, token_ids_BT, int(chunk_rows),
                                               float(temperature), bool(with_entropy),
                                               bool(entropy_grad))
    return logp_BT, (ent_BT if with_entropy else None)


def _hidden_chunk(hidden_CH: Tensor, ids_C: Tensor, weight_VH: Tensor, bias_V: Tensor | None,
                  temperature: float, with_entropy: bool,
                  entropy_grad: bool) -> tuple[Tensor, Tensor | None]:
    return _chunk_stats(F.linear(hidden_CH, weight_VH, bias_V), ids_C, temperature,
                        with_entropy, entropy_grad)


def hidden_logprobs_and_entropy(
    hidden_BTH: Tensor,
    lm_head_weight_VH: Tensor,
    token_ids_BT: Tensor,
    *,
    lm_head_bias: Tensor | None = None,
    chunk_rows: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = True,
    entropy_grad: bool = False,
    checkpoint_chunks: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-probability of given tokens and entropy from hidden states, never building logits.

    Args:
        hidden_BTH: [B, T, H] final hidden states (after the final norm), any float dtype.
        lm_head_weight_VH: [V, H] LM-head weight (same dtype as ``hidden_BTH``).
        token_ids_BT: [B, T] integer token ids in ``[0, V)``.
        lm_head_bias: optional [V] LM-head bias.
        chunk_rows: token positions projected at once; extra memory is O(chunk_rows x V) fp32.
        temperature: logits are divided by it before the softmax (1.0 = none).
        with_entropy: also return the entropy.
        entropy_grad: let the entropy carry a gradient (default False: detached diagnostic).
        checkpoint_chunks: recompute each chunk's projection in backward
            (``torch.utils.checkpoint``, non-reentrant) so backward memory stays
            O(chunk_rows x V). Only used when a gradient is being recorded.

    Returns:
        ``(logp_BT, entropy_BT)``: [B, T] fp32 log-probs (differentiable w.r.t. hidden states,
        weight and bias) and [B, T] fp32 entropy in nats, or None if ``with_entropy`` is False.

    Raises:
        ValueError: if ``chunk_rows < 1`` or ``temperature <= 0``.
    """
    _check_args(tuple(hidden_BTH.shape[:-1]), token_ids_BT, chunk_rows, temperature)
    B, T, H = hidden_BTH.shape
    assert lm_head_weight_VH.shape[-1] == H, (
        f"lm_head_weight_VH {tuple(lm_head_weight_VH.shape)} does not match hidden size {H}")
    tensors = (hidden_BTH, lm_head_weight_VH, lm_head_bias)
    use_ckpt = checkpoint_chunks and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)
    logps, ents = [], []
    for rows, pos in _row_blocks(B, T, chunk_rows):
        args = (hidden_BTH[rows, pos].reshape(-1, H), token_ids_BT[rows, pos].reshape(-1),
                lm_head_weight_VH, lm_head_bias, float(temperature), with_entropy, entropy_grad)
        if use_ckpt:
            # Nothing random inside, so skip saving/restoring the RNG state for every chunk.
            lp, ent = checkpoint(_hidden_chunk, *args, use_reentrant=False,
                                 preserve_rng_state=False)
        else:
            lp, ent = _hidden_chunk(*args)
        logps.append(lp)
        ents.append(ent)
    if not logps:  # T == 0 or B == 0
        empty = hidden_BTH.new_zeros((B, T), dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    # Blocks are row-major and contiguous in flat index, so concatenation restores [B, T].
    logp_BT = torch.cat(logps).view(B, T)
    return logp_BT, (torch.cat(ents).view(B, T) if with_entropy else None)
