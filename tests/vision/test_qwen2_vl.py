"""Qwen2-VL students through the one vision-language path (the issue promises Qwen2-VL too).

A tiny random ``Qwen2VLForConditionalGeneration`` (not Qwen2.5-VL: no windowed vision attention,
a LayerNorm + QuickGELU vision tower, positions advanced by ``max(h, w) / merge`` after an image)
is saved with a real ``Qwen2VLImageProcessor`` and the shared tiny tokenizer, reloaded through
:func:`reopold_agent.vision.loading.load_model` / :func:`~reopold_agent.vision.loading.load_processor`
as a hub checkpoint would be, and run through the real positions, rollout engine, generation
backend and teacher scorer.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.teacher import TeacherScorer
from reopold_agent.trajectory import TokenSource
from reopold_agent.vision import VisionProcessor, mrope_position_ids
from reopold_agent.vision.loading import load_model, load_processor
from reopold_agent.demo.tiny_vl import vision_token_ids
from tests import tiny
from tests.vision.test_vl_pipeline import ZoomFirst, _check_pairing, _play

HEAD_DIM = 64 // 4
MROPE_SECTION = [2, 3, 3]
"""(temporal, height, width) rotary frequencies per head: sums to head_dim / 2 = 8."""


def _tiny_qwen2_vl(seed: int = 0) -> Qwen2VLForConditionalGeneration:
    tok = tiny.tokenizer()
    special = dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                          "mrope_section": MROPE_SECTION},
                         **special),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        tie_word_embeddings=True,
        **vision_token_ids(tok),  # video_token_id: the never-encoded 0xFF byte token, see vision/tiny.py
    )
    assert sum(MROPE_SECTION) * 2 == HEAD_DIM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(**special)
    return model.to(torch.float32).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2_vl")
    _tiny_qwen2_vl().save_pretrained(path)
    Qwen2VLImageProcessor(min_pixels=tiny.VL_PIXELS, max_pixels=tiny.VL_PIXELS, patch_size=14,
                          temporal_patch_size=2, merge_size=2).save_pretrained(path)
    tiny.tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def student(checkpoint):
    return load_model(checkpoint, dtype=torch.float32, role="student").eval()


@pytest.fixture(scope="module")
def vision(checkpoint, student):
    processor = load_processor(checkpoint)
    return VisionProcessor.for_model(student.config, processor.image_processor,
                                     min_pixels=tiny.VL_PIXELS, max_pixels=tiny.VL_PIXELS)


def test_the_checkpoint_reloads_as_qwen2_vl_with_its_image_processor(checkpoint, student, vision):
    assert type(student).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(vision.image_processor).__name__.startswith("Qwen2VLImageProcessor")
    assert (vision.image_token_id, vision.patch_size, vision.spatial_merge_size) == (9, 14, 2)
    reference = _tiny_qwen2_vl()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(student.state_dict()[name], tensor), name


def test_positions_match_qwen2_vls_own_rope_index_on_a_left_padded_batch(student, vision):
    trajs = _play(ZoomFirst(tiny.tokenizer()), vision, count=2)
    assert all(len(t.images) == 2 for t in trajs)
    seqs = [trajs[0].token_ids, trajs[1].token_ids[:-7]]  # different lengths: real left padding
    assert len(seqs[0]) != len(seqs[1])
    grids = torch.cat([t.pixel_inputs.image_grid_thw for t in trajs])
    width = max(map(len, seqs))
    ids = torch.zeros((2, width), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, seq in enumerate(seqs):
        ids[b, width - len(seq):], attn[b, width - len(seq):] = torch.tensor(seq), 1
    mine = mrope_position_ids(ids, attn, grids, image_token_id=vision.image_token_id, spatial_merge_size=2)
    kwargs = dict(image_grid_thw=grids, attention_mask=attn)
    if "mm_token_type_ids" in inspect.signature(student.model.get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = (ids == vision.image_token_id).int()
    theirs, _ = student.model.get_rope_index(ids, **kwargs)
    assert torch.equal(mine * attn, theirs * attn)
    assert int(mine.amax()) < attn.sum(-1).max()  # images take fewer positions than tokens


def test_behaviour_logprobs_of_a_qwen2_vl_rollout_match_a_fresh_teacher_forward(checkpoint, student, vision):
    backend = ZoomFirst(tiny.tokenizer(), then=HFGenerationBackend(student, pad_token_id=0, vision=vision))
    config = RolloutConfig(max_turn_tokens=64, max_episode_tokens=1024, max_turns=2)
    trajs = _play(backend, vision, config, count=2)
    teacher = load_model(checkpoint, dtype=torch.float32, role="teacher").eval()
    vision.check_compatible(teacher.config, "teacher")
    TeacherScorer(teacher, pad_token_id=0, vision=vision).score(trajs)  # the student scoring itself
    for traj in trajs:
        _check_pairing(traj)
        assert len(traj.images) == 2 and traj.pixel_inputs.num_images == 2
        assert sum(s == TokenSource.IMAGE.value for s in traj.source) == 8  # 2 images x 4 tokens
        sampled = [t for t, turn in enumerate(traj.turn) if turn == 2 and traj.loss_mask[t]]
        assert sampled
        for t in sampled:
            assert traj.logprobs[t] == pytest.approx(traj.teacher_logprobs[t], abs=1e-4)
    # The explicit 3D positions give what Qwen2-VL's own forward infers from mm_token_type_ids.
    traj = trajs[0]
    ids = torch.tensor([traj.token_ids])
    with torch.no_grad():
        logits = teacher(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                         pixel_values=traj.pixel_inputs.pixel_values, image_grid_thw=traj.pixel_inputs.image_grid_thw,
                         mm_token_type_ids=(ids == vision.image_token_id).int()).logits
    native = torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    assert native.tolist() == pytest.approx(traj.teacher_logprobs[1:], abs=1e-4)
