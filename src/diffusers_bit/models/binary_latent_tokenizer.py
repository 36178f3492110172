# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""The 1D binary latent tokenizer of Instella-T2I ("BAE" in the authors' code).

A ViT encoder reads image patches together with learned latent tokens; the latent tokens are projected to bit
logits and binarised; a ViT decoder reads the bit embeddings together with mask tokens laid on the output grid and
regresses pixels. One latent decodes at every resolution the config lists (512/768/1024 for the paper model),
because the rotary positions of the image tokens are stretched to a fixed reference grid.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from ..utils.checks import StrictConfigMixin, check_finite
from ..utils.remote_code import RemoteCodeMixin
from ..utils.torch_utils import GeneratorType
from .attention import Attention, AttentionDispatchMixin
from .binary_quantizer import BinaryQuantizer
from .compilation import RegionalCompileMixin
from .embeddings import ROPE_LAYOUTS, rope_cos_sin, sincos_2d_embedding
from .feed_forward import SwiGLU
from .gradient_checkpointing import run_block
from .normalization import RMSNorm
from .resampling import RESAMPLE_BLOCKS

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
POSITION_EMBEDDING_TYPES = (None, "sincos")
IMAGE_RANGE_TOLERANCE = 1e-2  # resampling overshoot of images that were in [-1, 1]


@dataclass
class BinaryTokenizerEncoderOutput(BaseOutput):
    r"""
    Args:
        bits (`torch.Tensor` of shape `(B, num_latent_tokens, bits_per_token)`): Binary latent, values in {0, 1}.
        logits (`torch.Tensor` of the same shape): Bit logits before binarisation.
        code_loss (`torch.Tensor`, scalar): Entropy-like penalty `mean(p * (1 - p))` with `p = sigmoid(logits)`.
    """

    bits: torch.Tensor
    logits: Optional[torch.Tensor] = None
    code_loss: Optional[torch.Tensor] = None


@dataclass
class BinaryTokenizerDecoderOutput(BaseOutput):
    r"""
    Args:
        sample (`torch.Tensor` of shape `(B, 3, height, width)`): Decoded images, nominally in [-1, 1] (not clamped).
    """

    sample: torch.Tensor


@dataclass
class BinaryTokenizerOutput(BaseOutput):
    r"""
    Args:
        sample (`torch.Tensor` of shape `(B, 3, height, width)`): Reconstruction.
        bits (`torch.Tensor` of shape `(B, num_latent_tokens, bits_per_token)`): The (sampled) bits.
        code_loss (`torch.Tensor`, scalar): See [`BinaryTokenizerEncoderOutput`].
    """

    sample: torch.Tensor
    bits: Optional[torch.Tensor] = None
    code_loss: Optional[torch.Tensor] = None


class TokenizerBlock(nn.Module):
    r"""Pre-norm transformer block of the tokenizer: RMSNorm -> attention (q/k RMSNorm, RoPE, non-causal) ->
    residual -> RMSNorm -> SwiGLU -> residual. Tokens `(B, S, C)` -> `(B, S, C)`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, eps=eps)
        self.norm2 = RMSNorm(dim, eps=eps)
        self.ff = SwiGLU(dim, int(dim * mlp_ratio))

    def forward(self, hidden_states: torch.Tensor, rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.norm1(hidden_states), rotary_emb=rotary_emb)
        hidden_states = hidden_states + self.ff(self.norm2(hidden_states))
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states


def tokenizer_positions(
    num_latent_tokens: int, height: int, width: int, scale: Optional[float], device: torch.device
) -> torch.Tensor:
    r"""3-axis positions `(num_latent_tokens + height * width, 3)` of `[latent tokens; image grid]`.

    Latent token `i` sits at `(i, 0, 0)`; the image token at grid cell `(r, c)` sits at `(0, r, c)`, or, when a
    resolution `scale` is set, at `(0, r / (height - 1) * (scale - 1), c / (width - 1) * (scale - 1))` so that every
    grid spans the same range `[0, scale - 1]` whatever its resolution.
    """
    latent = torch.zeros(num_latent_tokens, 3)
    latent[:, 0] = torch.arange(num_latent_tokens)
    rows, cols = grid_coordinates(height, width, scale)
    image = torch.zeros(height, width, 3)
    image[..., 1] = rows[:, None]
    image[..., 2] = cols[None, :]
    return torch.cat([latent, image.reshape(-1, 3)], dim=0).to(device)


def grid_coordinates(height: int, width: int, scale: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Row and column coordinates `(height,)`, `(width,)` of a patch grid: raw indices, or, with a resolution
    `scale`, indices stretched to `[0, scale - 1]` so that every resolution spans the same range."""
    rows, cols = torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32)
    if scale is not None:
        rows = rows / max(height - 1, 1) * (scale - 1)
        cols = cols / max(width - 1, 1) * (scale - 1)
    return rows, cols


class _RotaryTower(nn.Module):
    """Shared machinery of the encoder and decoder towers: rotary tables and the block loop."""

    def __init__(self, num_blocks: int, dim: int, num_heads: int, mlp_ratio: float, eps: float, rope: dict):
        super().__init__()
        self.gradient_checkpointing = False
        self.blocks = nn.ModuleList([TokenizerBlock(dim, num_heads, mlp_ratio, eps) for _ in range(num_blocks)])
        self._rope = rope

    def rotary_emb(
        self, num_latent_tokens: int, height: int, width: int, scale: Optional[float], weight_dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.blocks[0].norm1.weight.device
        positions = tokenizer_positions(num_latent_tokens, height, width, scale, device)
        dtype = self._rope["position_dtype"]
        positions = positions.to(weight_dtype if dtype == "auto" else _DTYPES[dtype])
        return rope_cos_sin(positions, self._rope["axes_dim"], self._rope["theta"], self._rope["layout"])

    def grid_embedding(
        self, height: int, width: int, scale: Optional[float], dtype: torch.dtype
    ) -> Optional[torch.Tensor]:
        """The additive position embedding `(1, height * width, C)` of the image grid, or `None` when disabled."""
        if self._rope["position_embedding_type"] is None:
            return None
        rows, cols = grid_coordinates(height, width, scale)
        device = self.blocks[0].norm1.weight.device
        dim = self.blocks[0].norm1.weight.shape[0]
        return sincos_2d_embedding(rows.to(device), cols.to(device), dim)[None].to(dtype)


class BinaryLatentEncoder(_RotaryTower):
    r"""ViT encoder: patch embedding, learned latent tokens placed before the image tokens, transformer blocks with
    2x token downsampling after the listed blocks, RMSNorm and a linear projection of the latent tokens."""

    def __init__(
        self,
        in_channels: int,
        patch_size: int,
        num_latent_tokens: int,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        downsample_blocks: Sequence[int],
        resample_type: str,
        mlp_ratio: float,
        eps: float,
        rope: dict,
    ):
        dim = num_heads * head_dim
        super().__init__(num_layers, dim, num_heads, mlp_ratio, eps, rope)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.latent_tokens = nn.Parameter(torch.randn(1, num_latent_tokens, dim) * 0.02)
        self.downsample_blocks = list(downsample_blocks)
        self.downsamplers = nn.ModuleList([RESAMPLE_BLOCKS[resample_type][0](dim) for _ in self.downsample_blocks])
        self.norm_out = RMSNorm(dim, eps=eps)
        self.proj_out = nn.Linear(dim, dim)

    def forward(self, images: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
        """`images` `(B, 3, H, W)` -> latent token features `(B, num_latent_tokens, C)`."""
        grid = self.patch_embed(images.to(self.patch_embed.weight.dtype))
        height, width = grid.shape[-2:]
        num_latent = self.latent_tokens.shape[1]
        weight_dtype = self.patch_embed.weight.dtype
        image_tokens = grid.flatten(2).transpose(1, 2)
        position_embedding = self.grid_embedding(height, width, scale, weight_dtype)
        if position_embedding is not None:
            image_tokens = image_tokens + position_embedding
        hidden_states = torch.cat([self.latent_tokens.expand(grid.shape[0], -1, -1), image_tokens], dim=1)
        rotary_emb = self.rotary_emb(num_latent, height, width, scale, weight_dtype)
        for index in range(len(self.blocks)):
            hidden_states = run_block(self, self.blocks[index], hidden_states, rotary_emb)
            if index in self.downsample_blocks:
                down = self.downsamplers[self.downsample_blocks.index(index)]
                image_tokens = down(hidden_states[:, num_latent:], height, width)
                hidden_states = torch.cat([hidden_states[:, :num_latent], image_tokens], dim=1)
                height, width = height // 2, width // 2
                scale = None if scale is None else scale // 2
                rotary_emb = self.rotary_emb(num_latent, height, width, scale, weight_dtype)
        return self.proj_out(self.norm_out(hidden_states[:, :num_latent]))


class BinaryLatentDecoder(_RotaryTower):
    r"""ViT decoder: RMSNorm + linear input projection of the bit embeddings (plus an optional learned embedding
    of the latent index), one learned mask token replicated on the output grid at `1 / 2**len(upsample_blocks)`
    resolution (plus an optional fixed 2D position embedding), transformer blocks with 2x token upsampling after the
    listed blocks, and a final RMSNorm over the image tokens."""

    def __init__(
        self,
        in_dim: int,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        upsample_blocks: Sequence[int],
        resample_type: str,
        mlp_ratio: float,
        eps: float,
        rope: dict,
        num_latent_tokens: Optional[int] = None,
    ):
        dim = num_heads * head_dim
        super().__init__(num_layers, dim, num_heads, mlp_ratio, eps, rope)
        self.norm_in = RMSNorm(in_dim, eps=eps)
        self.proj_in = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.latent_index_embedding = None
        if num_latent_tokens is not None:
            self.latent_index_embedding = nn.Parameter(torch.randn(1, num_latent_tokens, dim) * 0.02)
        self.upsample_blocks = list(upsample_blocks)
        self.upsamplers = nn.ModuleList([RESAMPLE_BLOCKS[resample_type][1](dim) for _ in self.upsample_blocks])
        self.norm_out = RMSNorm(dim, eps=eps)

    def forward(self, latents: torch.Tensor, height: int, width: int, scale: Optional[float]) -> torch.Tensor:
        """`latents` `(B, L, C_enc)`, output grid `height x width` patches -> image tokens `(B, height*width, C)`."""
        latents = self.proj_in(self.norm_in(latents))
        if self.latent_index_embedding is not None:
            latents = latents + self.latent_index_embedding
        num_latent = latents.shape[1]
        factor = 2 ** len(self.upsample_blocks)
        height, width = height // factor, width // factor
        scale = None if scale is None else scale // factor
        weight_dtype = self.proj_in.weight.dtype
        mask_tokens = self.mask_token.expand(latents.shape[0], height * width, -1)
        position_embedding = self.grid_embedding(height, width, scale, weight_dtype)
        if position_embedding is not None:
            mask_tokens = mask_tokens + position_embedding
        hidden_states = torch.cat([latents, mask_tokens], dim=1)
        rotary_emb = self.rotary_emb(num_latent, height, width, scale, weight_dtype)
        for index in range(len(self.blocks)):
            hidden_states = run_block(self, self.blocks[index], hidden_states, rotary_emb)
            if index in self.upsample_blocks:
                up = self.upsamplers[self.upsample_blocks.index(index)]
                image_tokens = up(hidden_states[:, num_latent:], height, width)
                hidden_states = torch.cat([hidden_states[:, :num_latent], image_tokens], dim=1)
                height, width = height * 2, width * 2
                scale = None if scale is None else scale * 2
                rotary_emb = self.rotary_emb(num_latent, height, width, scale, weight_dtype)
        return self.norm_out(hidden_states[:, num_latent:])


class ConvPixelHead(nn.Module):
    r"""The paper's lightweight convolutional pixel head: `log2(patch_size)` stages of 2x transposed convolution,
    GroupNorm and ReLU, then a 3x3 convolution to RGB. Tokens `(B, h*w, C)` -> images `(B, out_channels, h*p, w*p)`.
    """

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        stages = int(math.log2(patch_size))
        layers, width = [], dim
        for stage in range(stages):
            out = max(dim >> (stage + 1), 32)
            layers += [nn.ConvTranspose2d(width, out, 2, stride=2), nn.GroupNorm(math.gcd(32, out), out), nn.ReLU()]
            width = out
        layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.layers(tokens.transpose(1, 2).unflatten(2, (height, width)))


class LinearPixelHead(nn.Module):
    r"""Linear pixel head of the released tokenizer: each token regresses its `p x p x out_channels` patch.
    Tokens `(B, h*w, C)` -> images `(B, out_channels, h*p, w*p)`."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.proj = nn.Linear(dim, patch_size * patch_size * out_channels)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        p = self.patch_size
        patches = self.proj(tokens).view(tokens.shape[0], height, width, p, p, self.out_channels)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], self.out_channels, height * p, width * p)


class BinaryLatentTokenizer(
    AttentionDispatchMixin, RegionalCompileMixin, RemoteCodeMixin, StrictConfigMixin, ModelMixin, ConfigMixin
):
    r"""1D binary latent tokenizer: an image becomes `num_latent_tokens` tokens of `bits_per_token` bits each (128 x
    64 bits = 1 KiB for the paper model) and decodes back at any resolution the config supports.

    The defaults are the released architecture (about 0.43B parameters).

    Parameters:
        in_channels (`int`, defaults to 3): Image channels.
        patch_size (`int`, defaults to 16): Pixel patch size of the encoder's patch embedding and the pixel head.
        num_latent_tokens (`int`, defaults to 128): Latent tokens per image.
        bits_per_token (`int`, defaults to 64): Bits per latent token.
        encoder_layers, encoder_num_heads, encoder_head_dim (`int`): Encoder depth, heads and head dim (12, 12, 64).
        encoder_downsample_blocks (`list[int]`, defaults to `[7]`): Encoder blocks (0-based) after which the image
            tokens are downsampled 2x.
        decoder_layers, decoder_num_heads, decoder_head_dim (`int`): Decoder depth, heads and head dim (16, 16, 64).
        decoder_upsample_blocks (`list[int]`, defaults to `[7]`): Decoder blocks after which image tokens upsample 2x.
        mlp_ratio (`float`, defaults to 4.0): SwiGLU hidden width over model width.
        norm_eps (`float`, defaults to 1e-6): Epsilon of every RMSNorm.
        axes_dims_rope (`list[int]`, defaults to `[8, 28, 28]`): Rotary channels for the (latent index, row, column)
            axes; must sum to both head dims.
        rope_theta (`float`, defaults to 10000.0): Rotary base.
        rope_reference_size (`int`, *optional*, defaults to 1024): Image size whose patch grid defines the rotary
            position range: grid indices are stretched to `[0, rope_reference_size / patch_size - 1]` at every
            resolution (the authors' `set_scale(1024)`). `None` uses raw grid indices.
        rope_position_dtype (`str`, defaults to `"auto"`): Dtype the rotary positions are rounded to before the
            sines and cosines. `"auto"` rounds to the weights' dtype, which is what the authors' code does (their
            released pipelines run the tokenizer in bfloat16, so positions like 2.032 become 2.031). `"bfloat16"`
            reproduces those bf16 positions in any weight dtype; `"float32"` never rounds.
        resample_type (`str`, defaults to `"dc"`): `"dc"` (conv + pooling shortcut, the released weights) or
            `"linear"` (the paper's linear 2x2 merge/split).
        pixel_head_type (`str`, defaults to `"linear"`): `"linear"` (released) or `"conv"` (the paper's light conv head).
        sample_sizes (`list[int]`, *optional*, defaults to `[512, 768, 1024]`): Image sides the tokenizer accepts and
            produces; `None` accepts any side divisible by the patch grid.
        quantizer_temperature (`float`, defaults to 0.1): Bernoulli temperature of the quantizer in training.
        rope_layout (`str`, defaults to `"interleaved"`): Layout of the rotary tables. `"interleaved"` is the
            released tokenizer's convention (Flux-style interleaved tables applied with the Llama half-split rule,
            which is not a true rotation: only a few channels per head then carry each axis cleanly). `"half_split"`
            lays the tables out so that the same rule is a true rotation; use it for models trained from scratch.
        position_embedding_type (`str`, *optional*): `None` (released: positions only through RoPE) or `"sincos"`: a
            fixed 2D sine/cosine embedding (MAE style) added to the encoder's patch tokens and to the decoder's mask
            tokens, on the same stretched grid coordinates as the rotary positions, so it is resolution-independent
            and one latent still decodes at every supported size. Why: at initialisation the decoder's mask tokens
            are identical and see position only through RoPE on normalised queries/keys, whose attention logits are
            ~N(0, 1); every output position then attends almost uniformly to the latent tokens, the values carry no
            position, and gradient descent settles on a per-image mean colour (the "mean image" plateau, ~17 dB on the
            shapes world) that small models trained on a CPU never leave. An additive position gives every mask token
            its own query from the first step.
        latent_index_embedding (`bool`, defaults to `False`): Add a learned embedding of the latent index to the
            latent tokens entering the decoder, so that the decoder can tell the bit groups apart before it has
            learnt to route them (the same symmetry as above, on the latent side). Together with
            `position_embedding_type="sincos"` this is what lets a small tokenizer leave the plateau; either alone
            does not (measured on the shapes world: both 19.8 dB at 800 steps, each alone about 18.4).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["TokenizerBlock"]
    _repeated_blocks = ["TokenizerBlock"]
    _skip_layerwise_casting_patterns = ["patch_embed", "norm", "quantizer", "pixel_head"]
    _optional_config_keys = ("rope_layout", "position_embedding_type", "latent_index_embedding")

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 16,
        num_latent_tokens: int = 128,
        bits_per_token: int = 64,
        encoder_layers: int = 12,
        encoder_num_heads: int = 12,
        encoder_head_dim: int = 64,
        encoder_downsample_blocks: Sequence[int] = (7,),
        decoder_layers: int = 16,
        decoder_num_heads: int = 16,
        decoder_head_dim: int = 64,
        decoder_upsample_blocks: Sequence[int] = (7,),
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        axes_dims_rope: Sequence[int] = (8, 28, 28),
        rope_theta: float = 10000.0,
        rope_reference_size: Optional[int] = 1024,
        rope_position_dtype: str = "auto",
        resample_type: str = "dc",
        pixel_head_type: str = "linear",
        sample_sizes: Optional[Sequence[int]] = (512, 768, 1024),
        quantizer_temperature: float = 0.1,
        rope_layout: str = "interleaved",
        position_embedding_type: Optional[str] = None,
        latent_index_embedding: bool = False,
    ):
        super().__init__()
        choices = {
            "rope_position_dtype": ("auto", *_DTYPES),
            "resample_type": tuple(RESAMPLE_BLOCKS),
            "pixel_head_type": ("linear", "conv"),
            "rope_layout": ROPE_LAYOUTS,
            "position_embedding_type": POSITION_EMBEDDING_TYPES,
        }
        for name, value in (
            ("rope_position_dtype", rope_position_dtype),
            ("resample_type", resample_type),
            ("pixel_head_type", pixel_head_type),
            ("rope_layout", rope_layout),
            ("position_embedding_type", position_embedding_type),
        ):
            if value not in choices[name]:
                raise ValueError(f"`{name}` must be one of {list(choices[name])}, got {value!r}")
        for name, heads in (("encoder_head_dim", encoder_head_dim), ("decoder_head_dim", decoder_head_dim)):
            if sum(axes_dims_rope) != heads:
                raise ValueError(f"`axes_dims_rope` {list(axes_dims_rope)} must sum to `{name}` ({heads})")
        if pixel_head_type == "conv" and patch_size & (patch_size - 1):
            raise ValueError(f"`pixel_head_type='conv'` needs a power-of-two `patch_size`, got {patch_size}")
        for name, blocks, depth in (
            ("encoder_downsample_blocks", encoder_downsample_blocks, encoder_layers),
            ("decoder_upsample_blocks", decoder_upsample_blocks, decoder_layers),
        ):
            if any(not 0 <= b < depth for b in blocks):
                raise ValueError(f"`{name}` must index blocks 0..{depth - 1}, got {list(blocks)}")

        if not isinstance(latent_index_embedding, bool):
            raise ValueError(f"`latent_index_embedding` must be true or false, got {latent_index_embedding!r}")
        rope = {
            "axes_dim": list(axes_dims_rope),
            "theta": rope_theta,
            "position_dtype": rope_position_dtype,
            "layout": rope_layout,
            "position_embedding_type": position_embedding_type,
        }
        encoder_dim = encoder_num_heads * encoder_head_dim
        decoder_dim = decoder_num_heads * decoder_head_dim
        self.encoder = BinaryLatentEncoder(
            in_channels,
            patch_size,
            num_latent_tokens,
            encoder_layers,
            encoder_num_heads,
            encoder_head_dim,
            encoder_downsample_blocks,
            resample_type,
            mlp_ratio,
            norm_eps,
            rope,
        )
        self.quantizer = BinaryQuantizer(encoder_dim, bits_per_token)
        self.decoder = BinaryLatentDecoder(
            encoder_dim,
            decoder_layers,
            decoder_num_heads,
            decoder_head_dim,
            decoder_upsample_blocks,
            resample_type,
            mlp_ratio,
            norm_eps,
            rope,
            num_latent_tokens if latent_index_embedding else None,
        )
        head_cls = LinearPixelHead if pixel_head_type == "linear" else ConvPixelHead
        self.pixel_head = head_cls(decoder_dim, patch_size, in_channels)

    # ------------------------------------------------------------------------------------------------------------------
    @property
    def rope_scale(self) -> Optional[float]:
        """Patch-grid extent the rotary positions are stretched to (`rope_reference_size / patch_size`)."""
        size = self.config.rope_reference_size
        return None if size is None else size / self.config.patch_size

    @property
    def supported_sizes(self) -> Optional[list[int]]:
        """Image sides accepted by `encode` and produced by `decode` (`None`: any side the patch grid allows)."""
        return None if self.config.sample_sizes is None else list(self.config.sample_sizes)

    @property
    def default_size(self) -> int:
        """The largest supported side (the default decode resolution)."""
        sizes = self.supported_sizes
        return max(sizes) if sizes else (self.config.rope_reference_size or 512)

    def check_size(self, name: str, value: int, stride: int) -> None:
        """Raise a `ValueError` naming `name` if `value` is not a side this tokenizer supports."""
        sizes = self.supported_sizes
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
        if sizes is not None and value not in sizes:
            raise ValueError(f"`{name}`={value} is not supported by this tokenizer; supported sizes: {sizes}")
        step = self.config.patch_size * stride
        if value <= 0 or value % step or value // self.config.patch_size < 2 * stride:
            raise ValueError(
                f"`{name}`={value} must be a positive multiple of {step} (patch size {self.config.patch_size} x "
                f"{stride} for the token resampling) covering at least {2 * stride} patches"
            )

    def check_bits(self, bits: torch.Tensor, name: str = "bits") -> None:
        """Raise a `ValueError` naming `name` unless `bits` is a `(B, num_latent_tokens, bits_per_token)` 0/1 tensor."""
        expected = (self.config.num_latent_tokens, self.config.bits_per_token)
        if not isinstance(bits, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(bits).__name__}")
        if bits.ndim != 3 or tuple(bits.shape[1:]) != expected:
            raise ValueError(f"`{name}` must have shape (batch, {expected[0]}, {expected[1]}), got {tuple(bits.shape)}")
        if bits.dtype.is_complex or bool(((bits != 0) & (bits != 1)).any()):
            raise ValueError(f"`{name}` must contain only 0 and 1")

    # ------------------------------------------------------------------------------------------------------------------
    def encode(
        self,
        images: torch.Tensor,
        sample: Optional[bool] = None,
        temperature: Optional[float] = None,
        generator: GeneratorType = None,
        return_dict: bool = True,
    ) -> Union[BinaryTokenizerEncoderOutput, tuple]:
        r"""Encode images to bits.

        Args:
            images (`torch.Tensor` of shape `(B, in_channels, H, W)`): Images in [-1, 1]; `H` and `W` must be
                supported sizes.
            sample (`bool`, *optional*): Draw the bits from `Bernoulli(sigmoid(logits / temperature))` instead of
                thresholding. Defaults to `self.training`.
            temperature (`float`, *optional*): Sampling temperature; defaults to `config.quantizer_temperature`.
            generator (`torch.Generator` or list, *optional*): RNG(s) for the sampled bits.

        Returns:
            [`BinaryTokenizerEncoderOutput`] with `bits` `(B, num_latent_tokens, bits_per_token)`, or a tuple
            `(bits, logits, code_loss)`.
        """
        quantized = self._encode(images, sample, temperature, generator)
        out = (quantized.bits, quantized.logits, quantized.code_loss)
        return BinaryTokenizerEncoderOutput(*out) if return_dict else out

    def decode(
        self, bits: torch.Tensor, height: Optional[int] = None, width: Optional[int] = None, return_dict: bool = True
    ) -> Union[BinaryTokenizerDecoderOutput, tuple]:
        r"""Decode bits to images at `height x width` (default: the largest supported size; with one side given, a
        square of that side).

        Args:
            bits (`torch.Tensor` of shape `(B, num_latent_tokens, bits_per_token)`): Values in {0, 1}, any dtype.

        Returns:
            [`BinaryTokenizerDecoderOutput`] with `sample` `(B, in_channels, height, width)` in about [-1, 1].
        """
        self.check_bits(bits)
        height, width = self._output_size(height, width)
        images = self._decode(self.quantizer.embed_bits(bits.to(self.device)), height, width)
        return BinaryTokenizerDecoderOutput(sample=images) if return_dict else (images,)

    def forward(
        self,
        images: torch.Tensor,
        height: Optional[int] = None,
        width: Optional[int] = None,
        sample: Optional[bool] = None,
        temperature: Optional[float] = None,
        generator: GeneratorType = None,
        return_dict: bool = True,
    ) -> Union[BinaryTokenizerOutput, tuple]:
        r"""Reconstruct `images` at `height x width` (default: the input size). In training the bits are sampled and
        gradients reach the encoder through the straight-through estimator.

        Returns:
            [`BinaryTokenizerOutput`] `(sample, bits, code_loss)`.
        """
        quantized = self._encode(images, sample, temperature, generator)
        height, width = self._output_size(height or images.shape[-2], width or images.shape[-1])
        recon = self._decode(quantized.latents, height, width)
        out = (recon, quantized.bits, quantized.code_loss)
        return BinaryTokenizerOutput(*out) if return_dict else out

    # ------------------------------------------------------------------------------------------------------------------
    def _encode(self, images, sample, temperature, generator):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"`images` must be a (batch, channels, height, width) tensor, got {shape}")
        if images.shape[1] != self.config.in_channels:
            raise ValueError(f"`images` must have {self.config.in_channels} channels, got {images.shape[1]}")
        if not images.is_floating_point():
            raise ValueError(
                f"`images` must be a floating-point tensor in [-1, 1], got {images.dtype} (for uint8 "
                "images use `images / 127.5 - 1`)"
            )
        check_finite("images", images)
        low, high = (-1.0, 1.0) if images.is_meta else (float(images.min()), float(images.max()))
        if low < -1 - IMAGE_RANGE_TOLERANCE or high > 1 + IMAGE_RANGE_TOLERANCE:
            hint = " (images in [0, 1]? use `images * 2 - 1`)" if low >= 0 else ""
            raise ValueError(f"`images` must lie in [-1, 1], got values in [{low:.3g}, {high:.3g}]{hint}")
        stride = 2 ** len(self.config.encoder_downsample_blocks)
        self.check_size("images height", int(images.shape[-2]), stride)
        self.check_size("images width", int(images.shape[-1]), stride)
        features = self.encoder(images.to(self.device), self.rope_scale)
        temperature = self.config.quantizer_temperature if temperature is None else temperature
        return self.quantizer(features, self.training if sample is None else sample, temperature, generator)

    def _output_size(self, height: Optional[int], width: Optional[int]) -> tuple[int, int]:
        # one side given: square output; none: the largest supported size
        height = height if height is not None else width if width is not None else self.default_size
        width = width if width is not None else height
        stride = 2 ** len(self.config.decoder_upsample_blocks)
        self.check_size("height", height, stride)
        self.check_size("width", width, stride)
        return height, width

    def _decode(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        p = self.config.patch_size
        tokens = self.decoder(latents, height // p, width // p, self.rope_scale)
        return self.pixel_head(tokens, height // p, width // p)
