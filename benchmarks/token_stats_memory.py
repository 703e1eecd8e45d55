"""Peak memory of naive vs chunked log-prob + entropy (forward and backward).

Each method runs in a fresh subprocess. On CUDA it reports ``torch.cuda.max_memory_allocated``
above the inputs. On CPU it reports two numbers: the exact peak of live bytes of all tensors
that aten ops allocate (tracked with a ``TorchDispatchMode``; gradients included), and the
growth of the peak resident set size (``ru_maxrss``), which also counts BLAS scratch and
allocator slack (a single CPU ``linear`` forward+backward adds ~5x its output size), so read
RSS as an order of magnitude only.

    python benchmarks/token_stats_memory.py --batch 2 --tokens 512 --vocab 32768 --chunk 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from reopold_agent.token_stats import hidden_logprobs_and_entropy, token_logprobs_and_entropy

METHODS = ("naive", "chunked_logits", "chunked_hidden")


class LiveTensorBytes(TorchDispatchMode):
    """Peak of live bytes over tensors created by non-view aten ops while active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        inputs = {id(a) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and id(t) not in inputs:
                nbytes = t.untyped_storage().nbytes()
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, nbytes)
        return out


def _inputs(args: argparse.Namespace, device: torch.device):
    gen = torch.Generator(device=device).manual_seed(0)
    dtype = getattr(torch, args.dtype)
    shape_bt = (args.batch, args.tokens)
    ids = torch.randint(0, args.vocab, shape_bt, generator=gen, device=device)
    if args.method == "chunked_hidden":
        hidden = torch.randn(*shape_bt, args.hidden, generator=gen, device=device).to(dtype)
        weight = torch.randn(args.vocab, args.hidden, generator=gen, device=device).to(dtype)
        return ids, hidden.requires_grad_(), weight.requires_grad_()
    logits = torch.randn(*shape_bt, args.vocab, generator=gen, device=device).to(dtype)
    return ids, logits.requires_grad_()


def _run(args: argparse.Namespace, ids: torch.Tensor, *tensors: torch.Tensor) -> None:
    if args.method == "naive":
        logp_BTV = torch.log_softmax(tensors[0].float(), dim=-1)
        logp = logp_BTV.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        ent = -(logp_BTV.exp() * logp_BTV).sum(-1).detach()
    elif args.method == "chunked_logits":
        logp, ent = token_logprobs_and_entropy(tensors[0], ids, chunk_rows=args.chunk)
    else:
        logp, ent = hidden_logprobs_and_entropy(tensors[0], tensors[1], ids,
                                                chunk_rows=args.chunk)
    (logp.sum() + ent.sum()).backward()


def measure(args: argparse.Namespace) -> dict:
    """Runs one method in this process; returns peak extra MiB and seconds."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    inputs = _inputs(args, device)
    row = {"method": args.method, "device": device.type}
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        _run(args, *inputs)
        torch.cuda.synchronize()
        row["cuda_peak_extra_MiB"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        start = time.perf_counter()
        with LiveTensorBytes() as tracker:
            _run(args, *inputs)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        row["tensor_peak_MiB"] = tracker.peak / 2**20
        row["rss_growth_MiB"] = rss / 2**20
    row["seconds"] = time.perf_counter() - start
    return row


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--cpu", action="store_true", help="ignore CUDA even if available")
    parser.add_argument("--method", choices=METHODS, help="internal: run one method and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(1)
    if args.method:  # child process
        print(json.dumps(measure(args)))
        return
    full = args.batch * args.tokens * args.vocab * 4 / 2**20
    print(f"B={args.batch} T={args.tokens} V={args.vocab} chunk={args.chunk} "
          f"dtype={args.dtype}; one [B*T, V] fp32 tensor = {full:.1f} MiB")
    passthrough = list(argv if argv is not None else sys.argv[1:])
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--method", method],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        mem = "  ".join(f"{k} {v:9.1f}" for k, v in row.items() if k.endswith("MiB"))
        print(f"{row['method']:>15} [{row['device']}]: {mem}  {row['seconds']:.3f} s")


if __name__ == "__main__":
    main()
