"""Chunked log-prob/entropy: values and gradients against the naive computation, and memory."""

import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from reopold_agent.token_stats import hidden_logprobs_and_entropy, token_logprobs_and_entropy

B, T, V, H = 3, 5, 13, 4
# B * T = 15: 2, 4, 7, 11 do not divide it; 5 and 15 are whole rows; 16 and 1000 exceed it.
CHUNKS = [1, 2, 4, 5, 7, 11, 15, 16, 1000]


def naive(logits_BTV, ids_BT, temperature=1.0):
    """Reference: full [B, T, V] fp32 log-softmax."""
    logp_BTV = torch.log_softmax(logits_BTV.float() / temperature, dim=-1)
    logp_BT = logp_BTV.gather(-1, ids_BT.unsqueeze(-1)).squeeze(-1)
    p_BTV = logp_BTV.exp()
    ent_BT = -(p_BTV * torch.where(p_BTV > 0, logp_BTV, 0.0)).sum(-1)
    return logp_BT, ent_BT


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=gen) * 3
    ids = torch.randint(0, V, (B, T), generator=gen)
    hidden = torch.randn(B, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen)
    bias = torch.randn(V, generator=gen)
    return logits, ids, hidden, weight, bias


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logits_values_match_naive(data, chunk, temperature):
    logits, ids, *_ = data
    logp, ent = token_logprobs_and_entropy(logits, ids, chunk_rows=chunk, temperature=temperature)
    ref_logp, ref_ent = naive(logits, ids, temperature)
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == ent.shape == (B, T)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_hidden_values_match_naive(data, chunk):
    _, ids, hidden, weight, bias = data
    logp, ent = hidden_logprobs_and_entropy(hidden, weight, ids, lm_head_bias=bias,
                                            chunk_rows=chunk, temperature=1.3)
    ref_logp, ref_ent = naive(hidden @ weight.T + bias, ids, 1.3)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_logits_gradients_match_naive(data, chunk, entropy_grad):
    logits, ids, *_ = data
    g_logp = torch.randn(B, T, generator=torch.Generator().manual_seed(1))
    g_ent = torch.randn(B, T, generator=torch.Generator().manual_seed(2))
    x = logits.clone().requires_grad_()
    logp, ent = token_logprobs_and_entropy(x, ids, chunk_rows=chunk, temperature=0.8,
                                           entropy_grad=entropy_grad)
    assert ent.requires_grad == entropy_grad
    ((logp * g_logp).sum() + ((ent * g_ent).sum() if entropy_grad else 0)).backward()
    x_ref = logits.clone().requires_grad_()
    ref_logp, ref_ent = naive(x_ref, ids, 0.8)
    ((ref_logp * g_logp).sum() + ((ref_ent * g_ent).sum() if entropy_grad else 0)).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
@pytest.mark.parametrize("checkpoint_chunks", [True, False])
def test_hidden_gradients_match_naive(data, chunk, checkpoint_chunks):
    _, ids, hidden, weight, bias = data
    g_logp = torch.randn(B, T, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    logp, ent = hidden_logprobs_and_entropy(*leaves[:2], ids, lm_head_bias=leaves[2],
                                            chunk_rows=chunk, checkpoint_chunks=checkpoint_chunks)
    assert not ent.requires_grad
    (logp * g_logp).sum().backward()
    refs = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    (naive(refs[0] @ refs[1].T + refs[2], ids)[0] * g_logp).sum().backward()
    for got, ref in zip(leaves, refs):
        torch.testing.assert_close(got.grad, ref.grad, atol=1e-5, rtol=0)


def test_gradcheck_fp64_both_paths(data):
    logits, ids, hidden, weight, bias = (t.double() if t.is_floating_point() else t
                                         for t in data)
    x = logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: token_logprobs_and_entropy(x, ids, chunk_rows=4, temperature=0.7,
                                             entropy_grad=True), (x,))
    leaves = [t.requires_grad_() for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda h, w, b: hidden_logprobs_and_entropy(h, w, ids, lm_head_bias=b, chunk_rows=4,
                                                    temperature=1.3, entropy_grad=True), leaves)


def test_bf16_logits(data):
    logits, ids, *_ = data
    x = logits.bfloat16().requires_grad_()
    logp, ent = token_logprobs_and_entropy(x, ids, chunk_rows=4)
    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    ref_x = x.detach().clone().requires_grad_()
    ref_logp, ref_ent = naive(ref_x, ids)  # naive upcasts the same bf16 values
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)
    logp.sum().backward()
    ref_logp.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad, ref_x.grad, atol=4e-3, rtol=0)  # one bf16 ulp at 0.5


def test_bf16_hidden(data):
    _, ids, hidden, weight, _ = data
    h, w = hidden.bfloat16(), weight.bfloat16()
    logp, ent = hidden_logprobs_and_entropy(h, w, ids, chunk_rows=4)
    ref_logp, ref_ent = naive(h @ w.T, ids)  # bf16 matmul, then upcast
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=0)


def test_non_contiguous_logits_and_without_entropy(data):
    logits, ids, *_ = data
    shifted = logits[:, :-1]  # the usual next-token shift; not contiguous
    assert not shifted.is_contiguous()
    logp, ent = token_logprobs_and_entropy(shifted, ids[:, 1:], chunk_rows=3, with_entropy=False)
    assert ent is None
    torch.testing.assert_close(logp, naive(shifted, ids[:, 1:])[0], atol=1e-5, rtol=0)


def test_minus_inf_logits_give_finite_entropy_and_gradients():
    # Two entries at -inf: the distribution is uniform over the other two, entropy log 2.
    logits = torch.tensor([[[0.0, -math.inf, 0.0, -math.inf]]], requires_grad=True)
    ids = torch.tensor([[0]])
    logp, ent = token_logprobs_and_entropy(logits, ids, entropy_grad=True)
    assert logp.item() == pytest.approx(-math.log(2), abs=1e-7)
    assert ent.item() == pytest.approx(math.log(2), abs=1e-7)
    (logp + ent).sum().backward()
    # d logp/dz = onehot - p = [0.5, 0, -0.5, 0]; dH/dz = -p (log p + H) = 0 here.
    torch.testing.assert_close(logits.grad, torch.tensor([[[0.5, 0.0, -0.5, 0.0]]]))


def test_bad_arguments_raise(data):
    logits, ids, hidden, weight, _ = data
    with pytest.raises(ValueError, match="chunk_rows"):
        token_logprobs_and_entropy(logits, ids, chunk_rows=0)
    with pytest.raises(ValueError, match="temperature"):
        hidden_logprobs_and_entropy(hidden, weight, ids, temperature=0.0)


# --- memory -----------------------------------------------------------------------------------


class VocabFp32Tracker(TorchDispatchMode):
    """Counts live fp32 tensors whose last dim is V, in rows, as aten ops create them.

    Every non-view op output is counted until its Python object is freed (weakref.finalize), so
    both one big [B*T, V] tensor and many chunk tensors kept alive (saved for backward) show up.
    """

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.live_rows, self.peak_rows = vocab, 0, 0

    def _release(self, rows: int) -> None:
        self.live_rows -= rows

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and id(t) not in inputs and t.dim() >= 1
                    and t.shape[-1] == self.vocab and t.dtype == torch.float32):
                rows = t.numel() // self.vocab
                self.live_rows += rows
                self.peak_rows = max(self.peak_rows, self.live_rows)
                weakref.finalize(t, self._release, rows)
        return out


MB, MT, MV, MH, MCHUNK = 4, 32, 101, 8, 4  # 128 rows, chunks of 4


def _peak_rows(fn) -> int:
    torch.manual_seed(0)
    ids = torch.randint(0, MV, (MB, MT))
    logits = torch.randn(MB, MT, MV).bfloat16().requires_grad_()  # grad is bf16: not counted
    hidden = torch.randn(MB, MT, MH, requires_grad=True)
    weight = torch.randn(MV, MH, requires_grad=True)
    with VocabFp32Tracker(MV) as tracker:
        logp, ent = fn(logits, hidden, weight, ids)
        (logp.sum() + ent.sum()).backward()
        del logp, ent
    return tracker.peak_rows


def test_memory_tracker_catches_full_fp32_tensors():
    """The detector can fail: naive code and unchecked hidden chunks both reach B*T rows."""
    assert _peak_rows(lambda lg, h, w, ids: naive(lg, ids)) >= MB * MT
    no_ckpt = _peak_rows(lambda lg, h, w, ids: hidden_logprobs_and_entropy(
        h, w, ids, chunk_rows=MCHUNK, checkpoint_chunks=False))
    assert no_ckpt >= MB * MT  # every chunk's log-softmax saved for backward


def test_chunked_paths_never_hold_more_than_a_few_chunks():
    bound = 8 * MCHUNK  # a handful of [chunk, V] temporaries, far below B*T = 128 rows
    logits_peak = _peak_rows(lambda lg, h, w, ids: token_logprobs_and_entropy(
        lg, ids, chunk_rows=MCHUNK))
    hidden_peak = _peak_rows(lambda lg, h, w, ids: hidden_logprobs_and_entropy(
        h, w, ids, chunk_rows=MCHUNK))
    assert 0 < logits_peak <= bound
    assert 0 < hidden_peak <= bound
