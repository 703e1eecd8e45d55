"""The ``server`` teacher backend: an OpenAI-compatible completions server (``vllm serve``).

Each trajectory is one ``POST <url>/v1/completions`` whose ``prompt`` is the list of the
student's token ids (ids, never text), with ``max_tokens: 1``, ``prompt_logprobs: 0`` (the
log-prob of each given token after its prefix, nothing else) and ``return_token_ids: true``
(the server reports the prompt ids it scored). Those are vLLM's extensions of the completions
API; a server without them answers without ``prompt_logprobs`` and is reported as such. The
answer's ``prompt_token_ids`` must equal the ids sent, position by position
(:class:`~reopold_agent.teacher_scoring.TeacherIdMismatch` names the first difference).

Before the first step (:meth:`ServerTeacher.check`): the served model is looked up in
``/v1/models`` (its ``max_model_len`` must fit the run's longest episode), and a probe text is
tokenized by the server (``/tokenize``) and by the student's tokenizer; ids sent as ids would
be scored by any tokenizer, so this probe is what catches a teacher with another vocabulary.
The probe is the student tokenizer's decoding of every special token and of ids spread over
the whole vocabulary.

Failures: a connection error, a timeout, an answer with status 408, 429 or 5xx, or a 200 answer
that is not the expected JSON is sent again, after ``backoff_s`` doubled each time (at most
``max_backoff_s``), at most ``max_retries`` times; then
:class:`~reopold_agent.teacher_scoring.TeacherUnavailable`. Other 4xx answers (an unknown model,
a sequence too long) stop at once with the server's message. Requests run on
``max_concurrency`` threads, each with its own kept-alive connection; the first failure stops
the others' retries. Only the standard library is used (``http.client``).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import Tensor

from .teacher_config import TeacherServerConfig
from .teacher_scoring import (ScoringRow, TeacherBackend, TeacherError, TeacherIdMismatch, TeacherUnavailable,
                              check_same_ids)

PROBE_SPREAD = 512
"""Ordinary ids of the tokenizer probe, evenly spread over the vocabulary (special tokens are added)."""
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class _Garbage(Exception):
    """A 200 answer that is not what the protocol promises (retried)."""


class _Retryable(Exception):
    """A failure worth sending the request again for."""


class ServerTeacher(TeacherBackend):
    """Scores rows on an OpenAI-compatible server that implements vLLM's ``prompt_logprobs``.

    Args:
        settings: the ``teacher.server`` section (``url`` must be set).
        api_key: sent as ``Authorization: Bearer <key>``; None: no header.
        sleep: how to wait between retries (tests pass a recorder).
    """

    name = "server"

    def __init__(self, settings: TeacherServerConfig, *, api_key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if settings.url is None:
            raise ValueError("the server teacher needs teacher.server.url")
        parts = urlsplit(settings.url.rstrip("/"))
        self.settings = settings
        self.url = settings.url
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.removesuffix("/v1").rstrip("/")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._sleep = sleep
        self._local = threading.local()
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="teacher-server")
        self.model = settings.model

    def check(self, student_tokenizer: Any | None, *, max_tokens: int) -> None:
        """Find the served model, check its length limit and (``check_tokenizer``) its tokenizer.

        Args:
            student_tokenizer: compared with the server's on a probe text; None skips that.
            max_tokens: the longest sequence the run will score (``rollout.max_episode_tokens``).

        Raises:
            TeacherError: the server is unreachable, does not serve the model, cannot take
                ``max_tokens`` ids, or tokenizes differently (:class:`TeacherIdMismatch`).
        """
        listed = self._call("GET", "/v1/models", None, _model_list)
        names = [m["id"] for m in listed]
        if self.model is None:
            if len(names) != 1:
                raise TeacherError(f"teacher server {self.url} serves {names}; name one with teacher.server.model")
            self.model = names[0]
        elif self.model not in names:
            raise TeacherError(f"teacher server {self.url} does not serve {self.model!r} (it serves {names})")
        limit = next(m.get("max_model_len") for m in listed if m["id"] == self.model)
        if isinstance(limit, int) and limit < max_tokens + 1:
            raise TeacherError(f"teacher server {self.url} takes at most {limit} tokens ({self.model!r}, "
                               f"max_model_len) but episodes may have {max_tokens} and one more is generated; "
                               "serve it with --max-model-len >= rollout.max_episode_tokens + 1")
        if student_tokenizer is not None and self.settings.check_tokenizer:
            text = probe_text(student_tokenizer)
            ours = list(student_tokenizer(text, add_special_tokens=False)["input_ids"])
            try:
                theirs = self._call("POST", "/tokenize", {"model": self.model, "prompt": text,
                                                          "add_special_tokens": False}, _token_list)
            except TeacherError as exc:
                if "HTTP 404" not in str(exc):
                    raise
                raise TeacherError(f"teacher server {self.url} has no /tokenize endpoint to compare its tokenizer "
                                   "with the student's; if it is known to be the same, set "
                                   "teacher.server.check_tokenizer=false") from None
            check_same_ids(ours, theirs, who=f"teacher server {self.url}", what="tokenizes a probe text to")

    def score_rows(self, rows: list[ScoringRow]) -> list[Tensor]:
        """Per row a [T] float32 tensor of the served teacher's log-probs (NaN at position 0)."""
        if any(r.pixel_inputs is not None for r in rows):
            raise ValueError("the server teacher scores text rows only")
        if self.model is None:
            raise TeacherError("ServerTeacher.check() must run before scoring (it finds the served model)")
        self._stop.clear()
        futures = [self._pool.submit(self._score_one, row.token_ids) for row in rows]
        try:
            return [f.result() for f in futures]
        except BaseException:
            self._stop.set()  # the others give up at their next retry
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _score_one(self, ids: list[int]) -> Tensor:
        body = {"model": self.model, "prompt": list(ids), "max_tokens": 1, "temperature": 0.0,
                "prompt_logprobs": 0, "return_token_ids": True, "add_special_tokens": False}
        return self._call("POST", "/v1/completions", body, lambda answer: parse_prompt_logprobs(answer, ids, self.url))

    def _call(self, method: str, path: str, body: dict | None, parse: Callable[[Any], Any]) -> Any:
        """Send one request with bounded retries; returns ``parse(decoded JSON answer)``."""
        s = self.settings
        start, problem = time.monotonic(), ""
        for attempt in range(s.max_retries + 1):
            if attempt:
                if self._stop.is_set():
                    raise TeacherUnavailable(f"teacher server {self.url}: gave up, another request failed")
                self._sleep(min(s.backoff_s * 2 ** (attempt - 1), s.max_backoff_s))
                with self._count_lock:
                    self.retries += 1
            try:
                status, raw = self._send(method, path, body)
                if status in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {status}: {_error_text(raw)}")
                if status != 200:
                    raise TeacherError(f"teacher server {self.url}{self._prefix}{path} answered HTTP {status}: "
                                       f"{_error_text(raw)}")
                try:
                    answer = json.loads(raw)
                except ValueError:
                    raise _Garbage(f"a body that is not JSON ({raw[:60]!r})") from None
                return parse(answer)
            except TeacherError:
                raise
            except _Garbage as exc:
                problem = f"answered {exc}"
            except _Retryable as exc:
                problem = str(exc)
            except TimeoutError:
                problem = f"no answer within {s.timeout_s:g} s"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"connection failed ({type(exc).__name__}: {exc})".replace("\n", " ")
        raise TeacherUnavailable(f"teacher server {self.url}: {problem}; gave up after {s.max_retries} retries in "
                                 f"{time.monotonic() - start:.1f} s")

    def _send(self, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
        """One HTTP exchange on this thread's connection (reopened after any failure)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=self.settings.timeout_s)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, self._prefix + path, body=data, headers=self._headers)
            response = conn.getresponse()
            return response.status, response.read()
        except BaseException:
            conn.close()
            self._local.conn = None
            raise


def parse_prompt_logprobs(answer: Any, sent: list[int], url: str = "the teacher server") -> Tensor:
    """[T] float32 log-probs of ``sent`` from a completions answer (NaN at position 0).

    Raises:
        _Garbage: the answer lacks the fields or shapes of vLLM's ``prompt_logprobs`` answer.
        TeacherIdMismatch: the reported ``prompt_token_ids`` differ from ``sent``.
    """
    try:
        choice = answer["choices"][0]
        ids, entries = choice.get("prompt_token_ids"), choice.get("prompt_logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise _Garbage("JSON without choices[0]") from None
    if ids is None or entries is None:
        raise _Garbage("without prompt_token_ids or prompt_logprobs (a server that implements vLLM's "
                       "prompt_logprobs and return_token_ids is needed)")
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise _Garbage("prompt_token_ids that are not a list of ids")
    check_same_ids(sent, ids, who=f"teacher server {url}")
    if not isinstance(entries, list) or len(entries) != len(sent):
        raise _Garbage(f"{len(entries) if isinstance(entries, list) else 'no list of'} prompt log-probs for "
                       f"{len(sent)} tokens")
    values = [math.nan]
    for t in range(1, len(sent)):
        try:
            value = entries[t][str(sent[t])]["logprob"]
        except (KeyError, TypeError, IndexError):
            raise _Garbage(f"no log-prob for token {sent[t]} at position {t}") from None
        if value is not None and not isinstance(value, (int, float)):
            raise _Garbage(f"log-prob {value!r} at position {t}")
        values.append(math.nan if value is None else float(value))
    return torch.tensor(values, dtype=torch.float32)


def probe_text(tokenizer: Any) -> str:
    """Text whose tokenization tells two tokenizers apart: the student tokenizer's decoding of
    its special tokens and of :data:`PROBE_SPREAD` ids spread evenly over its vocabulary."""
    size = len(tokenizer)
    special = sorted(set(getattr(tokenizer, "all_special_ids", [])) | set(getattr(tokenizer, "added_tokens_decoder", {})))
    spread = list(range(0, size, max(1, size // PROBE_SPREAD)))
    pieces = [tokenizer.decode([i]) for i in special] + [tokenizer.decode(spread[i:i + 8]) for i in range(0, len(spread), 8)]
    return " ".join(pieces)


def _model_list(answer: Any) -> list[dict]:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        raise _Garbage("a model list without data[].id")
    return data


def _token_list(answer: Any) -> list[int]:
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise _Garbage("a /tokenize answer without a list of tokens")
    return tokens


def _error_text(raw: bytes) -> str:
    """The server's error message (vLLM: ``{"error": {"message": ...}}``), one line, bounded."""
    try:
        answer = json.loads(raw)
        message = answer.get("error", {}).get("message") if isinstance(answer.get("error"), dict) else answer.get("error")
        text = str(message or answer.get("detail") or answer)
    except (ValueError, AttributeError):
        text = raw.decode(errors="replace")
    return " ".join(text.split())[:300]


__all__ = ["ServerTeacher", "TeacherIdMismatch", "parse_prompt_logprobs", "probe_text"]
