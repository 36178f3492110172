"""Converted checkpoints reproduce the authors' modules (reference numbers in fixtures/official_parity)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from utils import PARITY, analytic_images

from diffusers_bit.conversion import convert_component

TOKENIZER_OVERRIDES = {
    "encoder_downsample_blocks": [1],
    "decoder_upsample_blocks": [1],
    "axes_dims_rope": [4, 14, 14],
    "rope_reference_size": 1024,
    "rope_position_dtype": "auto",
    "sample_sizes": [512, 768, 1024],
}


@pytest.fixture(scope="module")
def tokenizer_ref():
    return load_file(PARITY / "tokenizer_reference.safetensors")


def _tokenizer(**overrides):
    return convert_component(
        PARITY / "bae" / "model.safetensors",
        "image_tokenizer",
        config_overrides={**TOKENIZER_OVERRIDES, **overrides},
        dtype=torch.float32,
    )


def _check_decode(images, ref, prefix):
    stride = 8 if images.shape[-1] <= 512 else 16
    sub = images[:, :, 3::stride, 5::stride]
    assert sub.shape == ref[f"{prefix}_sub"].shape
    torch.testing.assert_close(sub, ref[f"{prefix}_sub"], atol=1e-4, rtol=0)
    d = images.double()
    stats = torch.stack([d.mean(), d.abs().mean(), d.pow(2).mean()]).float()
    torch.testing.assert_close(stats, ref[f"{prefix}_stats"], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_tokenizer_encode_matches_official(tokenizer_ref):
    tok = _tokenizer()
    images = analytic_images(2, 512)
    features = tok.encoder(images, tok.rope_scale)
    torch.testing.assert_close(features, tokenizer_ref["encoder_features"], atol=1e-4, rtol=0)
    out = tok.encode(images)
    torch.testing.assert_close(out.logits, tokenizer_ref["quantizer_logits"], atol=1e-4, rtol=0)
    assert torch.equal(out.bits, tokenizer_ref["bits"])
    torch.testing.assert_close(out.code_loss.reshape(1), tokenizer_ref["code_loss"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [512, 768, 1024])
@torch.no_grad()
def test_tokenizer_decode_matches_official(tokenizer_ref, size):
    tok = _tokenizer()
    images = tok.decode(tokenizer_ref["bits"], size, size).sample
    assert images.shape == (2, 3, size, size)
    _check_decode(images, tokenizer_ref, f"decode_{size}")


@torch.no_grad()
def test_tokenizer_bf16_positions_match_official_bf16_runs(tokenizer_ref):
    tok = _tokenizer(rope_position_dtype="bfloat16")
    assert torch.equal(tok.encode(analytic_images(2, 512)).bits, tokenizer_ref["bits_bf16_positions"])
    _check_decode(tok.decode(tokenizer_ref["bits"], 512, 512).sample, tokenizer_ref, "decode_512_bf16_positions")
    # and they differ from fp32 positions: the option matters
    plain = _tokenizer().decode(tokenizer_ref["bits"], 512, 512).sample
    assert (plain - tok.decode(tokenizer_ref["bits"], 512, 512).sample).abs().max() > 1e-3


@torch.no_grad()
def test_tokenizer_without_resolution_scale_matches_official(tokenizer_ref):
    tok = _tokenizer(rope_reference_size=None)
    assert torch.equal(tok.encode(analytic_images(2, 512)).bits, tokenizer_ref["bits_no_scale"])
    _check_decode(tok.decode(tokenizer_ref["bits"], 512, 512).sample, tokenizer_ref, "decode_512_no_scale")


@pytest.fixture(scope="module")
def dit_ref():
    return load_file(PARITY / "dit_reference.safetensors")


def _text(ref, rows=slice(None)):
    return [ref[f"text_{i}"][rows] for i in range(3)]


@torch.no_grad()
def test_diffusion_forward_matches_official(dit_ref):
    model = convert_component(PARITY / "diffusion.pt", "transformer", dtype=torch.float32)
    assert model.config.num_tokens == 8 and model.config.text_num_layers == 3
    out = model(dit_ref["bits"], dit_ref["timestep"], _text(dit_ref), dit_ref["text_mask"]).sample
    torch.testing.assert_close(out, dit_ref["output"], atol=1e-4, rtol=0)
    # precomputed text keys/values give the same result
    text_kv = model.prepare_text_kv(_text(dit_ref), dit_ref["text_mask"])
    out_kv = model(dit_ref["bits"], dit_ref["timestep"], text_kv=text_kv).sample
    torch.testing.assert_close(out_kv, dit_ref["output"], atol=1e-4, rtol=0)
    # stacked (L, B, T, C) features and a mask without padding
    stacked = torch.stack(_text(dit_ref, slice(0, 2)))
    out2 = model(dit_ref["bits"][:2], dit_ref["timestep"][:2], stacked, torch.ones(2, 7)).sample
    torch.testing.assert_close(out2, dit_ref["output_no_padding"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_ar_forward_matches_official(dit_ref):
    ref = load_file(PARITY / "ar_reference.safetensors")
    model = convert_component(PARITY / "ar.pt", "ar_transformer", dtype=torch.float32)
    out = model(dit_ref["bits"][:, :7], _text(dit_ref), dit_ref["text_mask"]).sample
    torch.testing.assert_close(out, ref["output"], atol=1e-4, rtol=0)
    split = model(None, _text(dit_ref), dit_ref["text_mask"]).sample
    torch.testing.assert_close(split, ref["output_split_only"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_ar_kv_cache_equals_full_forward(dit_ref):
    model = convert_component(PARITY / "ar.pt", "ar_transformer", dtype=torch.float32)
    bits, text, mask = dit_ref["bits"], _text(dit_ref), dit_ref["text_mask"]
    full = model(bits, text, mask).sample  # (3, 9, 16): split + 8 tokens
    text_kv = model.prepare_text_kv(text, mask)
    cache = model.allocate_kv_cache(3)
    steps = [model(None, text_kv=text_kv, kv_cache=cache).sample]
    for i in range(bits.shape[1]):
        steps.append(model(bits[:, i : i + 1], text_kv=text_kv, kv_cache=cache).sample)
    incremental = torch.cat(steps, dim=1)
    assert cache.length == 9
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)
    # several tokens at once after a prefix
    cache = model.allocate_kv_cache(3)
    first = model(bits[:, :3], text_kv=text_kv, kv_cache=cache).sample
    rest = model(bits[:, 3:], text_kv=text_kv, kv_cache=cache).sample
    torch.testing.assert_close(torch.cat([first, rest], 1), full, atol=1e-5, rtol=0)


def test_generator_config_matches_fixture():
    cfg = json.loads((PARITY / "generator_config.json").read_text())
    model = convert_component(PARITY / "diffusion.pt", "transformer")
    assert model.config.attention_head_dim == cfg["attention_head_dim"]
    assert model.config.num_attention_heads == cfg["num_attention_heads"]
    assert model.config.text_embed_dim == cfg["text_cond_dim"]
    assert model.dtype == torch.bfloat16  # weights keep the checkpoint's dtype unless asked
