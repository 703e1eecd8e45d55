"""A small real HTTP server speaking the JSON of vLLM's OpenAI-compatible server, for the teacher
server client's tests in the main environment (vLLM's own server, which cannot be made to answer
garbage, is tested in tests/vllm).

It listens on 127.0.0.1 (a free port), answers ``/v1/models``, ``/tokenize`` and
``/v1/completions`` with ``prompt_logprobs`` computed by a real transformers model
(:func:`reopold_agent.sequence_scoring.sequence_logprobs`), and can be switched to misbehave:
``mode`` = ``"ok"``, ``"garbage"`` (a body that is not JSON), ``"no_logprobs"`` (JSON without
``prompt_logprobs``), ``"slow"`` (sleeps ``delay_s`` first), ``"busy"`` (503 for the next
``fail_next`` requests, then ok), ``"bad_request"`` (400 with a message), ``"shift_ids"``
(reports the ids with one changed at ``shift_at``), ``"short"`` (one log-prob too few). With
``die_after`` set, the server answers that many completions and then drops every connection
without an answer, as a killed server does (``revive()`` brings it back).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from reopold_agent.sequence_scoring import sequence_logprobs


class ScoringServer:
    """Serves ``model`` under ``name``; ``tokenizer`` answers ``/tokenize`` (None: 404)."""

    def __init__(self, model: Any, tokenizer: Any | None, *, name: str = "teacher", max_model_len: int = 512) -> None:
        self.model, self.tokenizer, self.name, self.max_model_len = model.eval(), tokenizer, name, max_model_len
        self.mode, self.delay_s, self.fail_next, self.shift_at = "ok", 0.0, 0, 1
        self.die_after: int | None = None
        self.completions = 0
        self.requests: list[tuple[str, dict | None, dict]] = []  # (path, body, headers)
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def revive(self) -> None:
        self.die_after, self.completions = None, 0

    def dead(self, path: str) -> bool:
        """Whether this request finds the server killed (counts completions while alive)."""
        with self._lock:
            if self.die_after is None:
                return False
            if self.completions >= self.die_after:
                return True
            self.completions += path == "/v1/completions"
            return False

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def logprobs(self, ids: list[int]) -> list[float]:
        with self._model_lock, torch.no_grad():
            x = torch.tensor([ids])
            logp, _ = sequence_logprobs(self.model, x, torch.ones_like(x))
        return logp[0].tolist()

    def answer(self, path: str, body: dict | None) -> tuple[int, bytes]:
        if path == "/v1/models":
            return 200, json.dumps({"object": "list", "data": [
                {"id": self.name, "object": "model", "max_model_len": self.max_model_len}]}).encode()
        if path == "/tokenize":
            if self.tokenizer is None:
                return 404, b'{"detail": "Not Found"}'
            ids = self.tokenizer(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))["input_ids"]
            return 200, json.dumps({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids}).encode()
        if path != "/v1/completions":
            return 404, b'{"detail": "Not Found"}'
        mode = self.mode
        if mode == "busy":
            with self._lock:
                if self.fail_next > 0:
                    self.fail_next -= 1
                    return 503, b'{"error": {"message": "engine busy", "code": 503}}'
        if mode == "slow":
            time.sleep(self.delay_s)
        if mode == "garbage":
            return 200, b"<html>502 Bad Gateway</html>"
        if mode == "bad_request":
            return 400, json.dumps({"error": {"message": "This model's maximum context length is 8 tokens",
                                              "type": "BadRequestError", "code": 400}}).encode()
        if body.get("model") != self.name:
            return 404, json.dumps({"error": {"message": f"The model `{body.get('model')}` does not exist."}}).encode()
        ids = list(body["prompt"])
        values = self.logprobs(ids)
        reported = list(ids)
        if mode == "shift_ids":
            reported[self.shift_at] += 1
        entries: list[Any] = [None] + [{str(ids[t]): {"logprob": values[t], "rank": 1, "decoded_token": None}}
                                       for t in range(1, len(ids))]
        if mode == "short":
            entries = entries[:-1]
        choice = {"index": 0, "text": "", "finish_reason": "length", "token_ids": [0],
                  "prompt_token_ids": reported, "prompt_logprobs": entries}
        if mode == "no_logprobs":
            choice = {"index": 0, "text": "x", "finish_reason": "length"}
        return 200, json.dumps({"id": "cmpl-1", "object": "text_completion", "model": self.name,
                                "choices": [choice]}).encode()


class _Handler(BaseHTTPRequestHandler):
    owner: ScoringServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self._serve(json.loads(self.rfile.read(length)))

    def _serve(self, body: dict | None) -> None:
        owner = self.owner
        if owner.dead(self.path):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        with owner._lock:
            owner.requests.append((self.path, body, dict(self.headers)))
            owner.in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
        try:
            status, raw = owner.answer(self.path, body)
        finally:
            with owner._lock:
                owner.in_flight -= 1
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass
