"""Tiny models and seeded inputs shared by the model tests (tokenizer, BinaryDiT, BinaryARTransformer, contract)."""

import torch

from diffusers_bit import BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer
from diffusers_bit.presets import load_preset_config

# (batch 3, 5 text tokens): row 0 has 2 padded tokens, row 1 none, row 2 three
LEFT_PADDED_MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_tokenizer(**overrides) -> BinaryLatentTokenizer:
    """The `tiny` preset tokenizer (16 tokens x 16 bits, sizes 64/96/128), in eval mode."""
    config = {**load_preset_config("tiny", "image_tokenizer"), **overrides}
    return BinaryLatentTokenizer.from_config(config).eval()


def randomize_position_embeddings(model):
    """The blocks' position embeddings start at zero; make them matter, as in a trained model."""
    with torch.no_grad():
        for block in model.transformer_blocks:
            block.pos_embed.normal_(0.0, 0.5)
    return model


def tiny_dit(**overrides) -> BinaryDiT:
    """The `tiny` preset BinaryDiT (2 blocks, 2 heads of 32, text width 32, 16 tokens x 16 bits), in eval mode."""
    model = BinaryDiT.from_config({**load_preset_config("tiny", "transformer"), **overrides})
    return randomize_position_embeddings(model).eval()


def tiny_ar(**overrides) -> BinaryARTransformer:
    """The `tiny` preset BinaryARTransformer (same sizes as [`tiny_dit`]), in eval mode."""
    model = BinaryARTransformer.from_config({**load_preset_config("tiny", "ar_transformer"), **overrides})
    return randomize_position_embeddings(model).eval()


def make_images(batch=2, height=64, width=None, seed=0) -> torch.Tensor:
    """Uniform noise images in [-1, 1], `(batch, 3, height, width)`."""
    width = height if width is None else width
    return torch.rand(batch, 3, height, width, generator=gen(seed)) * 2 - 1


def make_bits(batch=2, tokens=16, channels=16, seed=0) -> torch.Tensor:
    """Random bits `(batch, tokens, channels)`, float32."""
    return torch.randint(0, 2, (batch, tokens, channels), generator=gen(seed)).float()


def make_text(batch=2, length=5, layers=2, width=32, seed=0) -> list:
    """`layers` text-encoder hidden states `(batch, length, width)`."""
    g = gen(seed)
    return [torch.randn(batch, length, width, generator=g) for _ in range(layers)]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """`max |out - ref| / max |ref|`, `out` cast to float32."""
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def assert_same_config(a, b) -> None:
    """The public config entries (not `_`-prefixed ones) of two models are equal, tuples compared as lists."""
    public = lambda cfg: {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}  # noqa
    assert public(a.config) == public(b.config)
