"""The multi-turn rollout engine: many tool episodes played at once, token in, token out.

Each turn the student generates for every active episode in one batched backend call (stopping
at ``</tool_call>`` or end of turn), the environments of all episodes step concurrently (their
tool calls run in parallel; a slow tool delays only its own episode), and the tool messages are
templated and appended as token ids with loss mask 0. Sampled ids are never re-tokenised.

Budgets: ``max_turn_tokens`` caps one assistant turn, ``max_episode_tokens`` the whole sequence
(prompt included). A turn cut by a budget ends the episode before its tool calls run, so no half
tool call is ever executed and no tool output or image is appended without its tokens.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from reopold_agent.envs.batch import step_concurrently

from ..trajectory import EndReason, TokenSource, Trajectory
from .backend import GenerationBackend, SamplingParams
from .config import RolloutConfig
from .templating import ChatTemplater


@dataclass
class EpisodeRequest:
    """Which task item an environment should open."""

    seed: int
    options: dict[str, Any]
    sample_index: int = 0


class _Episode:
    """Mutable state of one running episode (internal)."""

    def __init__(self, env: Any, request: EpisodeRequest, messages: list, info: dict, prompt_ids: list[int]):
        self.env = env
        self.request = request
        self.info = info
        self.messages = [_display_message(m) for m in messages]
        n = len(prompt_ids)
        self.token_ids, self.source, self.turn = list(prompt_ids), [TokenSource.PROMPT.value] * n, [0] * n
        self.logprobs: list[float | None] = [None] * n
        self.entropy: list[float | None] = [None] * n
        self.turn_index = 0
        self.done = False
        self.end_reason = EndReason.ANSWERED
        self.reward = 0.0
        self.tool_calls = 0
        self.tool_errors = 0

    def append(self, ids, source, logprobs=None, entropy=None):
        self.token_ids += ids
        self.source += [source] * len(ids)
        self.turn += [self.turn_index] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [None] * len(ids)
        self.entropy += entropy if entropy is not None else [None] * len(ids)

    def finish(self, reason: EndReason):
        self.done, self.end_reason = True, reason


class RolloutEngine:
    """Plays batches of tool episodes with the student.

    Args:
        backend: samples assistant turns.
        tokenizer: the student's tokenizer (its chat template renders prompts and tool turns).
        config: budgets and sampling settings.
    """

    def __init__(self, backend: GenerationBackend, tokenizer: Any, config: RolloutConfig) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.templater = ChatTemplater(tokenizer, render_tools=config.render_tools)
        stop = set(_eos_ids(tokenizer))
        if config.stop_at_tool_call_end:
            end_id = tokenizer.convert_tokens_to_ids("</tool_call>")
            if isinstance(end_id, int) and end_id != tokenizer.unk_token_id:
                stop.add(end_id)
        self.sampling = SamplingParams(config.temperature, config.top_p, config.top_k, tuple(sorted(stop)))
        self.timings: dict[str, float] = {}
        """Seconds spent in the last :meth:`run`: generate_s (model), env_s (environment steps
        and their tools, concurrent), template_s (chat templating and bookkeeping)."""

    def run(self, envs: list[Any], requests: list[EpisodeRequest], *, seed: int, step: int = 0,
            task: str = "") -> list[Trajectory]:
        """Play one episode per (env, request) pair and return their trajectories, in order."""
        if len(envs) != len(requests):
            raise ValueError(f"{len(envs)} environments but {len(requests)} requests")
        self.timings = {"generate_s": 0.0, "env_s": 0.0, "template_s": 0.0}
        start = time.perf_counter()
        episodes = [self._open(env, req) for env, req in zip(envs, requests)]
        self.timings["template_s"] += time.perf_counter() - start
        for turn in range(self.config.max_turns):
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            start = time.perf_counter()
            self._generate_turn(active, seed=seed * 1000 + turn)
            self.timings["generate_s"] += time.perf_counter() - start
            self._step_envs([ep for ep in active if not ep.done])
        for ep in episodes:
            if not ep.done:
                ep.finish(EndReason.TURN_LIMIT)
        return [self._to_trajectory(ep, step=step, task=task) for ep in episodes]

    def _open(self, env: Any, request: EpisodeRequest) -> _Episode:
        messages, info = env.reset(seed=request.seed, options=request.options)
        prompt_ids = self.templater.prompt_ids(messages, info.get("tools"))
        ep = _Episode(env, request, messages, info, prompt_ids)
        if len(prompt_ids) >= self.config.max_episode_tokens:
            ep.finish(EndReason.EPISODE_TOKEN_BUDGET)
        return ep

    def _generate_turn(self, active: list[_Episode], *, seed: int) -> None:
        cfg = self.config
        budgets = [min(cfg.max_turn_tokens, cfg.max_episode_tokens - len(ep.token_ids)) for ep in active]
        gens = self.backend.generate([ep.token_ids for ep in active], budgets, self.sampling, seed=seed)
        for ep, gen, budget in zip(active, gens, budgets):
            ep.turn_index += 1
            ep.append(gen.token_ids, TokenSource.MODEL.value, list(gen.logprobs), list(gen.entropy))
            text = self.tokenizer.decode(gen.token_ids, skip_special_tokens=False)
            ep.messages.append({"role": "assistant", "content": text})
            ep.last_text = text
            if gen.finish_reason == "length":
                over_episode = budget < cfg.max_turn_tokens
                ep.finish(EndReason.EPISODE_TOKEN_BUDGET if over_episode else EndReason.TURN_TOKEN_BUDGET)

    def _step_envs(self, active: list[_Episode]) -> None:
        if not active:
            return
        actions = [_strip_eos(ep.last_text, self.tokenizer) for ep in active]
        start = time.perf_counter()
        outcomes = step_concurrently([ep.env for ep in active], actions, max_workers=self.config.tool_workers)
        self.timings["env_s"] += time.perf_counter() - start
        start = time.perf_counter()
        for ep, out in zip(active, outcomes):
            if out.error is not None:
                ep.info["env_error"] = str(out.error)
                ep.finish(EndReason.ENV_ERROR)
                continue
            ep.tool_calls += int(out.info.get("tool_calls", 0))
            ep.tool_errors += int(out.info.get("tool_errors", 0))
            ep.reward = float(out.reward)
            if out.terminated or out.truncated:
                ep.info["outcome"] = _jsonable(out.info)
            if out.terminated:
                ep.finish(EndReason.ANSWERED)
                continue
            if out.truncated or not out.observation:
                ep.finish(EndReason.TURN_LIMIT)
                continue
            self._append_tool_turn(ep, out.observation)
        self.timings["template_s"] += time.perf_counter() - start

    def _append_tool_turn(self, ep: _Episode, observation: list[dict]) -> None:
        ids = self.templater.tool_turn_ids(ep.last_text, observation)
        if len(ep.token_ids) + len(ids) >= self.config.max_episode_tokens:
            ep.finish(EndReason.EPISODE_TOKEN_BUDGET)  # never append a tool output cut in half
            return
        ep.append(ids, TokenSource.TOOL.value)
        ep.messages.extend(_display_message(m) for m in observation)

    def _to_trajectory(self, ep: _Episode, *, step: int, task: str) -> Trajectory:
        return Trajectory(
            token_ids=ep.token_ids,
            source=ep.source,
            turn=ep.turn,
            loss_mask=[int(s == TokenSource.MODEL.value) for s in ep.source],
            logprobs=ep.logprobs,
            entropy=ep.entropy,
            messages=ep.messages,
            reward=ep.reward,
            truncated=ep.end_reason is not EndReason.ANSWERED,
            end_reason=ep.end_reason.value,
            tool_errors=ep.tool_errors,
            tool_calls=ep.tool_calls,
            task=task or str(ep.info.get("task", "")),
            prompt_id=str(ep.info.get("prompt_id", "")),
            sample_index=ep.request.sample_index,
            step=step,
            info={k: _jsonable(v) for k, v in ep.info.items() if k not in ("tools",)},
        )


def _eos_ids(tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(ids)


def _strip_eos(text: str, tokenizer: Any) -> str:
    for token in ("<|im_end|>", "<|endoftext|>", tokenizer.eos_token or ""):
        if token and text.endswith(token):
            text = text[: -len(token)]
    return text


def _display_message(message: dict) -> dict:
    """JSON-safe copy of a chat message (image objects become a size note)."""
    content = message.get("content")
    if isinstance(content, list):
        content = [_display_part(p) for p in content]
    return {**{k: _jsonable(v) for k, v in message.items() if k != "content"}, "content": content}


def _display_part(part: dict) -> dict:
    if part.get("type") == "image" and not isinstance(part.get("image"), (str, type(None))):
        img = part["image"]
        return {"type": "image", "size": list(getattr(img, "size", ()))}
    return {k: _jsonable(v) for k, v in part.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
