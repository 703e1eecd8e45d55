"""Vision-language students through the one rollout / teacher / update path.

Real tiny Qwen2.5-VL models, the real Qwen2-VL image processor and qwen-vl-utils resizing, the
real ``visual_qa`` environment and zoom tool. Where a test needs a zoom call that a random model
would not make, a scripted first turn stands in for the student's first sample; everything after
it (tool, templating, image expansion, generation, scoring) is the real code.
"""

from __future__ import annotations

import re

import pytest
import torch

from reopold_agent.batching import collate
from reopold_agent.envs.visual_qa import VisualQAEnv
from reopold_agent.policy_update import forward_inputs
from reopold_agent.rollout.backend import Generation, GenerationBackend
from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.rollout.engine import EpisodeRequest, RolloutEngine
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.run_logging import RunLogger
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.supervised import tokenize_conversation
from reopold_agent.teacher import TeacherScorer
from reopold_agent.tool_protocol import render_tool_call
from reopold_agent.trajectory import TokenSource
from reopold_agent.trajectory_io import read_trajectories
from reopold_agent.vision import mrope_position_ids
from reopold_agent.vision.storage import load_pixel_inputs
from tests import tiny

IMAGE = TokenSource.IMAGE.value


@pytest.fixture(scope="module")
def student():
    return tiny.vl_model(seed=0)


@pytest.fixture(scope="module")
def vision(student):
    return tiny.vl_vision(student)


class ZoomFirst(GenerationBackend):
    """Turn 1: the gold zoom call into the asked cell; later turns: ``then`` (or a fixed answer).

    Records the pixel inputs each call received, per row.
    """

    def __init__(self, tok, then: GenerationBackend | None = None, answer: str = "\\boxed{red}<|im_end|>"):
        self.tok, self.then, self.answer = tok, then, answer
        self.calls: list[list] = []

    def generate(self, prompts, max_new_tokens, params, *, seeds, extra_inputs=None, on_row_done=None):
        self.calls.append([(x or {}).get("vision") for x in (extra_inputs or [None] * len(prompts))])
        first = [self.tok.decode(p).count("<|im_start|>assistant") == 1 for p in prompts]
        if self.then is not None and not any(first):
            return self.then.generate(prompts, max_new_tokens, params, seeds=seeds, extra_inputs=extra_inputs)
        out = []
        for prompt, budget, is_first in zip(prompts, max_new_tokens, first):
            if is_first:
                box = [int(v) for v in re.search(r"inside \[(\d+), (\d+), (\d+), (\d+)\]", self.tok.decode(prompt)).groups()]
                text = render_tool_call("zoom", {"bbox": box})
            else:
                text = self.answer
            ids = self.tok(text, add_special_tokens=False)["input_ids"]
            n = min(len(ids), budget)
            out.append(Generation(ids[:n], [-0.5] * n, [1.0] * n, "stop" if n == len(ids) else "length"))
        return out


def _play(backend, vision, config=None, count=2, seed=0):
    config = config or RolloutConfig(max_turn_tokens=64, max_episode_tokens=1024, max_turns=3)
    engine = RolloutEngine(backend, tiny.tokenizer(), config, vision=vision)
    envs = [VisualQAEnv(level="dots", max_tool_rounds=2) for _ in range(count)]
    return engine.run(envs, [EpisodeRequest(seed=i, options={"index": i}) for i in range(count)], seed=seed)


def _check_pairing(traj):
    """Image tokens exist exactly on the recorded spans, and each span matches its features."""
    flags = [s == IMAGE for s in traj.source]
    spans = [(r.token_start, r.token_end) for r in traj.images]
    covered = [False] * traj.num_tokens
    for start, end in spans:
        covered[start:end] = [True] * (end - start)
    assert flags == covered
    assert all(traj.token_ids[t] == tiny.tokenizer().convert_tokens_to_ids("<|image_pad|>") for t in range(traj.num_tokens)
               if flags[t])
    n_images = traj.pixel_inputs.num_images if traj.pixel_inputs is not None else 0
    assert n_images == len(traj.images)
    if n_images:
        grid = traj.pixel_inputs.image_grid_thw
        assert [list(g) for g in grid.tolist()] == [r.grid_thw for r in traj.images]
        assert [int(g.prod()) // 4 for g in grid] == [e - s for s, e in spans]
        assert traj.pixel_inputs.pixel_values.shape[0] == int(grid.prod(-1).sum())
    assert not any(m and f for m, f in zip(traj.loss_mask, flags))


def test_positions_match_the_models_own_rope_index_left_and_right_padded(student, vision):
    trajs = _play(ZoomFirst(tiny.tokenizer()), vision)
    seqs = [t.token_ids for t in trajs] + [trajs[0].token_ids[:40]]  # a text-only row too
    grids = torch.cat([t.pixel_inputs.image_grid_thw for t in trajs])
    width = max(map(len, seqs))
    for side in ("left", "right"):
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, seq in enumerate(seqs):
            cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[b, cols], attn[b, cols] = torch.tensor(seq), 1
        mine = mrope_position_ids(ids, attn, grids, image_token_id=vision.image_token_id, spatial_merge_size=2)
        theirs, _ = student.model.get_rope_index(ids, mm_token_type_ids=(ids == vision.image_token_id).int(),
                                                 image_grid_thw=grids, attention_mask=attn)
        assert torch.equal(mine * attn, theirs * attn)


def test_a_zoom_episode_pairs_every_image_with_its_tokens_and_features(vision):
    trajs = _play(ZoomFirst(tiny.tokenizer()), vision)
    for traj in trajs:
        assert traj.reward in (0.0, 1.0) and traj.end_reason == "answered"
        assert len(traj.images) == 2  # the prompt's image and the zoomed crop
        assert traj.source[traj.images[1].token_start - 1] == TokenSource.TOOL.value
        assert traj.tool_calls == 1 and traj.tool_errors == 0
        _check_pairing(traj)


@pytest.mark.parametrize("cut", range(-12, 16, 3))
def test_truncation_never_separates_image_tokens_from_features(vision, cut):
    """Episode budgets around the end of the tool turn that brings the zoomed image."""
    full = _play(ZoomFirst(tiny.tokenizer()), vision, count=1)[0]
    tool_turn_end = full.images[1].token_end + 4
    config = RolloutConfig(max_turn_tokens=64, max_episode_tokens=tool_turn_end + cut, max_turns=3)
    traj = _play(ZoomFirst(tiny.tokenizer()), vision, config, count=1)[0]
    _check_pairing(traj)
    assert len(traj.images) in (1, 2)
    if len(traj.images) == 1:
        assert traj.end_reason == "episode_token_budget"


def test_images_beyond_the_episode_limit_become_a_note_the_student_reads(vision):
    config = RolloutConfig(max_turn_tokens=64, max_episode_tokens=1024, max_turns=3, max_images_per_episode=1)
    traj = _play(ZoomFirst(tiny.tokenizer()), vision, config, count=1)[0]
    assert len(traj.images) == 1 and traj.info["images_dropped"] == 1
    assert "max_images_per_episode" in tiny.tokenizer().decode(traj.token_ids)
    _check_pairing(traj)
    with pytest.raises(ValueError, match="max_images_per_episode=0"):
        _play(ZoomFirst(tiny.tokenizer()), vision,
              RolloutConfig(max_episode_tokens=1024, max_images_per_episode=0), count=1)


def test_a_text_student_on_an_image_task_fails_clearly():
    with pytest.raises(ValueError, match="text-only model"):
        _play(ZoomFirst(tiny.tokenizer()), None, count=1)


def test_behaviour_logprobs_with_images_match_a_fresh_forward_and_the_batch_does_not_matter(student, vision):
    backend = ZoomFirst(tiny.tokenizer(), then=HFGenerationBackend(student, pad_token_id=0, vision=vision))
    config = RolloutConfig(max_turn_tokens=64, max_episode_tokens=1024, max_turns=2)
    trajs = _play(backend, vision, config, count=3)
    TeacherScorer(tiny.vl_model(seed=0), pad_token_id=0, vision=vision).score(trajs)  # the student scoring itself
    for traj in trajs:
        _check_pairing(traj)
        sampled = [t for t, turn in enumerate(traj.turn) if turn == 2 and traj.loss_mask[t]]
        assert sampled
        for t in sampled:
            assert traj.logprobs[t] == pytest.approx(traj.teacher_logprobs[t], abs=1e-4)
    alone = _play(ZoomFirst(tiny.tokenizer(), then=HFGenerationBackend(student, pad_token_id=0, vision=vision)),
                  vision, config, count=1)[0]
    assert alone.token_ids == trajs[0].token_ids


def test_the_teacher_receives_exactly_the_students_pixel_inputs(student, vision):
    teacher = tiny.vl_model(seed=1)
    seen = {"student": [], "teacher": []}
    for name, model in (("student", student), ("teacher", teacher)):
        model.model.visual.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: seen[name].append((args[0].clone(), kwargs["grid_thw"].clone())),
            with_kwargs=True)
    backend = ZoomFirst(tiny.tokenizer(), then=HFGenerationBackend(student, pad_token_id=0, vision=vision))
    traj = _play(backend, vision, RolloutConfig(max_turn_tokens=64, max_episode_tokens=1024, max_turns=2), count=1)[0]
    TeacherScorer(teacher, pad_token_id=0, vision=vision, batch_rows=1).score([traj])
    student_pixels, student_grid = seen["student"][-1]  # the last turn's prefill holds both images
    teacher_pixels, teacher_grid = seen["teacher"][-1]
    assert len(traj.images) == 2 and student_grid.shape[0] == 2
    assert torch.equal(student_pixels, teacher_pixels) and torch.equal(student_grid, teacher_grid)
    assert torch.equal(teacher_pixels, traj.pixel_inputs.pixel_values.to(teacher_pixels.dtype))


def test_saved_vl_trajectories_reload_with_identical_pixels_and_scores(tmp_path, student, vision):
    trajs = _play(ZoomFirst(tiny.tokenizer()), vision, count=2)
    scorer = TeacherScorer(tiny.vl_model(seed=1), pad_token_id=0, vision=vision)
    scorer.score(trajs)
    logger = RunLogger(tmp_path, tensorboard=False)
    logger.log_trajectories("step_000001", trajs)
    logger.log_trajectories("step_000002", trajs)
    stored = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert len(stored) == len({r.path for t in trajs for r in t.images})  # once per run, not per line
    assert "pixel_inputs" not in (tmp_path / "trajectories" / "step_000001.jsonl").read_text()
    loaded, errors = read_trajectories(tmp_path / "trajectories" / "step_000001.jsonl")
    assert not errors and [t.images for t in loaded] == [t.images for t in trajs]
    for before, after in zip(trajs, loaded):
        assert after.pixel_inputs is None
        load_pixel_inputs(after, tmp_path, vision)
        assert torch.equal(after.pixel_inputs.pixel_values, before.pixel_inputs.pixel_values)
        assert torch.equal(after.pixel_inputs.image_grid_thw, before.pixel_inputs.image_grid_thw)
    expected = [t.teacher_logprobs for t in loaded]
    scorer.score(loaded)  # the reloaded trajectories score as the originals did
    for a, b in zip(expected, [t.teacher_logprobs for t in loaded]):
        assert a[1:] == pytest.approx(b[1:], abs=1e-5)
    (tmp_path / trajs[0].images[0].path).unlink()
    with pytest.raises(FileNotFoundError, match="is not in"):
        load_pixel_inputs(loaded[0], tmp_path, vision)


def test_collated_micro_batches_carry_their_rows_pixels(student, vision):
    trajs = _play(ZoomFirst(tiny.tokenizer()), vision, count=3)
    TeacherScorer(tiny.vl_model(seed=1), pad_token_id=0, vision=vision).score(trajs)
    batch = collate(trajs, pad_token_id=0)
    full, _ = sequence_logprobs(student, batch.input_ids_BT, batch.attention_mask_BT,
                                extra_inputs=forward_inputs(batch, vision))
    for rows in ([2], [0, 2], [1]):
        micro = batch.select(rows)
        part, _ = sequence_logprobs(student, micro.input_ids_BT, micro.attention_mask_BT,
                                    extra_inputs=forward_inputs(micro, vision))
        width = part.shape[1]
        assert torch.allclose(part * micro.attention_mask_BT, full[rows, :width] * micro.attention_mask_BT, atol=1e-5)


def test_sft_tokenizes_image_conversations_with_masked_image_tokens(vision):
    from reopold_agent.demo.embedded import gold_conversations

    conversation = gold_conversations("visual_qa", count=1)[0]
    example = tokenize_conversation(tiny.tokenizer(), conversation, vision=vision)
    image_id = vision.image_token_id
    assert example.pixel_inputs.num_images == 2
    assert sum(t == image_id for t in example.input_ids) == 8  # 2 images x 4 tokens
    assert all(m == 0 for t, m in zip(example.input_ids, example.assistant_mask) if t == image_id)
    with pytest.raises(ValueError, match="vision-language student"):
        tokenize_conversation(tiny.tokenizer(), conversation)


def test_a_tool_image_the_processor_cannot_take_becomes_a_note_not_a_crash(vision):
    """A zoom into a 1-pixel-wide strip gives a 1x448 crop: no patch grid fits it."""

    class ThinZoom(ZoomFirst):
        def generate(self, prompts, max_new_tokens, params, *, seeds, extra_inputs=None, on_row_done=None):
            gens = super().generate(prompts, max_new_tokens, params, seeds=seeds, extra_inputs=extra_inputs)
            thin = self.tok(render_tool_call("zoom", {"bbox": [10, 0, 11, 448], "scale": 1}),
                            add_special_tokens=False)["input_ids"]
            return [Generation(thin, [-0.5] * len(thin), [1.0] * len(thin), "stop") if "zoom" in self.tok.decode(g.token_ids)
                    else g for g in gens]

    traj = _play(ThinZoom(tiny.tokenizer()), vision, count=1)[0]
    assert traj.end_reason == "answered" and len(traj.images) == 1 and traj.info["images_dropped"] == 1
    assert "image not shown: a 1x448 image is too thin to resize" in tiny.tokenizer().decode(traj.token_ids)
    _check_pairing(traj)


def test_equal_images_are_encoded_once_and_the_cache_stays_within_its_bytes():
    from PIL import Image

    from reopold_agent.vision import VisionProcessor

    model = tiny.vl_model()
    base = tiny.vl_vision(model)
    one_image = base.encode(Image.new("RGB", (90, 90), (200, 10, 10))).pixel_values.nbytes
    vision = VisionProcessor(base.image_processor, image_token_id=base.image_token_id, patch_size=14,
                             spatial_merge_size=2, min_pixels=tiny.VL_PIXELS, max_pixels=tiny.VL_PIXELS,
                             cache_bytes=2 * one_image)
    red, blue = Image.new("RGB", (90, 90), (200, 10, 10)), Image.new("RGB", (90, 90), (10, 10, 200))
    first = vision.encode(red)
    assert vision.encode(Image.new("RGB", (90, 90), (200, 10, 10))) is first  # equal pixels: the cached features
    assert not torch.equal(vision.encode(blue).pixel_values, first.pixel_values)
    vision.encode(Image.new("RGB", (90, 90), (10, 200, 10)))  # a third image evicts the oldest
    assert vision._cached_bytes <= 2 * one_image and vision.encode(red) is not first
    assert torch.equal(vision.encode(red).pixel_values, first.pixel_values)


def test_a_reloaded_trajectory_without_its_pixels_is_refused_by_teacher_and_collate(tmp_path, vision):
    traj = _play(ZoomFirst(tiny.tokenizer()), vision, count=1)[0]
    traj.pixel_inputs = None  # as read back from a JSON line
    with pytest.raises(ValueError, match="load_pixel_inputs"):
        TeacherScorer(tiny.vl_model(seed=1), pad_token_id=0, vision=vision).score([traj])
    with pytest.raises(ValueError, match="2 images but pixel inputs for 0"):
        collate([traj], pad_token_id=0, require_teacher=False)
