"""Tests for reopold_agent/demo/tiny_vl.py and vision/loading.py: tiny Qwen2.5-VL models, processors, loaders."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from reopold_agent.demo.chat_template import IMAGE_PAD, IMAGE_PLACEHOLDER
from reopold_agent.sequence_scoring import sequence_logprobs
from reopold_agent.demo.tiny_models import build_causal_lm, save_tiny
from reopold_agent.vision.loading import (
    ImageOnlyQwenVLProcessor,
    ModelLoadError,
    is_vision_language,
    load_model,
    load_processor,
)
from reopold_agent.demo.tiny_vl import (
    TINY_VL_SPECS,
    TinyVLSpec,
    build_tiny_processor,
    build_tiny_vl,
    vision_token_ids,
)
from tests.tiny import tokenizer as tiny_tokenizer

SIDE = 56
"""Image side in pixels: 4x4 patches of 14 -> 2x2 merged tokens."""
PIXELS = SIDE * SIDE
MERGED_TOKENS = 4


def make_image(width: int = SIDE, height: int = SIDE, seed: int = 0) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def expanded_ids(tok, image_grid_thw: torch.Tensor, merge: int = 2) -> list[int]:
    """Token ids of one prompt around one image, its ``<|image_pad|>`` repeated once per merged patch."""
    n_tokens = int(image_grid_thw[0].prod()) // merge**2
    text = f"Describe {IMAGE_PLACEHOLDER} please.".replace(IMAGE_PAD, IMAGE_PAD * n_tokens)
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_vl(tok, "nano", seed=0)


@pytest.fixture(scope="module")
def processor(tok):
    return build_tiny_processor(tok, min_pixels=PIXELS, max_pixels=PIXELS)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, processor):
    return save_tiny(model, processor, tmp_path_factory.mktemp("tiny_vl") / "ckpt")


@pytest.fixture(scope="module")
def text_only_ckpt(tmp_path_factory, tok):
    return save_tiny(build_causal_lm(tok, "nano"), tok, tmp_path_factory.mktemp("tiny_lm") / "ckpt")


@pytest.fixture(scope="module")
def batch(tok, processor):
    """One sequence with one image: input_ids/attention_mask/mm_token_type_ids [1, T], pixels, grid."""
    vision = processor.image_processor(images=[make_image()], return_tensors="pt")
    ids = torch.tensor([expanded_ids(tok, vision["image_grid_thw"])])
    image_id = tok.convert_tokens_to_ids(IMAGE_PAD)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == image_id).long(),
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
    }


# ---------------------------------------------------------------- spec


def test_mrope_section_sums_to_half_head_dim():
    assert TinyVLSpec(hidden_size=64, num_heads=4).mrope_section == (2, 3, 3)
    assert TinyVLSpec(hidden_size=128, num_heads=4).mrope_section == (4, 6, 6)
    assert TinyVLSpec(hidden_size=1024, num_heads=8).mrope_section == (16, 24, 24)  # Qwen2.5-VL's, head_dim 128
    assert TinyVLSpec(hidden_size=64, num_heads=8).mrope_section == (1, 1, 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 66}, "not a multiple of num_heads"),
        ({"num_kv_heads": 3}, "does not divide num_heads"),
        ({"hidden_size": 16}, "head_dim=4 must be even and at least 8"),
        ({"vision_hidden_size": 20, "vision_num_heads": 2}, "vision head_dim=10 must be a multiple of 4"),
        ({"vision_hidden_size": 33}, "not a multiple of vision_num_heads"),
        ({"window_size": 42}, "not a multiple of patch_size * spatial_merge_size = 28"),
        ({"fullatt_block_indexes": (1,)}, "in [0, vision_depth=1)"),
        ({"fullatt_block_indexes": [0]}, "must be a tuple"),
        ({"vision_depth": 0}, "vision_depth must be positive"),
    ],
)
def test_spec_rejects_inconsistent_shapes(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TinyVLSpec(**kwargs)


@pytest.mark.parametrize("name", sorted(TINY_VL_SPECS))
def test_presets_parameter_count_matches_formula(tok, name):
    built = build_tiny_vl(tok, name)
    assert built.num_parameters() == TINY_VL_SPECS[name].num_parameters(len(tok))


def test_nano_parameter_count_by_hand(tok):
    # Text layer: q 64*64+64, k and v 64*32+32 each, o 64*64, MLP 3*64*128, two norms 2*64 = 37,120.
    # Text: 300*64 tied embedding + 2 layers + final norm 64 = 93,504.
    # Vision: patch conv 3*2*14*14*32 = 37,632; block: norms 64, qkv 32*96+96, proj 32*32+32,
    # MLP 2*(32*64+64) + 64*32+32 = 10,592; merger: norm 32, 128*128+128, 128*64+64 = 24,800.
    assert len(tok) == 300
    assert TINY_VL_SPECS["nano"].num_parameters(300) == 93_504 + 37_632 + 10_592 + 24_800 == 166_528
    with pytest.raises(TypeError):
        TINY_VL_SPECS["pico"] = TinyVLSpec()  # read-only mapping


# ---------------------------------------------------------------- model


def test_config_wiring(tok, model):
    config = model.config
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert (config.image_token_id, config.vision_start_token_id, config.vision_end_token_id) == (9, 7, 8)
    assert [tok.convert_ids_to_tokens(i) for i in (7, 8, 9)] == ["<|vision_start|>", "<|vision_end|>", IMAGE_PAD]
    assert config.text_config.vocab_size == len(tok)
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size == 64
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (2, 0)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_video_token_id_is_in_vocabulary_and_never_encoded(tok, model):
    video_id = model.config.video_token_id
    assert video_id == vision_token_ids(tok)["video_token_id"]
    assert video_id < len(tok) and video_id not in (0, 1, 2, 7, 8, 9)
    assert tok.convert_ids_to_tokens(video_id) == "\u00ff"  # byte-level symbol of raw byte 0xFF
    every_char = "".join(chr(c) for c in range(1, 0x800)) + "ÿ \u00ff 中文 🙂" + IMAGE_PLACEHOLDER
    assert video_id not in tok(every_char, add_special_tokens=False)["input_ids"]


def test_inputs_embeds_path_needs_an_in_vocabulary_video_id(model, batch):
    # get_placeholder_mask embeds video_token_id when only inputs_embeds are given.
    positions, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"], batch["image_grid_thw"])
    common = dict(attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"],
                  image_grid_thw=batch["image_grid_thw"], position_ids=positions)
    with torch.no_grad():
        by_ids = model(input_ids=batch["input_ids"], **common).logits
        by_embeds = model(inputs_embeds=model.get_input_embeddings()(batch["input_ids"]), **common).logits
    torch.testing.assert_close(by_embeds, by_ids, rtol=0, atol=0)


def test_same_seed_same_weights_and_rng_untouched(tok, model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_vl(tok, "nano", seed=0)
    assert torch.equal(torch.rand(3), expected)
    other = build_tiny_vl(tok, "nano", seed=1)
    for (name, a), b, c in zip(model.state_dict().items(), again.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)
    assert not torch.equal(model.model.visual.patch_embed.proj.weight, other.model.visual.patch_embed.proj.weight)


@pytest.mark.parametrize(("name", "side"), [("nano", SIDE), ("micro", 2 * SIDE)])
def test_forward_with_two_images(tok, processor, name, side):
    # micro at 112x112: 4x4 merged tokens in 2x2-token windows, so windowed and full attention differ.
    model = build_tiny_vl(tok, name)
    images = [make_image(side, side, seed=1), make_image(side, side, seed=2)]
    vision = processor.image_processor(images=images, return_tensors="pt", size={"shortest_edge": side * side,
                                                                                   "longest_edge": side * side})
    grid = side // 14
    assert vision["pixel_values"].shape == (2 * grid * grid, 3 * 2 * 14 * 14)
    assert vision["image_grid_thw"].tolist() == [[1, grid, grid]] * 2
    per_image = grid * grid // 4
    text = f"{IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}".replace(IMAGE_PAD, IMAGE_PAD * per_image)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == 9).long(), **vision)
    assert int((ids == 9).sum()) == 2 * per_image
    assert out.logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(out.logits).all()


# ---------------------------------------------------------------- processor


def test_processor_expands_one_placeholder_like_the_manual_expansion(tok, processor, batch):
    assert isinstance(processor, Qwen2_5_VLProcessor)
    enc = processor(images=[make_image()], text=[f"Describe {IMAGE_PLACEHOLDER} please."], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert torch.equal(enc["input_ids"], batch["input_ids"])
    assert torch.equal(enc["mm_token_type_ids"], batch["mm_token_type_ids"])  # 1 on the 4 image tokens, no 2
    assert int(enc["mm_token_type_ids"].sum()) == MERGED_TOKENS
    assert torch.equal(enc["pixel_values"], batch["pixel_values"])


def test_qwen_vl_utils_fetch_image_resizes_to_the_patch_grid(processor):
    from qwen_vl_utils import fetch_image

    resized = fetch_image({"image": make_image(90, 90), "min_pixels": PIXELS, "max_pixels": PIXELS})
    assert resized.size == (SIDE, SIDE)
    wide = fetch_image({"image": make_image(100, 70), "min_pixels": PIXELS, "max_pixels": PIXELS})
    assert wide.size == (SIDE, SIDE // 2)  # aspect ratio kept, sides multiples of 28, at most max_pixels
    vision = processor.image_processor(images=[resized], return_tensors="pt")
    assert vision["image_grid_thw"].tolist() == [[1, 4, 4]]


# ---------------------------------------------------------------- save and load


def test_reload_gives_same_logits_and_processor(tok, model, saved, batch):
    reloaded = load_model(saved, dtype=torch.float32, role="student")
    assert isinstance(reloaded, Qwen2_5_VLForConditionalGeneration)
    assert reloaded.generation_config.eos_token_id == tok.eos_token_id
    loaded_processor = load_processor(saved)
    assert isinstance(loaded_processor, Qwen2_5_VLProcessor)
    size = loaded_processor.image_processor.size
    assert (size.shortest_edge, size.longest_edge, loaded_processor.image_processor.merge_size) == (PIXELS, PIXELS, 2)
    reloaded_tok = AutoTokenizer.from_pretrained(saved)
    assert len(reloaded_tok) == len(tok) and reloaded_tok.chat_template == tok.chat_template
    assert loaded_processor.chat_template == tok.chat_template
    vision = loaded_processor.image_processor(images=[make_image()], return_tensors="pt")
    assert torch.equal(vision["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        before = model(**batch).logits
        after = reloaded(**{**batch, **vision}).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_image_only_processor_round_trip(tok, tmp_path):
    image_only = build_tiny_processor(tok, min_pixels=PIXELS, max_pixels=4 * PIXELS, with_video_processor=False)
    assert isinstance(image_only, ImageOnlyQwenVLProcessor) and not hasattr(image_only, "video_processor")
    image_only.save_pretrained(tmp_path)
    assert getattr(AutoProcessor.from_pretrained(tmp_path), "image_processor", None) is None  # the quirk
    loaded = load_processor(tmp_path)
    assert isinstance(loaded, ImageOnlyQwenVLProcessor)
    assert loaded.image_processor.size.longest_edge == 4 * PIXELS
    args = dict(images=[make_image(112, 112)], text=[f"See {IMAGE_PLACEHOLDER}."], return_tensors="pt")
    original, again = image_only(**args), loaded(**args)
    assert original["image_grid_thw"].tolist() == [[1, 8, 8]]
    for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(original[key], again[key]), key


@pytest.mark.parametrize("processor_class", ["Qwen2_5_VLProcessor", "Qwen2VLProcessor"])
def test_load_processor_reads_hub_layout(tok, tmp_path, processor_class):
    tok.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": processor_class,
    }))
    loaded = load_processor(tmp_path)
    assert type(loaded).__name__ == processor_class
    assert (loaded.image_processor.size.shortest_edge, loaded.image_processor.size.longest_edge) == (3136, 12845056)
    enc = loaded(images=[make_image()], text=[IMAGE_PLACEHOLDER], return_tensors="pt")
    assert int((enc["input_ids"] == 9).sum()) == MERGED_TOKENS


def test_load_processor_without_image_processor_config(text_only_ckpt):
    with pytest.raises(ModelLoadError, match="cannot load an image processor from") as info:
        load_processor(text_only_ckpt)
    assert str(text_only_ckpt) in str(info.value) and "\n" not in str(info.value)


def test_is_vision_language(model, saved, text_only_ckpt):
    assert is_vision_language(model.config) and is_vision_language(saved) and is_vision_language(str(saved))
    assert not is_vision_language(text_only_ckpt)
    with pytest.raises(ModelLoadError, match="cannot load the config of"):
        is_vision_language(text_only_ckpt / "missing")


def test_load_model_text_only_is_a_causal_lm(text_only_ckpt):
    loaded = load_model(text_only_ckpt, dtype=torch.bfloat16, role="student")
    assert type(loaded).__name__ == "Qwen3ForCausalLM"
    assert loaded.dtype == torch.bfloat16


def test_load_model_missing_path_names_role_and_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as info:
        load_model(missing, dtype=torch.float32, role="teacher")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"cannot load teacher model {str(missing)!r}: ")
    assert "\n" not in message


# ---------------------------------------------------------------- sequence scoring


def token_logprobs(logits_BTV: torch.Tensor, ids_BT: torch.Tensor) -> torch.Tensor:
    """[B, T-1] log p(ids[:, t+1] | ids[:, :t+1]) from full logits."""
    return torch.log_softmax(logits_BTV[:, :-1].float(), -1).gather(-1, ids_BT[:, 1:, None])[..., 0]


def test_sequence_logprobs_on_the_vl_backbone_needs_mrope_inputs(model, batch):
    ids, attn = batch["input_ids"], batch["attention_mask"]
    pixels = {"pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}
    mrope_positions, _ = model.model.get_rope_index(ids, batch["mm_token_type_ids"], batch["image_grid_thw"])
    text_positions = torch.arange(ids.shape[1]).expand(3, 1, -1)
    with_types = {**pixels, "mm_token_type_ids": batch["mm_token_type_ids"]}
    with torch.no_grad():
        reference = token_logprobs(model(**batch).logits, ids)
        text_logits = model(input_ids=ids, attention_mask=attn, position_ids=text_positions, **pixels).logits
        as_text = token_logprobs(text_logits, ids)
        by_types, _ = sequence_logprobs(model, ids, attn, extra_inputs=with_types)
        by_positions, _ = sequence_logprobs(model, ids, attn, extra_inputs={**pixels, "position_ids": mrope_positions})
        bare, _ = sequence_logprobs(model, ids, attn, extra_inputs=pixels)
    torch.testing.assert_close(by_types[:, 1:], reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(by_positions[:, 1:], reference, rtol=0, atol=1e-5)
    # Without mm_token_type_ids or position_ids, transformers 5.x falls back to 1D text positions.
    torch.testing.assert_close(bare[:, 1:], as_text, rtol=0, atol=1e-5)
    assert (bare[:, 1:] - reference).abs().max() > 1e-4
