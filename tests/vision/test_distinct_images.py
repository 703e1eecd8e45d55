"""A group's repeated images go through the vision encoder once, with the same forward and gradient."""

from __future__ import annotations

import pytest
import torch

import reopold_agent.rollout.hf_backend as hf_backend
import reopold_agent.sequence_scoring as sequence_scoring
from reopold_agent.batching import collate
from reopold_agent.envs.visual_qa import VisualQAEnv
from reopold_agent.policy_update import forward_inputs
from reopold_agent.rollout.config import RolloutConfig
from reopold_agent.rollout.engine import EpisodeRequest, RolloutEngine
from reopold_agent.rollout.hf_backend import HFGenerationBackend
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.teacher import TeacherScorer
from reopold_agent.vision.distinct_images import distinct_images, encode_images_once
from tests import tiny
from tests.vision.test_vl_pipeline import ZoomFirst


@pytest.fixture(scope="module")
def student():
    return tiny.vl_model(seed=0)


@pytest.fixture(scope="module")
def vision(student):
    return tiny.vl_vision(student)


def _group_and_one(backend, vision, group=3):
    """``group`` rollouts of visual_qa problem 0 (the same image, the same zoom crop) and one of problem 1."""
    config = RolloutConfig(max_turn_tokens=64, max_episode_tokens=1024, max_turns=2)
    engine = RolloutEngine(backend, tiny.tokenizer(), config, vision=vision)
    indices = [0] * group + [1]
    envs = [VisualQAEnv(level="dots", max_tool_rounds=2) for _ in indices]
    return engine.run(envs, [EpisodeRequest(seed=i, options={"index": index}) for i, index in enumerate(indices)],
                      seed=0)


def _seen_images(model):
    """The number of images each call of ``model``'s vision encoder received."""
    seen: list[int] = []
    model.model.visual.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(int(kwargs["grid_thw"].shape[0])), with_kwargs=True)
    return seen


def test_distinct_images_keep_one_copy_of_each_and_say_where_each_went():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    c = torch.randn(8, 6, generator=g)
    grid = torch.tensor([[1, 4, 4], [1, 4, 4], [1, 2, 4], [1, 4, 4], [1, 4, 4]])
    pixels = torch.cat([a, b, c, a, a.flip(0)])  # the same patches in another order are another image
    unique, unique_grid, order = distinct_images(pixels, grid)
    assert order == [0, 1, 2, 0, 3]
    assert torch.equal(unique, torch.cat([a, b, c, a.flip(0)]))
    assert torch.equal(unique_grid, grid[[0, 1, 2, 4]])
    same, same_grid, order = distinct_images(torch.cat([a, b]), grid[:2])
    assert order == [0, 1] and same is not None and torch.equal(same_grid, grid[:2])


def test_a_model_without_mm_encoder_outputs_gets_its_inputs_unchanged():
    """transformers versions whose vision-language forward takes no precomputed encodings: every
    copy goes through the encoder as before, rather than an argument the forward rejects."""

    class OlderVL(torch.nn.Module):
        def get_image_features(self, pixel_values, image_grid_thw):
            raise AssertionError("must not encode")

        def forward(self, input_ids=None, pixel_values=None, image_grid_thw=None):
            raise AssertionError("not called here")

    a = torch.randn(16, 6)
    inputs = {"pixel_values": torch.cat([a, a]), "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]])}
    assert encode_images_once(OlderVL(), inputs) is inputs


def test_scoring_encodes_a_groups_images_once_with_the_same_logprobs_and_gradient(student, vision, monkeypatch):
    """Three rollouts of one problem and one of another: 8 images, 4 distinct, which the teacher
    and the student encode once each. Log-probs and the gradient of every weight (the vision
    encoder's included) equal encoding every copy."""
    trajs = _group_and_one(ZoomFirst(tiny.tokenizer()), vision)
    teacher = tiny.vl_model(seed=1)
    seen_by_teacher = _seen_images(teacher)
    TeacherScorer(teacher, pad_token_id=0, vision=vision).score(trajs)
    assert seen_by_teacher == [4]
    batch = collate(trajs, pad_token_id=0)
    seen = _seen_images(student)
    results = {}
    for name in ("once", "every copy"):
        if name == "every copy":
            monkeypatch.setattr(sequence_scoring, "encode_images_once", lambda backbone, extra: extra)
        student.zero_grad(set_to_none=True)
        logp, _ = sequence_logprobs(student, batch.input_ids_BT, batch.attention_mask_BT,
                                    extra_inputs=forward_inputs(batch, vision))
        (logp * batch.valid_BT).sum().backward()
        results[name] = (logp.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    assert seen == [4, 8]
    (logp_once, grads_once), (logp_all, grads_all) = results["once"], results["every copy"]
    mask = batch.attention_mask_BT.bool()
    torch.testing.assert_close(logp_once[mask], logp_all[mask], atol=1e-5, rtol=1e-5)
    assert grads_once.keys() == grads_all.keys() and any("visual" in n for n in grads_once)
    for n in grads_once:
        torch.testing.assert_close(grads_once[n], grads_all[n], atol=1e-5, rtol=1e-4)


def test_generation_prefill_encodes_a_groups_images_once_and_samples_the_same(student, vision, monkeypatch):
    seen = _seen_images(student)
    played = {}
    for name in ("once", "every copy"):
        if name == "every copy":
            monkeypatch.setattr(hf_backend, "encode_images_once", lambda model, extra: extra)
        start = len(seen)
        backend = ZoomFirst(tiny.tokenizer(), then=HFGenerationBackend(student, pad_token_id=0, vision=vision))
        played[name] = (_group_and_one(backend, vision), seen[start:])
    (once, seen_once), (every, seen_every) = played["once"], played["every copy"]
    assert seen_once == [4] and seen_every == [8]  # the second turn's prefill: 2 images a row
    for a, b in zip(once, every):
        assert a.token_ids == b.token_ids
        sampled = [t for t, m in enumerate(a.loss_mask) if m and a.turn[t] == 2]
        assert sampled
        assert [a.logprobs[t] for t in sampled] == pytest.approx([b.logprobs[t] for t in sampled], abs=1e-5)
