"""Throughput of the local sandbox, spawn mode and warm workers side by side.

Usage::

    python benchmarks/sandbox_throughput.py --n 200 --threads 8 --repeats 5 --warm-workers 4

Each repeat runs ``--n`` executions of a trivial program from ``--threads`` threads, once per
mode; the repeats of the two modes alternate so that changes in machine load hit both. Prints,
per mode, the median over repeats of executions per second and of the median latency of one
execution (``SandboxResult.duration_s``), and the range of executions per second.
Not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from reopold_agent.sandbox import LocalSandbox, SandboxConfig

TRIVIAL = "print(sum(range(100)))"


def _one_repeat(sandbox: LocalSandbox, n: int, threads: int) -> tuple[float, float]:
    """Run ``n`` executions; return (executions per second, median latency in seconds)."""

    def one(_: int) -> float:
        result = sandbox.run(TRIVIAL)
        if not result.ok or result.stdout != "4950\n":
            raise RuntimeError(f"unexpected result: {result}")
        return result.duration_s

    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        latencies = list(pool.map(one, range(n)))
    return n / (time.monotonic() - start), statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="executions per repeat and mode")
    parser.add_argument("--threads", type=int, default=8, help="threads running executions")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per mode")
    parser.add_argument("--warm-workers", type=int, default=4, help="workers of warm mode")
    parser.add_argument("--allow-unisolated", action="store_true",
                        help="fall back to unisolated execution if namespaces are unavailable")
    args = parser.parse_args()

    modes = {"spawn": 0, f"warm({args.warm_workers})": args.warm_workers}
    sandboxes = {name: LocalSandbox(SandboxConfig(allow_unisolated=args.allow_unisolated,
                                                  warm_workers=workers))
                 for name, workers in modes.items()}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in modes}
    try:
        for sandbox in sandboxes.values():  # page cache, and start every warm worker
            _one_repeat(sandbox, 2 * args.threads, args.threads)
        for _ in range(args.repeats):
            for name, sandbox in sandboxes.items():
                samples[name].append(_one_repeat(sandbox, args.n, args.threads))
    finally:
        for sandbox in sandboxes.values():
            sandbox.close()

    first = next(iter(sandboxes.values()))
    print(f"isolated={first.isolated} user_namespace={first.user_namespace} n={args.n} "
          f"threads={args.threads} repeats={args.repeats}")
    print(f"{'mode':<10} {'exec/s (median)':>16} {'exec/s (min-max)':>18} "
          f"{'latency ms (median)':>20}")
    for name, runs in samples.items():
        rates = [rate for rate, _ in runs]
        latency = statistics.median(lat for _, lat in runs) * 1000
        print(f"{name:<10} {statistics.median(rates):>16.1f} "
              f"{min(rates):>8.1f} - {max(rates):<7.1f} {latency:>20.1f}")


if __name__ == "__main__":
    main()
