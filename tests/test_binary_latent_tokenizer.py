"""BinaryLatentTokenizer (and its BinaryQuantizer): encoding, decoding at every size, training-time sampling and
gradients, architecture switches and input checks. Save/load, gradient checkpointing, reduced precision and the
paper-size preset are in test_model_contract.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import gen, make_bits, make_images, tiny_tokenizer

from diffusers_bit import BinaryLatentTokenizer, BinaryQuantizer
from diffusers_bit.models.binary_latent_tokenizer import ConvPixelHead, LinearPixelHead
from diffusers_bit.models.resampling import DCDownBlock, LinearDownBlock
from diffusers_bit.presets import load_preset_config

# ----------------------------------------------------------------------------------------------------------------------
# Binary quantizer
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_quantizer_sampling_follows_tempered_sigmoid():
    quantizer = BinaryQuantizer(dim=8, bits_per_token=4)
    features = torch.randn(1, 3, 8, generator=gen(0)).repeat(4000, 1, 1)
    logits = quantizer.proj(features[:1])
    hard = quantizer(features[:1])
    assert torch.equal(hard.bits, (logits > 0).float())
    for temperature in (1.0, 0.5):
        out = quantizer(features, sample=True, temperature=temperature, generator=gen(1))
        expected = torch.sigmoid(logits / temperature)[0]
        std = (expected * (1 - expected) / 4000).sqrt()
        assert ((out.bits.mean(0) - expected).abs() <= 4 * std + 1e-6).all()
        torch.testing.assert_close(out.code_loss, (torch.sigmoid(logits) * (1 - torch.sigmoid(logits))).mean())
    # embeddings are the sum of the embeddings of the set bits
    bits = torch.tensor([[[1.0, 0.0, 1.0, 0.0]]])
    torch.testing.assert_close(quantizer.embed_bits(bits)[0, 0], quantizer.embed[0] + quantizer.embed[2])


# ----------------------------------------------------------------------------------------------------------------------
# Binary latent tokenizer
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("size", [64, 96, 128])
def test_tokenizer_encode_eval(size):
    tok = tiny_tokenizer()
    images = make_images(2, size)
    out = tok.encode(images)
    assert out.bits.shape == (2, 16, 16) and out.logits.shape == (2, 16, 16)
    assert set(out.bits.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.bits, (out.logits > 0).float())
    again = tok.encode(images, generator=gen(5))
    assert torch.equal(again.bits, out.bits)
    torch.testing.assert_close(again.logits, out.logits, atol=0, rtol=0)
    # rows are encoded independently
    torch.testing.assert_close(tok.encode(images[1:]).logits, out.logits[1:], atol=1e-5, rtol=0)
    bits, logits, code_loss = tok.encode(images, return_dict=False)
    assert torch.equal(bits, out.bits) and code_loss.ndim == 0


@torch.no_grad()
def test_tokenizer_decode_every_supported_size():
    tok = tiny_tokenizer()
    bits = tok.encode(make_images(2, 64)).bits
    for size in (64, 96, 128):
        images = tok.decode(bits, size, size).sample
        assert images.shape == (2, 3, size, size)
        assert torch.isfinite(images).all()
    assert tok.decode(bits).sample.shape == (2, 3, 128, 128)  # default: largest supported size
    assert tok.decode(bits, 64, 128).sample.shape == (2, 3, 64, 128)
    (images,) = tok.decode(bits, 96, 96, return_dict=False)
    assert images.shape == (2, 3, 96, 96)
    # the output depends on the bits, and rows are decoded independently
    flipped = bits.clone()
    flipped[0, :4] = 1 - flipped[0, :4]
    out, out_flipped = tok.decode(bits, 64, 64).sample, tok.decode(flipped, 64, 64).sample
    assert (out[0] - out_flipped[0]).abs().max() > 1e-3
    torch.testing.assert_close(out[1], out_flipped[1], atol=1e-5, rtol=0)
    # bits in any dtype
    torch.testing.assert_close(tok.decode(bits.bool(), 64, 64).sample, out, atol=0, rtol=0)


@torch.no_grad()
def test_tokenizer_rectangular_images():
    tok = tiny_tokenizer()
    out = tok.encode(make_images(1, 64, 96))
    assert out.bits.shape == (1, 16, 16)
    recon = tok(make_images(1, 64, 96)).sample
    assert recon.shape == (1, 3, 64, 96)


@torch.no_grad()
def test_tokenizer_training_encode_samples():
    tok = tiny_tokenizer().train()
    images = make_images(2, 64)
    eval_bits = tok.eval().encode(images).bits
    tok.train()
    a = tok.encode(images, generator=gen(1))
    b = tok.encode(images, generator=gen(1))
    c = tok.encode(images, generator=gen(2))
    assert torch.equal(a.bits, b.bits)
    assert not torch.equal(a.bits, c.bits)
    assert set(a.bits.unique().tolist()) <= {0.0, 1.0}
    # the logits do not depend on sampling
    torch.testing.assert_close(a.logits, c.logits, atol=0, rtol=0)
    # sample=False forces thresholding in training; sample=True forces sampling in eval
    assert torch.equal(tok.encode(images, sample=False).bits, eval_bits)
    tok.eval()
    assert torch.equal(tok.encode(images, sample=True, generator=gen(1)).bits, a.bits)


@torch.no_grad()
def test_tokenizer_temperature_zero_in_training_is_deterministic():
    tok = tiny_tokenizer()
    images = make_images(2, 64)
    eval_bits = tok.encode(images).bits
    tok.train()
    a = tok.encode(images, temperature=0, generator=gen(1)).bits
    b = tok.encode(images, temperature=0, generator=gen(2)).bits
    assert torch.equal(a, b)
    assert torch.equal(a, eval_bits)
    assert torch.equal(tok(images, temperature=0.0, generator=gen(3)).bits, eval_bits)


def _assert_encoder_gets_gradient(tok, images):
    tok.train()
    tok.zero_grad()
    out = tok(images, generator=gen(0))
    assert out.sample.shape == images.shape
    # reconstruction loss only: the encoder can only be reached through the straight-through bits
    F.mse_loss(out.sample, images).backward()
    for name in (
        "encoder.patch_embed.weight",
        "encoder.latent_tokens",
        "encoder.blocks.0.attn.to_q.weight",
        "quantizer.proj.weight",
        "quantizer.embed",
        "decoder.proj_in.weight",
    ):
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and grad.abs().max() > 0, name
    return out


def test_tokenizer_forward_trains_encoder_straight_through():
    tok = tiny_tokenizer()
    images = make_images(2, 64)
    out = _assert_encoder_gets_gradient(tok, images)
    with torch.no_grad():
        enc = tok.encode(images, generator=gen(0))
    assert torch.equal(out.bits, enc.bits)  # forward samples the same bits as encode with the same generator
    p = torch.sigmoid(enc.logits)
    torch.testing.assert_close(out.code_loss, (p * (1 - p)).mean(), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(enc.code_loss, (p * (1 - p)).mean(), atol=1e-7, rtol=1e-6)


def test_tokenizer_forward_reconstructs_at_requested_size():
    tok = tiny_tokenizer()
    with torch.no_grad():
        out = tok(make_images(2, 64), height=128, width=96)
        bits = tok.encode(make_images(2, 64)).bits
        expected = tok.decode(bits, 128, 96).sample
    assert out.sample.shape == (2, 3, 128, 96)
    assert torch.equal(out.bits, bits)
    torch.testing.assert_close(out.sample, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "overrides, down_cls, head_cls",
    [
        ({"resample_type": "linear"}, LinearDownBlock, LinearPixelHead),
        ({"pixel_head_type": "conv"}, DCDownBlock, ConvPixelHead),
        ({"resample_type": "linear", "pixel_head_type": "conv"}, LinearDownBlock, ConvPixelHead),
    ],
)
def test_tokenizer_variants(overrides, down_cls, head_cls):
    tok = tiny_tokenizer(**overrides)
    assert isinstance(tok.encoder.downsamplers[0], down_cls)
    assert isinstance(tok.pixel_head, head_cls)
    with torch.no_grad():
        bits = tok.encode(make_images(2, 96)).bits
        assert bits.shape == (2, 16, 16)
        for size in (64, 96, 128):
            assert tok.decode(bits, size, size).sample.shape == (2, 3, size, size)
    _assert_encoder_gets_gradient(tok, make_images(2, 64))


def test_tokenizer_training_switches_default_to_the_released_architecture():
    tok = tiny_tokenizer()
    assert tok.config.rope_layout == "interleaved"
    assert tok.config.position_embedding_type is None and tok.config.latent_index_embedding is False
    assert tok.decoder.latent_index_embedding is None
    assert not any("latent_index" in name for name, _ in tok.named_parameters())


def test_tokenizer_training_switches_change_the_model_and_decode_at_every_size():
    images = make_images(2, 64)
    base = tiny_tokenizer()
    switched = tiny_tokenizer(rope_layout="half_split", position_embedding_type="sincos", latent_index_embedding=True)
    state = switched.state_dict()
    assert state["decoder.latent_index_embedding"].shape == (1, 16, 64)
    missing, unexpected = base.load_state_dict(state, strict=False)
    assert unexpected == ["decoder.latent_index_embedding"] and not missing
    with torch.no_grad():
        bits = switched.encode(images).bits
        assert not torch.equal(bits, base.encode(images).bits)  # the image tokens carry a position embedding
        for size in (64, 96, 128):
            assert torch.isfinite(switched.decode(bits, size, size).sample).all()
        # every switch reaches the output on its own
        reference = switched.decode(bits, 64, 64).sample
        for overrides in (
            {"rope_layout": "interleaved"},
            {"position_embedding_type": None},
            {"latent_index_embedding": False},
        ):
            other = tiny_tokenizer(**{**dict(switched.config), **overrides})
            other.load_state_dict(state, strict=False)
            assert not torch.allclose(other.decode(bits, 64, 64).sample, reference, atol=1e-4), overrides
        # the mask tokens differ per position from the first block on: the decoder output varies across the grid
        # even for a constant latent
        flat = switched.decode(torch.zeros_like(bits), 64, 64).sample
        assert flat.std(dim=(2, 3)).min() > 1e-3
    _assert_encoder_gets_gradient(switched.train(), images)


def test_tokenizer_bad_config():
    with pytest.raises(ValueError, match="resample_type"):
        tiny_tokenizer(resample_type="bicubic")
    with pytest.raises(ValueError, match="pixel_head_type"):
        tiny_tokenizer(pixel_head_type="mlp")
    with pytest.raises(ValueError, match="axes_dims_rope"):
        tiny_tokenizer(axes_dims_rope=[4, 14, 12])
    with pytest.raises(ValueError, match="encoder_downsample_blocks"):
        tiny_tokenizer(encoder_downsample_blocks=[2])
    with pytest.raises(ValueError, match="decoder_upsample_blocks"):
        tiny_tokenizer(decoder_upsample_blocks=[-1])
    with pytest.raises(ValueError, match="rope_position_dtype"):
        tiny_tokenizer(rope_position_dtype="float64")
    with pytest.raises(ValueError, match="rope_layout"):
        tiny_tokenizer(rope_layout="flux")
    with pytest.raises(ValueError, match="position_embedding_type"):
        tiny_tokenizer(position_embedding_type="learned")
    with pytest.raises(ValueError, match="latent_index_embedding"):
        tiny_tokenizer(latent_index_embedding="yes")


@pytest.mark.parametrize(
    "images, error, match",
    [
        (make_images(1, 70, 64), ValueError, r"`images height`=70"),
        (make_images(1, 64, 70), ValueError, r"`images width`=70"),
        (make_images(1, 160), ValueError, r"`images height`=160 is not supported.*\[64, 96, 128\]"),
        (torch.zeros(1, 4, 64, 64), ValueError, r"`images` must have 3 channels"),
        (torch.zeros(3, 64, 64), ValueError, r"`images` must be"),
        (torch.zeros(1, 1, 3, 64, 64), ValueError, r"`images` must be"),
        (np.zeros((1, 3, 64, 64)), ValueError, r"`images` must be"),
    ],
)
def test_tokenizer_rejects_bad_images(images, error, match):
    tok = tiny_tokenizer()
    with pytest.raises(error, match=match):
        tok.encode(images)
    with pytest.raises(error, match=match):
        tok(images)


def test_tokenizer_without_size_list_checks_patch_grid():
    tok = tiny_tokenizer(sample_sizes=None)
    assert tok.supported_sizes is None
    with pytest.raises(ValueError, match=r"`images height`=70 must be a positive multiple of 32"):
        tok.encode(make_images(1, 70, 64))
    with pytest.raises(ValueError, match=r"`images width`=48"):  # multiple of the patch but not of patch x stride
        tok.encode(make_images(1, 64, 48))
    with pytest.raises(ValueError, match=r"`height`=32"):  # too few patches for the token resampling
        tok.decode(make_bits(1), 32, 64)
    with torch.no_grad():
        assert tok.encode(make_images(1, 160)).bits.shape == (1, 16, 16)  # any side on the grid is fine here
        assert tok.decode(make_bits(1), 160, 192).sample.shape == (1, 3, 160, 192)


@pytest.mark.parametrize(
    "bits, kwargs, error, match",
    [
        (torch.zeros(1, 16, 8), {}, ValueError, r"`bits` must have shape \(batch, 16, 16\)"),
        (torch.zeros(1, 8, 16), {}, ValueError, r"`bits` must have shape"),
        (torch.zeros(16, 16), {}, ValueError, r"`bits` must have shape"),
        (torch.full((1, 16, 16), 0.5), {}, ValueError, r"`bits` must contain only 0 and 1"),
        (torch.full((1, 16, 16), 2.0), {}, ValueError, r"`bits` must contain only 0 and 1"),
        (np.zeros((1, 16, 16)), {}, TypeError, r"`bits` must be a torch.Tensor"),
        (torch.zeros(1, 16, 16), {"height": 80}, ValueError, r"`height`=80 .*supported sizes: \[64, 96, 128\]"),
        (
            torch.zeros(1, 16, 16),
            {"height": 64, "width": 100},
            ValueError,
            r"`width`=100 .*supported sizes: \[64, 96, 128\]",
        ),
        (torch.zeros(1, 16, 16), {"height": "64"}, TypeError, r"`height` must be an int"),
        (torch.zeros(1, 16, 16), {"height": 64.0}, TypeError, r"`height` must be an int"),
    ],
)
def test_tokenizer_rejects_bad_decode_input(bits, kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_tokenizer().decode(bits, **kwargs)


def test_tokenizer_forward_rejects_unsupported_output_size():
    with pytest.raises(ValueError, match=r"`height`=112"):
        tiny_tokenizer()(make_images(1, 64), height=112)


def test_decode_with_one_side_is_square():
    tok = BinaryLatentTokenizer.from_config(load_preset_config("tiny", "image_tokenizer")).eval()
    bits = torch.zeros(1, 16, 16)
    with torch.no_grad():
        assert tok.decode(bits, height=64).sample.shape[-2:] == (64, 64)
        assert tok.decode(bits, width=96).sample.shape[-2:] == (96, 96)
        assert tok.decode(bits).sample.shape[-2:] == (128, 128)
