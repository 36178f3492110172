"""The contract every model of the package keeps, checked once for all three (BinaryLatentTokenizer, BinaryDiT,
BinaryARTransformer): a save/load round trip gives the same model, gradient checkpointing changes neither the loss
nor the gradients, reduced precision stays close to float32, and the paper-size presets have the published sizes
(built on the meta device only)."""

import copy
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from model_helpers import (
    LEFT_PADDED_MASK,
    assert_same_config,
    make_bits,
    make_images,
    make_text,
    relative_error,
    tiny_ar,
    tiny_dit,
    tiny_tokenizer,
)

from diffusers_bit import BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer
from diffusers_bit.presets import load_preset_config

IMAGES = make_images(2, 64)
DECODE_BITS = make_bits(2, seed=4)
BITS = make_bits(3)
TIMES = torch.tensor([1.0, 0.5, 0.1])


def _text(model, rows=3):
    return make_text(rows, layers=model.config.text_num_layers or model.config.num_layers)


def _tokenizer_outputs(model, cast):
    # float32 images and bits whatever the model's dtype: the tokenizer casts its inputs itself
    encoded = model.encode(IMAGES)
    return {"bits": encoded.bits, "logits": encoded.logits, "images": model.decode(DECODE_BITS, 128, 128).sample}


def _tokenizer_loss(model):
    images = IMAGES[:1]
    return F.mse_loss(model(images, temperature=0.0).sample, images)


def _dit_outputs(model, cast):
    return {"sample": model(cast(BITS), TIMES, [cast(t) for t in _text(model)], LEFT_PADDED_MASK).sample}


def _dit_loss(model):
    return model(BITS[:2], torch.tensor([0.3, 0.8]), _text(model, 2), LEFT_PADDED_MASK[:2]).sample.pow(2).mean()


def _ar_outputs(model, cast):
    return {"sample": model(cast(BITS), [cast(t) for t in _text(model)], LEFT_PADDED_MASK).sample}


def _ar_loss(model):
    return model(BITS[:2], _text(model, 2), LEFT_PADDED_MASK[:2]).sample.pow(2).mean()


@dataclass
class ModelCase:
    r"""How the contract tests drive one model.

    Attributes:
        build: `(**config_overrides) -> model`, a tiny model in eval mode.
        outputs: `(model, cast) -> {name: tensor}`, deterministic outputs for fixed inputs; `cast` maps the float
            inputs that must match the model's dtype to it. An output named `"bits"` holds hard bits.
        loss: `model -> scalar` training loss.
        checkpointed: Class names of the blocks that go through gradient checkpointing, in call order.
        round_trip_config: Non-default config entries saved and loaded back.
        grad_rtol: Relative tolerance of the gradients with and without checkpointing.
    """

    build: Callable
    outputs: Callable
    loss: Callable
    checkpointed: list
    round_trip_config: dict = field(default_factory=dict)
    grad_rtol: float = 0.0


CASES = {
    "tokenizer": ModelCase(
        tiny_tokenizer,
        _tokenizer_outputs,
        _tokenizer_loss,
        ["TokenizerBlock"] * 4,
        {"resample_type": "linear", "sample_sizes": [64, 128]},
        grad_rtol=1e-4,
    ),
    "dit": ModelCase(tiny_dit, _dit_outputs, _dit_loss, ["BinaryDiTBlock"] * 2, {"text_num_layers": 3}),
    "ar": ModelCase(tiny_ar, _ar_outputs, _ar_loss, ["BinaryARBlock"] * 2, {"text_num_layers": 3}),
}


def _unchanged(x):
    return x


@torch.no_grad()
@pytest.mark.parametrize("name", CASES)
def test_save_load_round_trip(name, tmp_path):
    case = CASES[name]
    model = case.build(**case.round_trip_config)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert_same_config(model, loaded)
    for key, value in case.round_trip_config.items():
        saved = loaded.config[key]
        assert (list(saved) if isinstance(saved, (list, tuple)) else saved) == value, key
    expected, got = case.outputs(model, _unchanged), case.outputs(loaded, _unchanged)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=key)


@pytest.mark.parametrize("name", CASES)
def test_gradient_checkpointing_same_loss_and_gradients(name):
    case = CASES[name]

    def loss_and_grads(model):
        model.zero_grad()
        loss = case.loss(model)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = case.build().train()
    ref_loss, ref_grads = loss_and_grads(model)
    calls = []

    def checkpoint(module, *args):
        calls.append(type(module).__name__)
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(checkpoint)
    assert model.is_gradient_checkpointing
    loss, grads = loss_and_grads(model)
    assert calls == case.checkpointed
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert grads.keys() == ref_grads.keys() and len(grads) == len(list(model.parameters()))
    for key in grads:
        torch.testing.assert_close(grads[key], ref_grads[key], atol=1e-5, rtol=case.grad_rtol, msg=key)
    # no checkpointing under no_grad
    with torch.no_grad():
        case.loss(model)
    assert len(calls) == len(case.checkpointed)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", CASES)
def test_runs_in_reduced_precision(name, dtype):
    case = CASES[name]
    model = case.build()
    reference = case.outputs(model, _unchanged)
    low = copy.deepcopy(model).to(dtype)
    outputs = case.outputs(low, lambda x: x.to(dtype))
    for key, out in outputs.items():
        if key == "bits":  # thresholded logits: a few may flip
            assert (out != reference[key]).float().mean().item() < 0.05
            continue
        assert out.dtype == dtype, key
        assert torch.isfinite(out).all(), key
        assert relative_error(out, reference[key]) < 0.1, key


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
