"""Models: bit packing, the binary latent tokenizer and its layers, BinaryDiT, BinaryARTransformer, text routing,
dtypes and the paper-size presets (on the meta device only)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusers_bit import (
    BinaryARTransformer,
    BinaryDiT,
    BinaryLatentTokenizer,
    BinaryQuantizer,
    TextKV,
    pack_bits,
    text_layer_indices,
    unpack_bits,
)
from diffusers_bit.models.binary_latent_tokenizer import ConvPixelHead, LinearPixelHead
from diffusers_bit.models.layers import DCDownBlock, DCUpBlock, LinearDownBlock, LinearUpBlock
from diffusers_bit.presets import load_preset_config


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tokenizer(**overrides) -> BinaryLatentTokenizer:
    config = {**load_preset_config("tiny", "image_tokenizer"), **overrides}
    return BinaryLatentTokenizer.from_config(config).eval()


def _randomize_position_embeddings(model):
    """The blocks' position embeddings start at zero; make them matter, as in a trained model."""
    with torch.no_grad():
        for block in model.transformer_blocks:
            block.pos_embed.normal_(0.0, 0.5)
    return model


def _dit(**overrides) -> BinaryDiT:
    model = BinaryDiT.from_config({**load_preset_config("tiny", "transformer"), **overrides})
    return _randomize_position_embeddings(model).eval()


def _ar(**overrides) -> BinaryARTransformer:
    model = BinaryARTransformer.from_config({**load_preset_config("tiny", "ar_transformer"), **overrides})
    return _randomize_position_embeddings(model).eval()


def _images(batch=2, height=64, width=None, seed=0) -> torch.Tensor:
    width = height if width is None else width
    return torch.rand(batch, 3, height, width, generator=_gen(seed)) * 2 - 1


def _bits(batch=2, tokens=16, channels=16, seed=0) -> torch.Tensor:
    return torch.randint(0, 2, (batch, tokens, channels), generator=_gen(seed)).float()


def _text(batch=2, length=5, layers=2, width=32, seed=0) -> list:
    g = _gen(seed)
    return [torch.randn(batch, length, width, generator=g) for _ in range(layers)]


LEFT_PADDED_MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])


# ----------------------------------------------------------------------------------------------------------------------
# Bit packing
# ----------------------------------------------------------------------------------------------------------------------


def test_pack_unpack_round_trip_and_msb_first():
    bits = torch.randint(0, 2, (2, 128, 64), generator=_gen(0)).float()
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 1024)
    expected = np.packbits(bits.numpy().astype(np.uint8).reshape(2, -1), axis=-1)
    assert np.array_equal(packed.numpy(), expected)
    unpacked = unpack_bits(packed)
    assert unpacked.dtype == torch.float32 and unpacked.shape == (2, 128, 64)
    assert torch.equal(unpacked, bits)


def test_pack_bits_hand_values_and_other_dtypes():
    bits = torch.tensor([[[1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 1, 0]]])
    assert pack_bits(bits).tolist() == [[128, 1, 0b10100110]]
    assert pack_bits(bits.bool()).tolist() == [[128, 1, 166]]
    assert pack_bits(bits.to(torch.bfloat16)).tolist() == [[128, 1, 166]]
    small = unpack_bits(torch.tensor([[128, 1, 166]], dtype=torch.uint8), num_tokens=3, bits_per_token=8)
    assert torch.equal(small, bits.float())
    # any split of the bits over tokens, as long as the total is a multiple of 8
    odd = torch.randint(0, 2, (3, 4, 6), generator=_gen(1))
    assert torch.equal(unpack_bits(pack_bits(odd), num_tokens=4, bits_per_token=6), odd.float())


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((1, 8, 8), 0.5), "0 and 1"),
        (torch.full((1, 8, 8), 2.0), "0 and 1"),
        (torch.full((1, 8, 8), -1.0), "0 and 1"),
        (torch.full((1, 8, 8), float("nan")), "0 and 1"),
        (torch.zeros(8, 8), "shape"),
        (torch.zeros(1, 2, 8, 8), "shape"),
        (torch.zeros(1, 3, 5), "multiple of 8"),
    ],
)
def test_pack_bits_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        pack_bits(bad)


@pytest.mark.parametrize(
    "bad, kwargs, match",
    [
        (torch.zeros(2, 1024), {}, "uint8"),
        (torch.zeros(2, 1024, dtype=torch.int32), {}, "uint8"),
        (torch.zeros(2, 1023, dtype=torch.uint8), {}, "shape"),
        (torch.zeros(2, 8, 128, dtype=torch.uint8), {}, "shape"),
        (torch.zeros(1024, dtype=torch.uint8), {}, "shape"),
        (torch.zeros(2, 1024, dtype=torch.uint8), {"num_tokens": 16, "bits_per_token": 16}, "shape"),
    ],
)
def test_unpack_bits_rejects_bad_input(bad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        unpack_bits(bad, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Token down/up-sampling layers
# ----------------------------------------------------------------------------------------------------------------------

# the paper's 2x2 group order: (row offset di, column offset dj) of the k-th member of the concatenation
GROUP_ORDER = [(0, 0), (1, 0), (0, 1), (1, 1)]


def _grid_tokens(height, width, channels, seed=0):
    return torch.randn(1, height * width, channels, generator=_gen(seed))


@torch.no_grad()
def test_linear_down_block_token_order():
    c, h, w = 3, 4, 6
    tokens = _grid_tokens(h, w, c)
    x = tokens.view(h, w, c)
    block = LinearDownBlock(c)
    for k, (di, dj) in enumerate(GROUP_ORDER):
        weight = torch.zeros(c, 4 * c)
        weight[:, k * c : (k + 1) * c] = torch.eye(c)  # read the k-th member of the concatenation
        block.proj.weight.copy_(weight)
        out = block(tokens, h, w).view(h // 2, w // 2, c)
        for i in range(h // 2):
            for j in range(w // 2):
                torch.testing.assert_close(out[i, j], x[2 * i + di, 2 * j + dj], atol=0, rtol=0)


@torch.no_grad()
def test_linear_up_block_token_order():
    c, h, w = 3, 2, 3
    tokens = _grid_tokens(h, w, c, seed=1)
    x = tokens.view(h, w, c)
    block = LinearUpBlock(c)
    # chunk k of the 4C output is (k + 1) * x
    block.proj.weight.copy_(torch.cat([(k + 1) * torch.eye(c) for k in range(4)], dim=0))
    out = block(tokens, h, w)
    assert out.shape == (1, 4 * h * w, c)
    out = out.view(2 * h, 2 * w, c)
    for k, (di, dj) in enumerate(GROUP_ORDER):
        for i in range(h):
            for j in range(w):
                torch.testing.assert_close(out[2 * i + di, 2 * j + dj], (k + 1) * x[i, j], atol=1e-6, rtol=0)


@torch.no_grad()
def test_dc_down_block_shortcut_is_average_pooling():
    c, h, w = 3, 4, 6
    tokens = _grid_tokens(h, w, c, seed=2)
    x = tokens.view(h, w, c)
    block = DCDownBlock(c)
    block.conv.weight.zero_()
    block.conv.bias.zero_()
    out = block(tokens, h, w)
    assert out.shape == (1, (h // 2) * (w // 2), c)
    out = out.view(h // 2, w // 2, c)
    for i in range(h // 2):
        for j in range(w // 2):
            expected = (x[2 * i, 2 * j] + x[2 * i + 1, 2 * j] + x[2 * i, 2 * j + 1] + x[2 * i + 1, 2 * j + 1]) / 4
            torch.testing.assert_close(out[i, j], expected, atol=1e-6, rtol=0)
    # the conv branch is added on top
    block.conv.bias.fill_(1.0)
    torch.testing.assert_close(block(tokens, h, w).view(h // 2, w // 2, c), out + 1, atol=1e-6, rtol=0)


@torch.no_grad()
def test_dc_up_block_shortcut_is_nearest_neighbour():
    c, h, w = 3, 2, 3
    tokens = _grid_tokens(h, w, c, seed=3)
    x = tokens.view(h, w, c)
    block = DCUpBlock(c)
    block.conv.weight.zero_()
    block.conv.bias.zero_()
    out = block(tokens, h, w)
    assert out.shape == (1, 4 * h * w, c)
    out = out.view(2 * h, 2 * w, c)
    for r in range(2 * h):
        for col in range(2 * w):
            torch.testing.assert_close(out[r, col], x[r // 2, col // 2], atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Binary quantizer
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_quantizer_sampling_follows_tempered_sigmoid():
    quantizer = BinaryQuantizer(dim=8, bits_per_token=4)
    features = torch.randn(1, 3, 8, generator=_gen(0)).repeat(4000, 1, 1)
    logits = quantizer.proj(features[:1])
    hard = quantizer(features[:1])
    assert torch.equal(hard.bits, (logits > 0).float())
    for temperature in (1.0, 0.5):
        out = quantizer(features, sample=True, temperature=temperature, generator=_gen(1))
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
    tok = _tokenizer()
    images = _images(2, size)
    out = tok.encode(images)
    assert out.bits.shape == (2, 16, 16) and out.logits.shape == (2, 16, 16)
    assert set(out.bits.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.bits, (out.logits > 0).float())
    again = tok.encode(images, generator=_gen(5))
    assert torch.equal(again.bits, out.bits)
    torch.testing.assert_close(again.logits, out.logits, atol=0, rtol=0)
    # rows are encoded independently
    torch.testing.assert_close(tok.encode(images[1:]).logits, out.logits[1:], atol=1e-5, rtol=0)
    bits, logits, code_loss = tok.encode(images, return_dict=False)
    assert torch.equal(bits, out.bits) and code_loss.ndim == 0


@torch.no_grad()
def test_tokenizer_decode_every_supported_size():
    tok = _tokenizer()
    bits = tok.encode(_images(2, 64)).bits
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
    tok = _tokenizer()
    out = tok.encode(_images(1, 64, 96))
    assert out.bits.shape == (1, 16, 16)
    recon = tok(_images(1, 64, 96)).sample
    assert recon.shape == (1, 3, 64, 96)


@torch.no_grad()
def test_tokenizer_training_encode_samples():
    tok = _tokenizer().train()
    images = _images(2, 64)
    eval_bits = tok.eval().encode(images).bits
    tok.train()
    a = tok.encode(images, generator=_gen(1))
    b = tok.encode(images, generator=_gen(1))
    c = tok.encode(images, generator=_gen(2))
    assert torch.equal(a.bits, b.bits)
    assert not torch.equal(a.bits, c.bits)
    assert set(a.bits.unique().tolist()) <= {0.0, 1.0}
    # the logits do not depend on sampling
    torch.testing.assert_close(a.logits, c.logits, atol=0, rtol=0)
    # sample=False forces thresholding in training; sample=True forces sampling in eval
    assert torch.equal(tok.encode(images, sample=False).bits, eval_bits)
    tok.eval()
    assert torch.equal(tok.encode(images, sample=True, generator=_gen(1)).bits, a.bits)


@torch.no_grad()
def test_tokenizer_temperature_zero_in_training_is_deterministic():
    tok = _tokenizer()
    images = _images(2, 64)
    eval_bits = tok.encode(images).bits
    tok.train()
    a = tok.encode(images, temperature=0, generator=_gen(1)).bits
    b = tok.encode(images, temperature=0, generator=_gen(2)).bits
    assert torch.equal(a, b)
    assert torch.equal(a, eval_bits)
    assert torch.equal(tok(images, temperature=0.0, generator=_gen(3)).bits, eval_bits)


def _assert_encoder_gets_gradient(tok, images):
    tok.train()
    tok.zero_grad()
    out = tok(images, generator=_gen(0))
    assert out.sample.shape == images.shape
    # reconstruction loss only: the encoder can only be reached through the straight-through bits
    F.mse_loss(out.sample, images).backward()
    for name in ("encoder.patch_embed.weight", "encoder.latent_tokens", "encoder.blocks.0.attn.to_q.weight",
                 "quantizer.proj.weight", "quantizer.embed", "decoder.proj_in.weight"):  # fmt: skip
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and grad.abs().max() > 0, name
    return out


def test_tokenizer_forward_trains_encoder_straight_through():
    tok = _tokenizer()
    images = _images(2, 64)
    out = _assert_encoder_gets_gradient(tok, images)
    with torch.no_grad():
        enc = tok.encode(images, generator=_gen(0))
    assert torch.equal(out.bits, enc.bits)  # forward samples the same bits as encode with the same generator
    p = torch.sigmoid(enc.logits)
    torch.testing.assert_close(out.code_loss, (p * (1 - p)).mean(), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(enc.code_loss, (p * (1 - p)).mean(), atol=1e-7, rtol=1e-6)


def test_tokenizer_forward_reconstructs_at_requested_size():
    tok = _tokenizer()
    with torch.no_grad():
        out = tok(_images(2, 64), height=128, width=96)
        bits = tok.encode(_images(2, 64)).bits
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
    tok = _tokenizer(**overrides)
    assert isinstance(tok.encoder.downsamplers[0], down_cls)
    assert isinstance(tok.pixel_head, head_cls)
    with torch.no_grad():
        bits = tok.encode(_images(2, 96)).bits
        assert bits.shape == (2, 16, 16)
        for size in (64, 96, 128):
            assert tok.decode(bits, size, size).sample.shape == (2, 3, size, size)
    _assert_encoder_gets_gradient(tok, _images(2, 64))


def test_rope_half_split_layout_is_a_true_rotation():
    from diffusers_bit.models.layers import apply_rotary_emb, rope_cos_sin

    axes = [4, 6, 6]
    positions = torch.tensor([[0.0, 0, 0], [3, 1, 2], [5, 2.5, 7], [8, 3.5, 9]])
    q, k = torch.randn(2, 1, 1, 16, generator=_gen(0)).unbind(0)

    def rotated(layout, pos):
        cos, sin = rope_cos_sin(pos, axes, layout=layout)
        return apply_rotary_emb(q.expand(1, 1, len(pos), 16), cos, sin), apply_rotary_emb(
            k.expand(1, 1, len(pos), 16), cos, sin)

    # a rotation keeps norms and makes q.k depend only on the position difference
    q_rot, k_rot = rotated("half_split", positions)
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 4), atol=1e-5, rtol=0)
    shifted_q, shifted_k = rotated("half_split", positions + torch.tensor([2.0, -1.0, 4.0]))
    dot = (q_rot[..., 1, :] * k_rot[..., 2, :]).sum()
    torch.testing.assert_close(dot, (shifted_q[..., 1, :] * shifted_k[..., 2, :]).sum(), atol=1e-5, rtol=0)
    # the released layout is not a rotation (norms change): that is why the switch exists
    q_old, _ = rotated("interleaved", positions)
    assert (q_old.norm(dim=-1) - q.norm(dim=-1)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="layout"):
        rope_cos_sin(positions, axes, layout="flux")


def test_sincos_2d_embedding_values():
    from diffusers_bit.models.layers import sincos_2d_embedding

    emb = sincos_2d_embedding(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0, 5.0]), 8)
    assert emb.shape == (6, 8)
    # token (row 1, col 2) = rows 2.0, cols 5.0; frequencies 1 and 1/100 per axis
    expected = torch.tensor([math.sin(2.0), math.sin(0.02), math.cos(2.0), math.cos(0.02),
                             math.sin(5.0), math.sin(0.05), math.cos(5.0), math.cos(0.05)])  # fmt: skip
    torch.testing.assert_close(emb[5], expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_embedding(torch.zeros(1), torch.zeros(1), 6)


def test_tokenizer_training_switches_default_to_the_released_architecture():
    tok = _tokenizer()
    assert tok.config.rope_layout == "interleaved"
    assert tok.config.position_embedding_type is None and tok.config.latent_index_embedding is False
    assert tok.decoder.latent_index_embedding is None
    assert not any("latent_index" in name for name, _ in tok.named_parameters())


def test_tokenizer_training_switches_change_the_model_and_decode_at_every_size():
    images = _images(2, 64)
    base = _tokenizer()
    switched = _tokenizer(rope_layout="half_split", position_embedding_type="sincos", latent_index_embedding=True)
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
        for overrides in ({"rope_layout": "interleaved"}, {"position_embedding_type": None},
                          {"latent_index_embedding": False}):  # fmt: skip
            other = _tokenizer(**{**dict(switched.config), **overrides})
            other.load_state_dict(state, strict=False)
            assert not torch.allclose(other.decode(bits, 64, 64).sample, reference, atol=1e-4), overrides
        # the mask tokens differ per position from the first block on: the decoder output varies across the grid
        # even for a constant latent
        flat = switched.decode(torch.zeros_like(bits), 64, 64).sample
        assert flat.std(dim=(2, 3)).min() > 1e-3
    _assert_encoder_gets_gradient(switched.train(), images)


def test_tokenizer_gradient_checkpointing_same_gradients():
    images = _images(1, 64)

    def loss_and_grads(tok):
        tok.zero_grad()
        loss = F.mse_loss(tok(images, temperature=0.0).sample, images)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in tok.named_parameters() if p.grad is not None}

    tok = _tokenizer().train()
    ref_loss, ref_grads = loss_and_grads(tok)
    calls = []

    def checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    tok.enable_gradient_checkpointing(checkpoint)
    loss, grads = loss_and_grads(tok)
    assert len(calls) == 4  # 2 encoder + 2 decoder blocks went through checkpointing
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_tokenizer_bad_config():
    with pytest.raises(ValueError, match="resample_type"):
        _tokenizer(resample_type="bicubic")
    with pytest.raises(ValueError, match="pixel_head_type"):
        _tokenizer(pixel_head_type="mlp")
    with pytest.raises(ValueError, match="axes_dims_rope"):
        _tokenizer(axes_dims_rope=[4, 14, 12])
    with pytest.raises(ValueError, match="encoder_downsample_blocks"):
        _tokenizer(encoder_downsample_blocks=[2])
    with pytest.raises(ValueError, match="decoder_upsample_blocks"):
        _tokenizer(decoder_upsample_blocks=[-1])
    with pytest.raises(ValueError, match="rope_position_dtype"):
        _tokenizer(rope_position_dtype="float64")
    with pytest.raises(ValueError, match="rope_layout"):
        _tokenizer(rope_layout="flux")
    with pytest.raises(ValueError, match="position_embedding_type"):
        _tokenizer(position_embedding_type="learned")
    with pytest.raises(ValueError, match="latent_index_embedding"):
        _tokenizer(latent_index_embedding="yes")


@pytest.mark.parametrize(
    "images, error, match",
    [
        (_images(1, 70, 64), ValueError, r"`images height`=70"),
        (_images(1, 64, 70), ValueError, r"`images width`=70"),
        (_images(1, 160), ValueError, r"`images height`=160 is not supported.*\[64, 96, 128\]"),
        (torch.zeros(1, 4, 64, 64), ValueError, r"`images` must have 3 channels"),
        (torch.zeros(3, 64, 64), ValueError, r"`images` must be"),
        (torch.zeros(1, 1, 3, 64, 64), ValueError, r"`images` must be"),
        (np.zeros((1, 3, 64, 64)), ValueError, r"`images` must be"),
    ],
)
def test_tokenizer_rejects_bad_images(images, error, match):
    tok = _tokenizer()
    with pytest.raises(error, match=match):
        tok.encode(images)
    with pytest.raises(error, match=match):
        tok(images)


def test_tokenizer_without_size_list_checks_patch_grid():
    tok = _tokenizer(sample_sizes=None)
    assert tok.supported_sizes is None
    with pytest.raises(ValueError, match=r"`images height`=70 must be a positive multiple of 32"):
        tok.encode(_images(1, 70, 64))
    with pytest.raises(ValueError, match=r"`images width`=48"):  # multiple of the patch but not of patch x stride
        tok.encode(_images(1, 64, 48))
    with pytest.raises(ValueError, match=r"`height`=32"):  # too few patches for the token resampling
        tok.decode(_bits(1), 32, 64)
    with torch.no_grad():
        assert tok.encode(_images(1, 160)).bits.shape == (1, 16, 16)  # any side on the grid is fine here
        assert tok.decode(_bits(1), 160, 192).sample.shape == (1, 3, 160, 192)


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
        (torch.zeros(1, 16, 16), {"height": 64, "width": 100}, ValueError, r"`width`=100 .*supported sizes: \[64, 96, 128\]"),
        (torch.zeros(1, 16, 16), {"height": "64"}, TypeError, r"`height` must be an int"),
        (torch.zeros(1, 16, 16), {"height": 64.0}, TypeError, r"`height` must be an int"),
    ],
)
def test_tokenizer_rejects_bad_decode_input(bits, kwargs, error, match):
    with pytest.raises(error, match=match):
        _tokenizer().decode(bits, **kwargs)


def test_tokenizer_forward_rejects_unsupported_output_size():
    with pytest.raises(ValueError, match=r"`height`=112"):
        _tokenizer()(_images(1, 64), height=112)


# ----------------------------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------------------------


def _assert_same_config(a, b):
    public = lambda cfg: {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}  # noqa
    assert public(a.config) == public(b.config)


@torch.no_grad()
def test_tokenizer_save_load_round_trip(tmp_path):
    tok = _tokenizer(resample_type="linear", sample_sizes=[64, 128])
    tok.save_pretrained(tmp_path)
    loaded = BinaryLatentTokenizer.from_pretrained(tmp_path).eval()
    _assert_same_config(tok, loaded)
    assert loaded.config.resample_type == "linear" and list(loaded.config.sample_sizes) == [64, 128]
    images = _images(2, 64)
    enc, enc2 = tok.encode(images), loaded.encode(images)
    assert torch.equal(enc.bits, enc2.bits)
    torch.testing.assert_close(enc2.logits, enc.logits, atol=0, rtol=0)
    torch.testing.assert_close(loaded.decode(enc.bits, 128, 128).sample, tok.decode(enc.bits, 128, 128).sample,
                               atol=0, rtol=0)  # fmt: skip


@torch.no_grad()
def test_dit_save_load_round_trip(tmp_path):
    model = _dit(text_num_layers=3)
    model.save_pretrained(tmp_path)
    loaded = BinaryDiT.from_pretrained(tmp_path).eval()
    _assert_same_config(model, loaded)
    assert loaded.config.text_num_layers == 3
    bits, text = _bits(), _text(layers=3)
    torch.testing.assert_close(loaded(bits, 0.4, text).sample, model(bits, 0.4, text).sample, atol=0, rtol=0)


@torch.no_grad()
def test_ar_save_load_round_trip(tmp_path):
    model = _ar()
    model.save_pretrained(tmp_path)
    loaded = BinaryARTransformer.from_pretrained(tmp_path).eval()
    _assert_same_config(model, loaded)
    bits, text = _bits(), _text()
    torch.testing.assert_close(loaded(bits, text).sample, model(bits, text).sample, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Text routing
# ----------------------------------------------------------------------------------------------------------------------


def test_text_layer_indices_rule():
    assert text_layer_indices(16, 16) == list(range(16))
    assert text_layer_indices(2, 2) == [0, 1]
    assert text_layer_indices(8, 16) == [1, 3, 5, 7, 9, 11, 13, 15]
    many = text_layer_indices(32, 16)
    assert many == [i // 2 for i in range(32)]
    assert many[:6] == [0, 0, 1, 1, 2, 2]
    assert text_layer_indices(3, 16) == [4, 10, 15]  # round(16/3)=5 -> 4, round(32/3)=11 -> 10, 16 -> 15
    assert text_layer_indices(1, 5) == [4]
    assert text_layer_indices(2, 4) == [1, 3]
    for blocks, layers in [(1, 1), (3, 16), (5, 3), (7, 24), (24, 7), (16, 22)]:
        idx = text_layer_indices(blocks, layers)
        assert len(idx) == blocks
        assert idx[-1] == layers - 1  # the last block reads the last layer
        assert idx == sorted(idx) and all(0 <= i < layers for i in idx)


@pytest.mark.parametrize("blocks, layers", [(0, 16), (16, 0), (-1, 4), (4, -2)])
def test_text_layer_indices_rejects_bad_args(blocks, layers):
    with pytest.raises(ValueError):
        text_layer_indices(blocks, layers)


@torch.no_grad()
def test_dit_reads_the_routed_text_layers():
    model = _dit(text_num_layers=4)
    assert model.text_layer_map == [1, 3]
    bits, text = _bits(), _text(layers=4)
    ref = model(bits, 0.5, text).sample
    for layer in range(4):
        perturbed = list(text)
        perturbed[layer] = text[layer] + 1.0
        out = model(bits, 0.5, perturbed).sample
        if layer in (1, 3):
            assert (out - ref).abs().max() > 1e-3, layer
        else:
            torch.testing.assert_close(out, ref, atol=0, rtol=0, msg=f"layer {layer} should be unused")


# ----------------------------------------------------------------------------------------------------------------------
# BinaryDiT
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_dit_forward_shape_and_text_kv_path():
    model = _dit()
    bits, text = _bits(3), _text(3)
    out = model(bits, torch.tensor([1.0, 0.5, 0.1]), text, LEFT_PADDED_MASK)
    assert out.sample.shape == (3, 16, 16) and out.sample.dtype == torch.float32
    assert torch.isfinite(out.sample).all()
    text_kv = model.prepare_text_kv(text, LEFT_PADDED_MASK)
    assert isinstance(text_kv, TextKV) and len(text_kv.keys) == 2
    assert text_kv.keys[0].shape == (3, 2, 5, 32) and text_kv.batch_size == 3 and text_kv.length == 5
    out_kv = model(bits, torch.tensor([1.0, 0.5, 0.1]), text_kv=text_kv).sample
    torch.testing.assert_close(out_kv, out.sample, atol=1e-6, rtol=0)
    # stacked (L, B, T, C) features
    out_stacked = model(bits, torch.tensor([1.0, 0.5, 0.1]), torch.stack(text), LEFT_PADDED_MASK).sample
    torch.testing.assert_close(out_stacked, out.sample, atol=1e-6, rtol=0)
    # repeat_interleave of text_kv == repeating the prompts
    rep = text_kv.repeat_interleave(2)
    out_rep = model(bits.repeat_interleave(2, 0), 0.3, text_kv=rep).sample
    ref_rep = model(bits.repeat_interleave(2, 0), 0.3, [t.repeat_interleave(2, 0) for t in text],
                    LEFT_PADDED_MASK.repeat_interleave(2, 0)).sample  # fmt: skip
    torch.testing.assert_close(out_rep, ref_rep, atol=1e-6, rtol=0)


@torch.no_grad()
def test_dit_padded_text_tokens_have_no_influence():
    model = _dit()
    bits, text = _bits(3), _text(3)
    ref = model(bits, 0.5, text, LEFT_PADDED_MASK).sample
    # change the features at padded positions (row 0: positions 0-1, row 2: positions 0-2) in every layer
    changed = [t.clone() for t in text]
    for t in changed:
        t[0, :2] = torch.randn(2, 32) * 10
        t[2, :3] = torch.randn(3, 32) * 10
    torch.testing.assert_close(model(bits, 0.5, changed, LEFT_PADDED_MASK).sample, ref, atol=1e-6, rtol=0)
    # ... whereas changing a real token changes that row only
    changed = [t.clone() for t in text]
    changed[0][0, 3] += 3.0
    out = model(bits, 0.5, changed, LEFT_PADDED_MASK).sample
    assert (out[0] - ref[0]).abs().max() > 1e-3
    torch.testing.assert_close(out[1:], ref[1:], atol=1e-6, rtol=0)
    # and the mask matters: without it the padded features are read
    assert (model(bits, 0.5, text).sample[0] - ref[0]).abs().max() > 1e-3
    # a mask of ones is the same as no mask
    torch.testing.assert_close(model(bits, 0.5, text, torch.ones(3, 5)).sample, model(bits, 0.5, text).sample,
                               atol=1e-6, rtol=0)  # fmt: skip


@torch.no_grad()
def test_dit_fully_padded_prompt_row():
    model = _dit()
    bits, text = _bits(2), _text(2)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    out = model(bits, 0.5, text, mask).sample
    assert torch.isfinite(out).all()
    other = _text(2, seed=9)
    out_other = model(bits, 0.5, other, mask).sample
    torch.testing.assert_close(out_other[0], out[0], atol=1e-6, rtol=0)  # row 0 ignores its text entirely
    assert (out_other[1] - out[1]).abs().max() > 1e-3


@torch.no_grad()
def test_dit_timestep_forms():
    model = _dit()
    bits, text = _bits(3), _text(3)
    as_float = model(bits, 0.3, text).sample
    as_tensor = model(bits, torch.full((3,), 0.3), text).sample
    as_scalar = model(bits, torch.tensor(0.3), text).sample
    torch.testing.assert_close(as_tensor, as_float, atol=1e-6, rtol=0)
    torch.testing.assert_close(as_scalar, as_float, atol=1e-6, rtol=0)
    assert (model(bits, 0.9, text).sample - as_float).abs().max() > 1e-3  # the time matters
    # per-row times: row b is the same as running it alone
    times = torch.tensor([1.0, 0.5, 0.05])
    per_row = model(bits, times, text).sample
    for b in range(3):
        alone = model(bits[b : b + 1], float(times[b]), [t[b : b + 1] for t in text]).sample
        torch.testing.assert_close(per_row[b : b + 1], alone, atol=1e-5, rtol=0)
    (tup,) = model(bits, 0.3, text, return_dict=False)
    torch.testing.assert_close(tup, as_float, atol=0, rtol=0)


def test_dit_zero_init_modulation_starts_every_block_as_the_identity():
    text = _text(2)
    bits = _bits(2)
    authors = _dit()
    zero = _dit(zero_init_modulation=True)
    assert authors.config.zero_init_modulation is False
    with torch.no_grad():
        assert authors(bits, 0.5, encoder_hidden_states=text).sample.abs().max() > 0.1  # Xavier everywhere
        out = zero(bits, 0.5, encoder_hidden_states=text).sample
        assert torch.equal(out, torch.zeros_like(out))  # flip logit 0: loss ln 2
        hidden = zero.x_embedder(bits)
        temb = zero.time_embed(torch.full((2, 1), 0.5))
        block = zero.transformer_blocks[0]
        torch.testing.assert_close(block(hidden, temb, text[0], None), hidden)
    # only the initial weights differ: loading weights gives the same model either way
    zero.load_state_dict(authors.state_dict())
    torch.testing.assert_close(zero(bits, 0.5, encoder_hidden_states=text).sample,
                               authors(bits, 0.5, encoder_hidden_states=text).sample)  # fmt: skip


def test_dit_gradient_checkpointing_same_loss_and_gradients():
    bits, text = _bits(2), _text(2)
    mask = LEFT_PADDED_MASK[:2]

    def loss_and_grads(model):
        model.zero_grad()
        loss = model(bits, torch.tensor([0.3, 0.8]), text, mask).sample.pow(2).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = _dit().train()
    ref_loss, ref_grads = loss_and_grads(model)
    calls = []

    def checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(checkpoint)
    assert model.gradient_checkpointing
    loss, grads = loss_and_grads(model)
    assert calls == ["BinaryDiTBlock", "BinaryDiTBlock"]
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=0, msg=name)
    # no checkpointing under no_grad
    with torch.no_grad():
        model(bits, 0.3, text)
    assert len(calls) == 2


def _dit_call(**changes):
    bits, text, mask = _bits(2), _text(2), torch.ones(2, 5)
    kwargs = {"hidden_states": bits, "timestep": 0.5, "encoder_hidden_states": text, "encoder_attention_mask": mask}
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_states": _bits(2, tokens=15)}, r"`hidden_states` must hold exactly 16 tokens"),
        ({"hidden_states": _bits(2, tokens=17)}, r"`hidden_states` must hold exactly 16 tokens"),
        ({"hidden_states": _bits(2, channels=8)}, r"`hidden_states` must have shape \(batch, tokens, 16\)"),
        ({"hidden_states": torch.zeros(2, 256)}, r"`hidden_states` must have shape"),
        ({"encoder_hidden_states": _text(2, layers=1)}, r"`encoder_hidden_states` must hold one hidden state per"),
        ({"encoder_hidden_states": _text(2, layers=3)}, r"`encoder_hidden_states` must hold one hidden state per"),
        ({"encoder_hidden_states": _text(2, width=24)}, r"`encoder_hidden_states` must have shape"),
        ({"encoder_attention_mask": torch.ones(2, 6)}, r"`encoder_attention_mask` must have shape"),
        ({"encoder_attention_mask": torch.ones(1, 5)}, r"`encoder_attention_mask` must have shape"),
        ({"encoder_attention_mask": torch.ones(10)}, r"`encoder_attention_mask` must have shape"),
        ({"encoder_hidden_states": _text(3)}, r"`encoder_hidden_states` has batch 3"),
        ({"encoder_hidden_states": None}, r"`encoder_hidden_states` is required"),
    ],
)
def test_dit_rejects_bad_input(changes, match):
    kwargs = _dit_call(**changes)
    if changes.get("encoder_hidden_states") is not None and "encoder_attention_mask" not in changes:
        kwargs["encoder_attention_mask"] = None
    with pytest.raises(ValueError, match=match):
        _dit()(**kwargs)


def test_dit_rejects_text_kv_batch_mismatch():
    model = _dit()
    text_kv = model.prepare_text_kv(_text(3))
    with pytest.raises(ValueError, match=r"`text_kv` has batch 3"):
        model(_bits(2), 0.5, text_kv=text_kv)
    with pytest.raises(ValueError, match=r"`encoder_hidden_states` must hold one hidden state per"):
        model.prepare_text_kv(_text(3, layers=1))


@pytest.mark.parametrize("bad_layer", [_text(2, layers=1, width=24)[0], _text(3, layers=1)[0]])
def test_dit_rejects_bad_non_first_text_layer(bad_layer):
    text = _text(2)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        _dit()(_bits(2), 0.5, [text[0], bad_layer])


# ----------------------------------------------------------------------------------------------------------------------
# BinaryARTransformer
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_ar_forward_shapes():
    model = _ar()
    text = _text(3)
    assert model(_bits(3), text, LEFT_PADDED_MASK).sample.shape == (3, 17, 16)
    assert model(_bits(3, tokens=5), text).sample.shape == (3, 6, 16)
    assert model(None, text).sample.shape == (3, 1, 16)  # split token alone
    assert model(None, text_kv=model.prepare_text_kv(text), batch_size=3).sample.shape == (3, 1, 16)


@torch.no_grad()
def test_ar_is_causal():
    model = _ar()
    bits, text = _bits(2), _text(2)
    mask = LEFT_PADDED_MASK[:2]
    ref = model(bits, text, mask).sample  # position p (0 = split) sees the split token and tokens 1..p
    for j in (0, 5, 15):  # hidden_states[:, j] is token j + 1, at sequence position j + 1
        changed = bits.clone()
        changed[:, j] = 1 - changed[:, j]
        out = model(changed, text, mask).sample
        torch.testing.assert_close(out[:, : j + 1], ref[:, : j + 1], atol=1e-6, rtol=0, msg=f"token {j + 1}")
        assert (out[:, j + 1] - ref[:, j + 1]).abs().max() > 1e-4
    # a prefix pass equals the start of the full pass
    torch.testing.assert_close(model(bits[:, :6], text, mask).sample, ref[:, :7], atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("mask", [None, LEFT_PADDED_MASK])
def test_ar_kv_cache_matches_full_forward(mask):
    model = _ar()
    bits, text = _bits(3), _text(3)
    full = model(bits, text, mask).sample
    text_kv = model.prepare_text_kv(text, mask)
    cache = model.allocate_kv_cache(3)
    assert cache.length == 0
    steps = [model(None, text_kv=text_kv, kv_cache=cache).sample]
    assert cache.length == 1
    for i in range(16):
        steps.append(model(bits[:, i : i + 1], text_kv=text_kv, kv_cache=cache).sample)
        assert cache.length == i + 2
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    # chunks of several tokens, raw text features instead of text_kv
    cache = model.allocate_kv_cache(3)
    chunks = [model(bits[:, :4], text, mask, kv_cache=cache).sample]
    chunks.append(model(bits[:, 4:9], text, mask, kv_cache=cache).sample)
    chunks.append(model(bits[:, 9:], text, mask, kv_cache=cache).sample)
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=0)


def test_ar_rejects_bad_input():
    model = _ar()
    text = _text(2)
    with pytest.raises(ValueError, match=r"`hidden_states` must hold at most 16 tokens, got 17"):
        model(_bits(2, tokens=17), text)
    with pytest.raises(ValueError, match=r"`hidden_states` must have shape \(batch, tokens, 16\)"):
        model(_bits(2, channels=15), text)
    cache = model.allocate_kv_cache(2)
    with torch.no_grad():
        model(_bits(2, tokens=10), text, kv_cache=cache)
    assert cache.length == 11
    with pytest.raises(ValueError, match=r"at most 6 tokens, got 7"):
        model(_bits(2, tokens=7), text, kv_cache=cache)
    with pytest.raises(ValueError, match=r"`hidden_states` is required"):
        model(None, text, kv_cache=cache)
    assert cache.length == 11  # failed calls do not touch the cache
    with pytest.raises(ValueError, match="give `hidden_states`"):
        model()
    with pytest.raises(ValueError, match=r"`text_kv` has batch 3"):
        model(_bits(2), text_kv=model.prepare_text_kv(_text(3)))


# ----------------------------------------------------------------------------------------------------------------------
# Reduced precision
# ----------------------------------------------------------------------------------------------------------------------


def _relative_error(out, ref):
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_generators_run_in_reduced_precision(dtype):
    bits, text, mask = _bits(3), _text(3), LEFT_PADDED_MASK
    times = torch.tensor([1.0, 0.5, 0.1])
    for model, call in (
        (_dit(), lambda m, cast: m(cast(bits), times, [cast(t) for t in text], mask).sample),
        (_ar(), lambda m, cast: m(cast(bits), [cast(t) for t in text], mask).sample),
    ):
        ref = call(model, lambda x: x)
        low = copy.deepcopy(model).to(dtype)
        out = call(low, lambda x: x.to(dtype))
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        assert _relative_error(out, ref) < 0.1
    # the AR KV cache in reduced precision
    ar = copy.deepcopy(_ar()).to(dtype)
    cache = ar.allocate_kv_cache(3)
    assert cache.layers[0].keys.dtype == dtype
    out = ar(bits.to(dtype), [t.to(dtype) for t in text], mask, kv_cache=cache).sample
    assert torch.isfinite(out).all() and out.shape == (3, 17, 16)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_tokenizer_runs_in_reduced_precision(dtype):
    tok = _tokenizer()
    images = _images(2, 64)
    ref = tok.encode(images)
    ref_images = tok.decode(ref.bits, 96, 96).sample
    low = copy.deepcopy(tok).to(dtype)
    enc = low.encode(images)
    assert enc.logits.dtype == dtype and torch.isfinite(enc.logits).all()
    assert _relative_error(enc.logits, ref.logits) < 0.1
    assert (enc.bits != ref.bits).float().mean().item() < 0.05
    dec = low.decode(ref.bits, 96, 96).sample
    assert dec.dtype == dtype and torch.isfinite(dec).all()
    assert _relative_error(dec, ref_images) < 0.1


# ----------------------------------------------------------------------------------------------------------------------
# Paper-size presets (meta device only)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "component, cls, expected",
    [
        ("image_tokenizer", BinaryLatentTokenizer, 427_754_560),
        ("transformer", BinaryDiT, 1_292_517_440),
        ("ar_transformer", BinaryARTransformer, 877_176_896),
    ],
)
def test_paper_presets_have_published_sizes(component, cls, expected):
    with torch.device("meta"):
        model = cls.from_config(load_preset_config("instella-t2i", component))
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)
    assert sum(p.numel() for p in params) == expected
    if component == "image_tokenizer":
        assert model.encoder.latent_tokens.shape == (1, 128, 768)
        assert model.quantizer.proj.weight.shape == (64, 768)
        assert model.decoder.mask_token.shape == (1, 1, 1024)
    else:
        assert model.x_embedder.weight.shape == (2048, 64)
        assert len(model.transformer_blocks) == 16
        assert model.transformer_blocks[0].context_embedder.weight.shape == (2048, 2048)
        assert model.text_layer_map == list(range(16))


def test_dit_timestep_must_match_the_batch():
    model = BinaryDiT.from_config(load_preset_config("tiny", "transformer")).eval()
    bits = torch.zeros(2, 16, 16)
    feats = [torch.randn(2, 3, 32) for _ in range(2)]
    with pytest.raises(ValueError, match="`timestep`"):
        model(bits, torch.tensor([0.1, 0.2, 0.3]), feats)


def test_decode_with_one_side_is_square():
    tok = BinaryLatentTokenizer.from_config(load_preset_config("tiny", "image_tokenizer")).eval()
    bits = torch.zeros(1, 16, 16)
    with torch.no_grad():
        assert tok.decode(bits, height=64).sample.shape[-2:] == (64, 64)
        assert tok.decode(bits, width=96).sample.shape[-2:] == (96, 96)
        assert tok.decode(bits).sample.shape[-2:] == (128, 128)


def test_pack_bits_empty_batch():
    packed = pack_bits(torch.zeros(0, 128, 64))
    assert packed.shape == (0, 1024) and packed.dtype == torch.uint8
    assert unpack_bits(packed).shape == (0, 128, 64)


def test_nan_in_padded_text_positions_does_not_leak():
    dit = _dit()
    feats = [torch.randn(2, 5, 32) for _ in range(2)]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    poisoned = [f.clone() for f in feats]
    for f in poisoned:
        f[0, :2] = float("nan")
    bits = torch.randint(0, 2, (2, 16, 16)).float()
    with torch.no_grad():
        clean = dit(bits, 0.5, feats, mask).sample
        raw = dit(bits, 0.5, poisoned, mask).sample
        cached = dit(bits, 0.5, text_kv=dit.prepare_text_kv(poisoned, mask)).sample
    assert torch.isfinite(raw).all() and torch.isfinite(cached).all()
    torch.testing.assert_close(raw, clean)
    torch.testing.assert_close(cached, clean)
