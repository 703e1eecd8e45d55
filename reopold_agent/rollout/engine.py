"""The multi-turn rollout engine: many tool episodes played at once, token in, token out.

Episodes do not move in lockstep. Every episode whose previous tool results are in ("ready")
generates its next turn in one batched backend call (stopping at ``</tool_call>`` or end of
turn); as soon as an episode's row stops (the backend hands rows over while the others go on
decoding), its ``env.step`` is submitted to a thread pool as its own future, so the tool calls
of short turns run during the decoding of long ones. The engine then waits for the first step
to finish, plus up to ``rollout.tool_batch_wait_s`` for steps finishing almost together
(stopping early once none has finished for ``rollout.tool_batch_gap_s``), appends those tool
messages (templated token ids, loss mask 0) and generates again for the episodes that are
ready. A slow or hanging tool therefore delays only its own episode, bounded by that tool's
own timeout, never the whole batch. With ``rollout.refill_rows`` (and a backend that
``supports_refill``) an episode back from its tool does not wait for the running batch to end:
the backend asks between decode steps for such episodes and decodes their next turns in the same
batch. Sampled ids are never re-tokenised.

Which episodes share a generation batch depends on timing, so sampling must not: each episode's
turn is sampled with its own seed, derived from (run seed, episode index, turn), and the backend
keeps rows independent of their batch (see :mod:`.sampling`). A resumed run thus reproduces its
rollouts whatever the tools' timing.

Budgets: ``max_turn_tokens`` caps one assistant turn, ``max_episode_tokens`` the whole sequence
(prompt included), ``max_turns`` the assistant turns of one episode. A turn cut by a budget ends
the episode before its tool calls run, so no half tool call is ever executed and no tool output
or image is appended without its tokens.

Images (vision-language students, given a :class:`~reopold_agent.vision.VisionProcessor`): every
image of the prompt or of a tool message is resized and patched once; its single template
placeholder becomes ``num_tokens`` image tokens (source ``image``, loss mask 0), and its features
join the episode's pixel inputs in the same step. A tool turn whose tokens do not fit is dropped
whole, images included, so tokens and features always pair. Beyond
``rollout.max_images_per_episode`` images, a tool's further images are replaced by a text note
the student can read (counted in the trajectory info's ``images_dropped``), which bounds memory.

What the engine reads from an environment's ``info`` dicts is typed in :mod:`reopold_agent.envs.info`
(:class:`~reopold_agent.envs.info.ResetInfo`, :class:`~reopold_agent.envs.info.StepInfo`); any
``gymnasium.Env`` whose ``reset`` gives chat messages and ``info["tools"]``, and whose ``step`` takes
the assistant's text, can be played.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from reopold_agent.envs.batch import StepOutcome, guarded_step
from reopold_agent.envs.info import ENV_ERROR, IMAGES_DROPPED, OUTCOME, ResetInfo, StepInfo

from ..trajectory import EndReason, ImageRecord, TokenSource, Trajectory
from ..vision.processing import ImageFeatures, VisionInputs, VisionProcessor, is_image_part, message_images
from ..vision.storage import image_path
from .backend import Generation, GenerationBackend, RefillRow, SamplingParams
from .config import RolloutConfig
from .templating import ChatTemplater

_MASK64 = (1 << 64) - 1


@dataclass
class EpisodeRequest:
    """Which task item an environment should open."""

    seed: int
    options: dict[str, Any]
    sample_index: int = 0


class _Episode:
    """Mutable state of one running episode (internal)."""

    def __init__(self, index: int, env: Any, request: EpisodeRequest, messages: list, info: dict,
                 opened: ResetInfo):
        self.index = index
        self.env = env
        self.request = request
        self.info = ResetInfo.recorded(info)
        self.tools = opened.tools
        self.task = opened.task or ""
        self.prompt_id = opened.prompt_id or _seed_prompt_id(request)
        self.messages = [_display_message(m) for m in messages]
        self.token_ids: list[int] = []
        self.source: list[str] = []
        self.turn: list[int] = []
        self.logprobs: list[float | None] = []
        self.entropy: list[float | None] = []
        self.turn_index = 0
        self.last_text = ""
        self.done = False
        self.end_reason = EndReason.ANSWERED
        self.reward = 0.0
        self.tool_calls = 0
        self.tool_errors = 0
        self.images: list[ImageFeatures] = []
        self.image_records: list[ImageRecord] = []
        self._pixel_inputs: VisionInputs | None = None

    def append(self, ids, source, logprobs=None, entropy=None, *, is_image=None, images=()):
        """Append ids (with their images, whose placeholder tokens ``is_image`` flags)."""
        start = len(self.token_ids)
        self.token_ids += ids
        if is_image is None:
            self.source += [source] * len(ids)
        else:
            self.source += [TokenSource.IMAGE.value if flag else source for flag in is_image]
            self._record_images(start, is_image, images)
        self.turn += [self.turn_index] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [None] * len(ids)
        self.entropy += entropy if entropy is not None else [None] * len(ids)

    def finish(self, reason: EndReason):
        self.done, self.end_reason = True, reason

    def _record_images(self, start: int, is_image: list[bool], images: list[ImageFeatures]) -> None:
        k, t = 0, 0
        while t < len(is_image):
            if is_image[t]:
                feat = images[k]
                self.image_records.append(ImageRecord(image_path(feat), start + t, start + t + feat.num_tokens,
                                                      list(feat.grid_thw)))
                t += feat.num_tokens
                k += 1
            else:
                t += 1
        self.images += images
        self._pixel_inputs = None

    def pixel_inputs(self) -> VisionInputs | None:
        """The pixel inputs of all images so far (built once per change)."""
        if self._pixel_inputs is None and self.images:
            self._pixel_inputs = VisionInputs.from_features(self.images)
        return self._pixel_inputs


class RolloutEngine:
    """Plays batches of tool episodes with the student.

    Args:
        backend: samples assistant turns.
        tokenizer: the student's tokenizer (its chat template renders prompts and tool turns).
        config: budgets, sampling settings, tool threads and the straggler wait.
        vision: prepares images for a vision-language student; None for a text student (an
            environment that shows images then stops the run with a clear error).
    """

    def __init__(self, backend: GenerationBackend, tokenizer: Any, config: RolloutConfig,
                 vision: VisionProcessor | None = None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.vision = vision
        self.templater = ChatTemplater(tokenizer, render_tools=config.render_tools)
        stop = set(_eos_ids(tokenizer))
        if config.stop_at_tool_call_end:
            end_id = tokenizer.convert_tokens_to_ids("</tool_call>")
            if isinstance(end_id, int) and end_id != tokenizer.unk_token_id:
                stop.add(end_id)
        suppress = (vision.image_token_id,) if vision is not None else ()
        self.sampling = SamplingParams(config.temperature, config.top_p, config.top_k, tuple(sorted(stop)), suppress)
        self._pool: ThreadPoolExecutor | None = None
        self.timings: dict[str, float] = {}
        """Seconds spent in the last :meth:`run`: generate_s (model), env_s (submitting tool
        steps, and waiting for them with no episode ready to generate), template_s (chat
        templating and bookkeeping); and tool_queue_wait_s, what the tool calls waited for a
        free sandbox worker, summed over calls (they overlap, so it can exceed the run)."""

    def run(self, envs: list[Any], requests: list[EpisodeRequest], *, seed: int, step: int = 0,
            task: str = "") -> list[Trajectory]:
        """Play one episode per (env, request) pair and return their trajectories, in order.

        Episode ``i``'s turn ``k`` is sampled with :func:`episode_seed` ``(seed, i, k)``, so the
        trajectories depend on ``seed`` and the order of the pairs, not on tool timing.
        """
        if len(envs) != len(requests):
            raise ValueError(f"{len(envs)} environments but {len(requests)} requests")
        self.timings = {"generate_s": 0.0, "env_s": 0.0, "template_s": 0.0, "tool_queue_wait_s": 0.0}
        start = time.perf_counter()
        episodes = [self._open(i, env, req) for i, (env, req) in enumerate(zip(envs, requests))]
        self.timings["template_s"] += time.perf_counter() - start
        self._play(episodes, self._tool_pool(), seed)
        return [self._to_trajectory(ep, step=step, task=task) for ep in episodes]

    def _tool_pool(self) -> ThreadPoolExecutor:
        """The threads that run environment steps, started once and kept for later runs (with
        a pool per run most submissions started a thread: 0.23 ms each, 0.009 ms now)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.config.tool_workers, thread_name_prefix="reopold-tool")
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    def _play(self, episodes: list[_Episode], pool: Executor, seed: int) -> None:
        """Generate for ready episodes, submit their steps, absorb finished steps; until all end.

        If anything raises, the steps already submitted are waited for first: none of them
        outlives the run (the environments are reused by the next one).
        """
        ready = [ep for ep in episodes if not ep.done]
        pending: dict[Future, _Episode] = {}

        def submit(ep: _Episode) -> None:
            action = _strip_eos(ep.last_text, self.tokenizer)
            pending[pool.submit(guarded_step, ep.env, action)] = ep

        def back_from_tools(free: int) -> list[_Episode]:
            """Up to ``free`` episodes whose steps have finished, absorbed (ready for a turn)."""
            back = []
            for future in sorted((f for f in pending if f.done()), key=lambda f: pending[f].index):
                if len(back) >= free:
                    break
                ep = pending.pop(future)
                self._absorb(ep, future.result())
                if not ep.done:
                    back.append(ep)
            return back

        refill = back_from_tools if self.config.refill_rows and self.backend.supports_refill else None
        try:
            while ready or pending:
                if ready:
                    self._generate_turn(ready, seed=seed, on_turn_done=submit, more=refill)
                ready = []
                for ep, outcome in self._wait_for_steps(pending):
                    start = time.perf_counter()
                    self._absorb(ep, outcome)
                    self.timings["template_s"] += time.perf_counter() - start
                    if not ep.done:
                        ready.append(ep)
        finally:
            wait(pending)

    def _wait_for_steps(self, pending: dict[Future, _Episode]) -> list[tuple[_Episode, StepOutcome]]:
        """Block until a step finishes, then up to the straggler wait; pop the finished ones."""
        if not pending:
            return []
        start = time.perf_counter()
        done, rest = wait(pending, return_when=FIRST_COMPLETED)
        gap = self.config.tool_batch_gap_s
        until = time.perf_counter() + self.config.tool_batch_wait_s
        while rest and (left := until - time.perf_counter()) > 0:
            if gap is None:
                more, rest = wait(rest, timeout=left)
            else:
                more, rest = wait(rest, timeout=min(gap, left), return_when=FIRST_COMPLETED)
            done |= more
            if not more:
                break
        self.timings["env_s"] += time.perf_counter() - start
        return sorted(((pending.pop(f), f.result()) for f in done), key=lambda pair: pair[0].index)

    def _open(self, index: int, env: Any, request: EpisodeRequest) -> _Episode:
        messages, info = env.reset(seed=request.seed, options=request.options)
        ep = _Episode(index, env, request, messages, info, ResetInfo.from_info(info))
        images = self._encode_images(message_images(messages))
        if len(images) > self.config.max_images_per_episode:
            raise ValueError(f"the prompt of {ep.prompt_id} holds {len(images)} images, more "
                             f"than rollout.max_images_per_episode={self.config.max_images_per_episode}")
        ids, is_image = self._expand(self.templater.prompt_ids(messages, ep.tools), images)
        ep.append(ids, TokenSource.PROMPT.value, is_image=is_image, images=images)
        if len(ids) >= self.config.max_episode_tokens:
            ep.finish(EndReason.EPISODE_TOKEN_BUDGET)
        return ep

    def _encode_images(self, images: list[Any]) -> list[ImageFeatures]:
        if images:
            self._require_vision()
        return [self.vision.encode(image) for image in images]

    def _require_vision(self) -> None:
        if self.vision is None:
            raise ValueError("the environment shows images but the student is a text-only model; "
                             "use a vision-language student (e.g. Qwen2.5-VL) for this task")

    def _expand(self, ids: list[int], images: list[ImageFeatures]) -> tuple[list[int], list[bool] | None]:
        if self.vision is None:
            return ids, None
        return self.vision.expand_placeholders(ids, images)

    def _generate_turn(self, active: list[_Episode], *, seed: int, on_turn_done: Callable[[_Episode], None],
                       more: Callable[[int], list[_Episode]] | None = None) -> None:
        """Sample the next turn of every episode in ``active`` in one backend call.

        ``on_turn_done(ep)`` is called for each episode whose turn ended without ending the
        episode, as soon as its row stopped (the rest of the batch may still be decoding).
        With ``more`` (``rollout.refill_rows``), the backend asks between decode steps for up
        to ``free`` episodes back from their tools, whose next turns join the running batch.
        """
        cfg = self.config

        def budget(ep: _Episode) -> int:
            return min(cfg.max_turn_tokens, cfg.max_episode_tokens - len(ep.token_ids))

        budgets = [budget(ep) for ep in active]
        seeds = [episode_seed(seed, ep.index, ep.turn_index) for ep in active]
        taken: set[int] = set()
        outside = {"template_s": 0.0, "env_s": 0.0}  # spent in row_done, not in the model

        def row_done(b: int, gen: Generation) -> None:
            if b in taken:
                return
            taken.add(b)
            ep, t0 = active[b], time.perf_counter()
            self._take_turn(ep, gen, budgets[b])
            t1 = time.perf_counter()
            if not ep.done:
                on_turn_done(ep)
            outside["template_s"] += t1 - t0
            outside["env_s"] += time.perf_counter() - t1

        def refill(free: int) -> list[RefillRow]:
            t0 = time.perf_counter()
            rows = []
            for ep in more(free):
                rows.append(RefillRow(list(ep.token_ids), budget(ep), episode_seed(seed, ep.index, ep.turn_index)))
                active.append(ep)
                budgets.append(rows[-1].max_new_tokens)
                seeds.append(rows[-1].seed)
            outside["template_s"] += time.perf_counter() - t0
            return rows

        start = time.perf_counter()
        extra = [{"vision": ep.pixel_inputs()} if ep.images else None for ep in active]
        refilling = {"refill": refill} if more is not None and not any(extra) else {}
        gens = self.backend.generate([ep.token_ids for ep in active], budgets, self.sampling, seeds=seeds,
                                     extra_inputs=extra if any(extra) else None, on_row_done=row_done, **refilling)
        self.timings["generate_s"] += time.perf_counter() - start - outside["template_s"] - outside["env_s"]
        for b, gen in enumerate(gens):  # rows the backend did not hand over while decoding
            row_done(b, gen)
        self.timings["template_s"] += outside["template_s"]
        self.timings["env_s"] += outside["env_s"]

    def _take_turn(self, ep: _Episode, gen: Generation, budget: int) -> None:
        """Append a sampled turn to its episode; a turn cut by a budget ends the episode."""
        if self.vision is not None and self.vision.image_token_id in gen.token_ids:
            raise ValueError("the generation backend sampled the image placeholder token; it must honour "
                             "SamplingParams.suppress_token_ids (image tokens come only with image features)")
        ep.turn_index += 1
        ep.append(gen.token_ids, TokenSource.MODEL.value, list(gen.logprobs), list(gen.entropy))
        text = self.tokenizer.decode(gen.token_ids, skip_special_tokens=False)
        ep.messages.append({"role": "assistant", "content": text})
        ep.last_text = text
        if gen.finish_reason == "length":
            over_episode = budget < self.config.max_turn_tokens
            ep.finish(EndReason.EPISODE_TOKEN_BUDGET if over_episode else EndReason.TURN_TOKEN_BUDGET)

    def _absorb(self, ep: _Episode, out: StepOutcome) -> None:
        """Apply one finished env step: end the episode, or append its tool turn."""
        if out.error is not None:
            ep.info[ENV_ERROR] = str(out.error)
            ep.finish(EndReason.ENV_ERROR)
            return
        stepped = StepInfo.from_info(out.info, out.observation)
        ep.tool_calls += stepped.tool_calls
        ep.tool_errors += stepped.tool_errors
        self.timings["tool_queue_wait_s"] += stepped.tool_queue_wait_s
        ep.reward = float(out.reward)
        if out.terminated or out.truncated:
            ep.info[OUTCOME] = _jsonable(out.info)
        if out.terminated:
            ep.finish(EndReason.ANSWERED)
        elif out.truncated or not out.observation:
            ep.finish(EndReason.TURN_LIMIT)
        else:
            self._append_tool_turn(ep, out.observation)
            if not ep.done and ep.turn_index >= self.config.max_turns:
                ep.finish(EndReason.TURN_LIMIT)

    def _append_tool_turn(self, ep: _Episode, observation: list[dict]) -> None:
        observation, images = self._tool_images(ep, observation)
        ids, is_image = self._expand(self.templater.tool_turn_ids(ep.last_text, observation), images)
        if len(ep.token_ids) + len(ids) >= self.config.max_episode_tokens:
            ep.finish(EndReason.EPISODE_TOKEN_BUDGET)  # never append a tool output (or image) cut in half
            return
        ep.append(ids, TokenSource.TOOL.value, is_image=is_image, images=images)
        ep.messages.extend(_display_message(m) for m in observation)

    def _tool_images(self, ep: _Episode, observation: list[dict]) -> tuple[list[dict], list[ImageFeatures]]:
        """Encode a tool turn's images; an image past ``max_images_per_episode`` or one the
        processor cannot take (e.g. a 1-pixel-wide crop) becomes a text note the student reads."""
        if not message_images(observation):
            return observation, []
        self._require_vision()
        out, features = [], []
        for message in observation:
            content = message.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if is_image_part(part):
                        part, feature = self._tool_image(ep, part, len(features))
                        features += [feature] if feature is not None else []
                    parts.append(part)
                message = {**message, "content": parts}
            out.append(message)
        return out, features

    def _tool_image(self, ep: _Episode, part: dict, earlier: int) -> tuple[dict, ImageFeatures | None]:
        held = len(ep.images) + earlier
        if held >= self.config.max_images_per_episode:
            ep.info[IMAGES_DROPPED] = ep.info.get(IMAGES_DROPPED, 0) + 1
            return _note(f"image not shown: this episode already holds {held} images, the limit of "
                         "rollout.max_images_per_episode"), None
        try:
            return part, self.vision.encode(part.get("image", part.get("image_url")))
        except (ValueError, OSError) as exc:
            ep.info[IMAGES_DROPPED] = ep.info.get(IMAGES_DROPPED, 0) + 1
            return _note(f"image not shown: {exc}"), None

    def _to_trajectory(self, ep: _Episode, *, step: int, task: str) -> Trajectory:
        model = TokenSource.MODEL.value  # looked up once: an enum member's value costs a call
        return Trajectory(
            token_ids=ep.token_ids,
            source=ep.source,
            turn=ep.turn,
            loss_mask=[int(s == model) for s in ep.source],
            logprobs=ep.logprobs,
            entropy=ep.entropy,
            sampler=self.backend.name,
            messages=ep.messages,
            reward=ep.reward,
            truncated=ep.end_reason is not EndReason.ANSWERED,
            end_reason=ep.end_reason.value,
            tool_errors=ep.tool_errors,
            tool_calls=ep.tool_calls,
            task=task or ep.task,
            prompt_id=ep.prompt_id,
            sample_index=ep.request.sample_index,
            step=step,
            info={k: _jsonable(v) for k, v in ep.info.items()},
            images=list(ep.image_records),
            pixel_inputs=ep.pixel_inputs(),
        )


def episode_seed(run_seed: int, index: int, turn: int) -> int:
    """The sampling seed of episode ``index``'s turn ``turn`` (0-based) in a run seeded ``run_seed``.

    A splitmix64-style chain over the three integers (Python ints, so no overflow), giving
    unrelated 64-bit seeds for neighbouring episodes and turns.
    """
    h = 0
    for value in (run_seed, index, turn):
        h = ((h ^ (value & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


def _seed_prompt_id(request: EpisodeRequest) -> str:
    """The problem's name when the environment gives no ``prompt_id``: its reset seed and options
    (the rollouts of one problem share both)."""
    options = ",".join(f"{k}={v}" for k, v in sorted(request.options.items()) if isinstance(v, (str, int)))
    return f"seed/{request.seed}" + (f"/{options}" if options else "")


def _note(text: str) -> dict:
    return {"type": "text", "text": f"[{text}]"}


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
