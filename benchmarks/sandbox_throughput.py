"""Throughput of the local sandbox: N executions of a trivial program from a thread pool.

Usage::

    python benchmarks/sandbox_throughput.py --n 200 --workers 8

Prints executions per second and the median (and 90th percentile) latency of one execution.
Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from reopold_agent.sandbox import LocalSandbox, SandboxConfig

TRIVIAL = "print(sum(range(100)))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="executions in total")
    parser.add_argument("--workers", type=int, default=8, help="threads running executions")
    parser.add_argument("--allow-unisolated", action="store_true",
                        help="fall back to unisolated execution if namespaces are unavailable")
    args = parser.parse_args()

    sandbox = LocalSandbox(SandboxConfig(allow_unisolated=args.allow_unisolated))
    sandbox.run(TRIVIAL)  # warm the page cache

    def one(_: int) -> float:
        result = sandbox.run(TRIVIAL)
        if not result.ok or result.stdout != "4950\n":
            raise RuntimeError(f"unexpected result: {result}")
        return result.duration_s

    start = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        latencies = sorted(pool.map(one, range(args.n)))
    elapsed = time.monotonic() - start
    p90 = latencies[int(0.9 * (len(latencies) - 1))]
    print(f"isolated={sandbox.isolated} user_namespace={sandbox.user_namespace} "
          f"n={args.n} workers={args.workers}")
    print(f"throughput: {args.n / elapsed:.1f} executions/s ({elapsed:.2f} s total)")
    print(f"latency: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"p90 {p90 * 1000:.0f} ms")


if __name__ == "__main__":
    main()
