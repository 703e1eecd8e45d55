"""Tests for reopold_agent/demo/tiny_models.py: tokenizer, tiny Qwen models, checkpoints and cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

from reopold_agent.demo import tiny_models as tm
from reopold_agent.demo.chat_template import CHATML_TOOL_TEMPLATE
from reopold_agent.demo.tiny_models import (
    CONTROL_TOKENS,
    MARKER_FILE,
    TINY_SPECS,
    TinyLMSpec,
    build_causal_lm,
    build_tiny_checkpoint,
    build_tokenizer,
    cached_tiny_checkpoint,
    checkpoint_key,
    is_complete_checkpoint,
)

NANO_QWEN2 = TinyLMSpec(family="qwen2", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
NANO_QWEN3 = TinyLMSpec(family="qwen3", hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
TOOL_TEXT = (
    "Let me compute it.\n"
    '<tool_call>{"name": "python", "arguments": {"code": "x = 12 * 7\\nprint(x)"}}</tool_call>\n'
    "<tool_response>\n84\n</tool_response>  tabs\tand  spaces, é 中文 🙂\n\nThe answer is \\boxed{84}.<|im_end|>"
)


def corpus() -> list[str]:
    texts = []
    for a in range(60):
        b = (a * 37 + 11) % 997
        texts.append(
            f"Question: what is {a} * {b}? Let me compute it.\n"
            f'<tool_call>{{"name": "python", "arguments": {{"code": "print({a} * {b})"}}}}</tool_call>\n'
            f"<tool_response>\n{a * b}\n</tool_response>\nThe answer is \\boxed{{{a * b}}}.<|im_end|>"
        )
    return texts


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(corpus())


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_is_deterministic(tok):
    again = build_tokenizer(corpus())
    assert again.get_vocab() == tok.get_vocab()
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert again.encode(TOOL_TEXT) == tok.encode(TOOL_TEXT)


def test_tokenizer_vocab_bounds(tok):
    assert 266 < len(tok) <= 512
    assert len(build_tokenizer(corpus(), vocab_size=300)) == 300
    assert len(build_tokenizer([])) == 266  # 256 bytes + 10 control tokens, no merges
    with pytest.raises(ValueError, match="vocab_size=100"):
        build_tokenizer(corpus(), vocab_size=100)
    with pytest.raises(TypeError, match="single string"):
        build_tokenizer("not a list")


def test_digits_are_single_tokens(tok):
    for text in ["12345", "x=2024;", " 987 + 65", "3.14159"]:
        pieces = [tok.decode([i]) for i in tok.encode(text)]
        assert "".join(pieces) == text
        for piece in pieces:
            assert sum(c.isdigit() for c in piece) <= 1, (text, pieces)
            if any(c.isdigit() for c in piece):
                assert len(piece) == 1, (text, pieces)


def test_control_tokens_are_single_ids(tok):
    for i, token in enumerate(CONTROL_TOKENS):
        assert tok.convert_tokens_to_ids(token) == i
        assert tok.encode(token) == [i]
        assert tok.encode(f"ab{token}cd").count(i) == 1
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.bos_token is None
    assert tok.padding_side == "left"
    assert build_tokenizer([], padding_side="right").padding_side == "right"


def test_decode_roundtrip_and_skip_special(tok):
    ids = tok.encode(TOOL_TEXT)
    assert tok.decode(ids) == TOOL_TEXT
    assert tok.decode(ids, skip_special_tokens=False) == TOOL_TEXT
    # Tool tags are non-special added tokens: they survive skip_special_tokens, <|im_end|> does not.
    assert tok.decode(ids, skip_special_tokens=True) == TOOL_TEXT.removesuffix("<|im_end|>")
    assert tok.encode("<|im_start|>").__len__() == 1
    assert tok.decode(tok.encode("<|im_start|>user\n<|image_pad|>"), skip_special_tokens=True) == "user\n"


def test_tokenizer_save_load_roundtrip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.encode(TOOL_TEXT) == tok.encode(TOOL_TEXT)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.chat_template == CHATML_TOOL_TEMPLATE
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.padding_side) == (0, 2, "left")
    messages = [{"role": "user", "content": "what is 3 * 4?"}]
    assert loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    )


# ---------------------------------------------------------------- models


def test_preset_param_counts_hand_derived():
    # micro at vocab 512 (Qwen3, tied): embedding 512*128 = 65,536; per layer q 128*128 + k 128*64
    # + v 128*64 + o 128*128 + q/k norms 2*32 = 49,216, MLP 3*128*384 = 147,456, two RMSNorms 256
    # -> 196,928 per layer, x2 = 393,856; final norm 128. Total 459,520.
    assert TINY_SPECS["micro"].num_parameters(512) == 459_520
    # nano: 512*64 + (64*64*2 + 64*32*2 + 2*16 + 3*64*256 + 128) + 64 = 32,768 + 61,600 + 64.
    assert TINY_SPECS["nano"].num_parameters(512) == 94_432
    # small: 512*256 + 3 * (256*256*2 + 256*128*2 + 2*64 + 3*256*512 + 512) + 256.
    assert TINY_SPECS["small"].num_parameters(512) == 1_902_720
    assert 80_000 < TINY_SPECS["nano"].num_parameters(512) < 120_000
    assert 1_500_000 < TINY_SPECS["small"].num_parameters(512) < 2_500_000


@pytest.mark.parametrize(
    "spec",
    [NANO_QWEN2, NANO_QWEN3, TinyLMSpec(family="qwen2", hidden_size=32, intermediate_size=48, num_layers=2,
                                        num_heads=4, num_kv_heads=2, tie_word_embeddings=False)],
)
def test_param_formula_matches_model(tok, spec):
    model = build_causal_lm(tok, spec)
    assert model.num_parameters() == spec.num_parameters(len(tok))
    assert model.config.vocab_size == len(tok)
    assert (model.config.pad_token_id, model.config.eos_token_id) == (0, 2)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 0


def test_presets_build(tok):
    for name, spec in TINY_SPECS.items():
        model = build_causal_lm(tok, name)
        assert model.num_parameters() == spec.num_parameters(len(tok))
        assert type(model).__name__ == "Qwen3ForCausalLM"
    with pytest.raises(ValueError, match="unknown tiny model preset 'huge'"):
        build_causal_lm(tok, "huge")


def test_spec_validation():
    with pytest.raises(ValueError, match="family"):
        TinyLMSpec(family="llama")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        TinyLMSpec(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="does not divide"):
        TinyLMSpec(num_heads=4, num_kv_heads=3)


def test_init_is_deterministic_and_leaves_global_rng(tok):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_causal_lm(tok, NANO_QWEN3, seed=7).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    b = build_causal_lm(tok, NANO_QWEN3, seed=7).state_dict()
    c = build_causal_lm(tok, NANO_QWEN3, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


class _ForceEosAfter(LogitsProcessor):
    """Makes <|im_end|> the only choice once ``n`` tokens were generated."""

    def __init__(self, prompt_len: int, n: int, eos_id: int):
        self.prompt_len, self.n, self.eos_id = prompt_len, n, eos_id

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_len >= self.n:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, self.eos_id] = 0.0
        return scores


@pytest.mark.parametrize("spec", [NANO_QWEN2, NANO_QWEN3], ids=["qwen2", "qwen3"])
def test_checkpoint_roundtrip_identical_outputs(tmp_path, spec):
    path = build_tiny_checkpoint(tmp_path / "ckpt", corpus(), spec, seed=3)
    assert is_complete_checkpoint(path)
    assert json.loads((path / MARKER_FILE).read_text())["spec"]["family"] == spec.family
    tok = build_tokenizer(corpus())
    model = build_causal_lm(tok, spec, seed=3)
    loaded_tok = AutoTokenizer.from_pretrained(path)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    assert type(loaded) is type(model)
    assert loaded.generation_config.eos_token_id == loaded_tok.eos_token_id == 2

    prompts = [[{"role": "user", "content": "what is 3 * 4?"}], [{"role": "user", "content": "7"}]]
    batch = loaded_tok.apply_chat_template(
        prompts, add_generation_prompt=True, tokenize=True, return_dict=True, padding=True, return_tensors="pt"
    )
    assert batch["input_ids"][1, 0].item() == 0  # left padding with <|endoftext|>
    with torch.no_grad():
        expected = model(**batch).logits
        got = loaded(**batch).logits
    assert torch.equal(expected, got)

    prompt_len = batch["input_ids"].shape[1]
    out = loaded.generate(
        **batch,
        do_sample=False,
        max_new_tokens=8,
        logits_processor=LogitsProcessorList([_ForceEosAfter(prompt_len, 3, eos_id=2)]),
    )
    new = out[:, prompt_len:]
    assert new.shape == (2, 4)  # three free tokens, then <|im_end|> stops generation
    assert new[:, 3].tolist() == [2, 2]
    free = model.generate(**batch, do_sample=False, max_new_tokens=3)
    assert torch.equal(free[:, prompt_len:], new[:, :3])


def test_build_tiny_checkpoint_refuses_non_empty_folder(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_checkpoint(tmp_path / "ckpt", corpus(), NANO_QWEN3)
    assert (tmp_path / "ckpt" / "keep.txt").read_text() == "mine"


def test_cache_reuses_complete_checkpoint(tmp_path, monkeypatch):
    first = cached_tiny_checkpoint(tmp_path, corpus(), NANO_QWEN3, seed=1)
    assert first.name == checkpoint_key(corpus(), NANO_QWEN3, 1)
    marker_mtime = (first / MARKER_FILE).stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cache hit must not rebuild")

    monkeypatch.setattr(tm, "build_causal_lm", no_rebuild)
    assert cached_tiny_checkpoint(tmp_path, iter(corpus()), NANO_QWEN3, seed=1) == first
    assert (first / MARKER_FILE).stat().st_mtime_ns == marker_mtime
    monkeypatch.undo()

    other = cached_tiny_checkpoint(tmp_path, corpus(), NANO_QWEN3, seed=2)
    assert other != first
    assert checkpoint_key(corpus()[:-1], NANO_QWEN3, 1) != first.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])  # no temp leftovers

    # An incomplete folder (no marker) is rebuilt.
    (other / MARKER_FILE).unlink()
    assert cached_tiny_checkpoint(tmp_path, corpus(), NANO_QWEN3, seed=2) == other
    assert is_complete_checkpoint(other)


def test_checkpoint_is_byte_identical_across_processes(tmp_path):
    # Same inputs in a fresh interpreter (different hash seed) give the same tokenizer and weights.
    script = textwrap.dedent(
        f"""
        import sys, torch
        torch.set_num_threads(1)
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_tiny_models import NANO_QWEN3, corpus
        from reopold_agent.demo.tiny_models import cached_tiny_checkpoint
        print(cached_tiny_checkpoint(sys.argv[1], corpus(), NANO_QWEN3, seed=5))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a")], env=env, capture_output=True, text=True, check=True
    )
    theirs = tmp_path / "a" / out.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]
    ours = cached_tiny_checkpoint(tmp_path / "b", corpus(), NANO_QWEN3, seed=5)
    assert theirs.name == ours.name
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (theirs / name).read_bytes() == (ours / name).read_bytes(), name
