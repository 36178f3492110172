# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Building blocks shared by the binary latent tokenizer, the diffusion transformer and the AR transformer.

Everything here is written once and reused: RMSNorm, the 3-axis rotary embedding of the tokenizer, the attention
module (per-head q/k RMSNorm, torch SDPA, optional precomputed text keys/values and KV cache), the SwiGLU MLP, the 2x
token down/up-sampling blocks, the text-layer routing rule and the precomputed text keys/values container.

Shapes use `B` batch, `S` sequence, `H` heads, `D` head dim, `C` channels, `T` text tokens, `N` image tokens.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.checks import check_bits


class RMSNorm(nn.Module):
    r"""Root-mean-square normalisation over the last dimension.

    The statistics are computed in float32 and the result is cast back to the input dtype before the learned scale is
    applied (the Llama convention the released Instella-T2I weights were trained with).

    Args:
        dim (`int`): Size of the normalised (last) dimension.
        eps (`float`, defaults to 1e-6): Added to the mean square for numerical stability.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states` `(..., dim)` -> `(..., dim)`."""
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


# ----------------------------------------------------------------------------------------------------------------------
# Rotary position embedding (tokenizer only)
# ----------------------------------------------------------------------------------------------------------------------


ROPE_LAYOUTS = ("interleaved", "half_split")


def rope_cos_sin(
    positions: torch.Tensor, axes_dim: Sequence[int], theta: float = 10000.0, layout: str = "interleaved"
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Cosine/sine tables of a multi-axis rotary embedding.

    Each axis `a` owns `axes_dim[a] / 2` angles with frequencies `theta ** (-2j / axes_dim[a])`. Angles are computed
    in float64 (float32 on MPS) and returned in float32. Two table layouts:

    - `"interleaved"` (the released tokenizer): every angle repeated twice in a row and the axes concatenated (the
      Flux layout). Applied by [`apply_rotary_emb`]'s half-split rule this is *not* a rotation; it is what the
      released weights were trained with.
    - `"half_split"`: the angles of all axes concatenated once and the whole list repeated (`[angles, angles]`), so
      channel `i` and channel `i + D/2` share an angle and [`apply_rotary_emb`] performs a true rotation of each
      pair (relative positions, norm preserved). For models trained from scratch.

    Args:
        positions (`torch.Tensor` of shape `(S, len(axes_dim))`): Position of every token along every axis.
        axes_dim (`Sequence[int]`): Channels per axis; they sum to the attention head dim.
        theta (`float`): RoPE base.
        layout (`str`): `"interleaved"` or `"half_split"`.

    Returns:
        `(cos, sin)`, each of shape `(S, sum(axes_dim))`, float32.
    """
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"`layout` must be one of {list(ROPE_LAYOUTS)}, got {layout!r}")
    freqs_dtype = torch.float32 if positions.device.type == "mps" else torch.float64
    positions = positions.float()
    angle_parts = []
    for axis, dim in enumerate(axes_dim):
        if dim % 2:
            raise ValueError(f"every entry of `axes_dim` must be even, got {list(axes_dim)}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=freqs_dtype, device=positions.device) / dim))
        angles = torch.outer(positions[:, axis].to(freqs_dtype), inv_freq)
        angle_parts.append(angles.repeat_interleave(2, dim=1) if layout == "interleaved" else angles)
    angles = torch.cat(angle_parts, dim=-1)
    if layout == "half_split":
        angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def sincos_2d_embedding(rows: torch.Tensor, cols: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    r"""Fixed 2D sine/cosine position embedding (MAE style) of a grid given by its (possibly fractional) row and
    column coordinates: the first `dim / 2` channels encode the row, the rest the column, each as
    `[sin(p * w_j), cos(p * w_j)]` with `w_j = theta ** (-j / (dim / 4))`.

    Args:
        rows (`torch.Tensor` of shape `(h,)`), cols (`torch.Tensor` of shape `(w,)`): Coordinates of the grid lines.
        dim (`int`): Embedding width, a multiple of 4.

    Returns:
        `torch.Tensor` of shape `(h * w, dim)`, float32, row-major like a flattened `(h, w)` grid.
    """
    if dim % 4:
        raise ValueError(f"a 2D sine/cosine embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / theta ** (torch.arange(dim // 4, dtype=torch.float64, device=rows.device) / (dim // 4))

    def axis(coords: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(coords.to(torch.float64), omega)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    row_emb, col_emb = axis(rows), axis(cols)
    grid = torch.cat(
        [row_emb[:, None].expand(-1, len(cols), -1), col_emb[None, :].expand(len(rows), -1, -1)], dim=-1
    )
    return grid.reshape(-1, dim).float()


def apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    r"""Apply a rotary embedding with the half-split rule `x * cos + rotate_half(x) * sin`.

    `rotate_half` pairs channel `i` with channel `i + D/2` (the Llama rule) while the tables from [`rope_cos_sin`]
    are laid out interleaved (the Flux rule). The released tokenizer was trained with exactly this mix, so it is
    reproduced as is: it is not a plain rotation, and "fixing" it would break the weights.

    Args:
        x (`torch.Tensor` of shape `(B, H, S, D)`): Queries or keys.
        cos, sin (`torch.Tensor` of shape `(S, D)`): Tables from [`rope_cos_sin`].

    Returns:
        `torch.Tensor` of shape `(B, H, S, D)` in the dtype of `x` (the product is formed in float32).
    """
    x_float = x.float()
    half = x_float.shape[-1] // 2
    rotated = torch.cat((-x_float[..., half:], x_float[..., :half]), dim=-1)
    return (x_float * cos + rotated * sin).to(x.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------------


class KVCacheLayer:
    r"""Pre-allocated key/value cache of one attention layer for incremental (autoregressive) decoding.

    Keys and values of shape `(B, H, max_length, D)` are filled left to right; `length` counts the filled positions.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys = keys
        self.values = values
        self.length = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `(B, H, n, D)` keys/values; return every cached key/value so far, `(B, H, length, D)`."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache overflow: {end} positions requested, capacity {self.keys.shape[2]}")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    r"""Multi-head attention with bias-free projections, per-head RMSNorm on queries and keys, optional rotary
    embedding, optional prefix keys/values (the text side of joint attention) and optional KV cache. Uses
    `torch.nn.functional.scaled_dot_product_attention`; no flash-attn dependency.

    Args:
        dim (`int`): Model width `C`.
        num_heads (`int`): Number of heads `H`; `C` must be divisible by it.
        eps (`float`): Epsilon of the q/k RMSNorms.
    """

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.norm_q = RMSNorm(self.head_dim, eps=eps)
        self.norm_k = RMSNorm(self.head_dim, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, S, C)` -> `(B, H, S, D)`."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (normed, no rotary embedding) and values of `(B, S, C)` tokens, each `(B, H, S, D)`."""
        keys = self.norm_k(self._heads(self.to_k(hidden_states)))
        values = self._heads(self.to_v(hidden_states))
        return keys, values

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        prefix_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        kv_cache: Optional[KVCacheLayer] = None,
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(B, S, C)`): Tokens that are both queries and keys/values.
            rotary_emb (`(cos, sin)` of shape `(S, D)`, *optional*): Applied to queries and keys after the norms.
            prefix_kv (`(keys, values)` of shape `(B, H, T, D)`, *optional*): Extra keys/values placed before the
                tokens' own (projected text); they are never queries.
            attention_mask (`torch.Tensor`, *optional*): Boolean, `True` = attend, broadcastable to
                `(B, H, S, T + S_keys)`.
            kv_cache ([`KVCacheLayer`], *optional*): The tokens' keys/values are appended to it and attention runs over
                the whole cache.

        Returns:
            `torch.Tensor` of shape `(B, S, C)`.
        """
        query = self.norm_q(self._heads(self.to_q(hidden_states)))
        keys, values = self.project_kv(hidden_states)
        if rotary_emb is not None:
            cos, sin = rotary_emb
            query = apply_rotary_emb(query, cos, sin)
            keys = apply_rotary_emb(keys, cos, sin)
        if kv_cache is not None:
            keys, values = kv_cache.update(keys, values)
        if prefix_kv is not None:
            keys = torch.cat([prefix_kv[0].to(keys.dtype), keys], dim=2)
            values = torch.cat([prefix_kv[1].to(values.dtype), values], dim=2)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=attention_mask)
        return self.to_out(out.transpose(1, 2).flatten(2))


class SwiGLU(nn.Module):
    r"""Bias-free SwiGLU MLP: `down(silu(gate(x)) * up(x))`.

    Args:
        dim (`int`): Input and output width.
        hidden_dim (`int`): Inner width.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., dim)` -> `(..., dim)`."""
        return self.down_proj(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


# ----------------------------------------------------------------------------------------------------------------------
# 2x token down/up-sampling on the image grid
# ----------------------------------------------------------------------------------------------------------------------


class DCDownBlock(nn.Module):
    r"""Halve the token grid: a 3x3 stride-2 convolution plus a 2x2 average-pool shortcut (the released tokenizer's
    "DC down block"). Tokens `(B, h*w, C)` on an `h x w` grid -> `(B, h/2 * w/2, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = tokens.transpose(1, 2).unflatten(2, (height, width))
        out = self.conv(grid) + F.avg_pool2d(grid, 2)
        return out.flatten(2).transpose(1, 2)


class DCUpBlock(nn.Module):
    r"""Double the token grid: a 3x3 convolution to 4x width followed by pixel-shuffle, plus a nearest-neighbour
    shortcut (the released tokenizer's "DC up block"). Tokens `(B, h*w, C)` -> `(B, 2h * 2w, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, 4 * dim, kernel_size=3, stride=1, padding=1)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = tokens.transpose(1, 2).unflatten(2, (height, width))
        out = F.pixel_shuffle(self.conv(grid), 2) + F.interpolate(grid, scale_factor=2, mode="nearest")
        return out.flatten(2).transpose(1, 2)


class LinearDownBlock(nn.Module):
    r"""Halve the token grid with the paper's linear 2x2 merge (Eq. 2): the four tokens
    `[x(2i,2j); x(2i+1,2j); x(2i,2j+1); x(2i+1,2j+1)]` are concatenated and mapped `4C -> C`.
    Tokens `(B, h*w, C)` -> `(B, h/2 * w/2, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = tokens.shape
        grid = tokens.view(b, height // 2, 2, width // 2, 2, c)  # (B, i, di, j, dj, C)
        merged = grid.permute(0, 1, 3, 4, 2, 5).reshape(b, (height // 2) * (width // 2), 4 * c)
        return self.proj(merged)


class LinearUpBlock(nn.Module):
    r"""Double the token grid with the paper's linear split (Eq. 3): each token is mapped `C -> 4C` and split into a
    2x2 group, in the order of [`LinearDownBlock`]. Tokens `(B, h*w, C)` -> `(B, 2h * 2w, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 4 * dim, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = tokens.shape
        split = self.proj(tokens).view(b, height, width, 2, 2, c)  # (B, i, j, dj, di, C)
        return split.permute(0, 1, 4, 2, 3, 5).reshape(b, 4 * height * width, c)


RESAMPLE_BLOCKS = {"dc": (DCDownBlock, DCUpBlock), "linear": (LinearDownBlock, LinearUpBlock)}


# ----------------------------------------------------------------------------------------------------------------------
# Text conditioning shared by the two generators
# ----------------------------------------------------------------------------------------------------------------------


def text_layer_indices(num_blocks: int, num_text_layers: int) -> list[int]:
    r"""Which text-encoder layer each generator block reads.

    Block `i` (0-based) of `D = num_blocks` reads hidden state `round((i + 1) * L / D) - 1` of the `L =
    num_text_layers` text-encoder layers (the embedding output excluded), rounding halves up. With `D == L` block `i`
    reads layer `i` (the released models); with `D < L` the blocks spread evenly and the last block always reads the
    last layer; with `D > L` consecutive blocks share a layer.
    """
    if num_blocks < 1 or num_text_layers < 1:
        raise ValueError(f"need at least one block and one text layer, got {num_blocks} and {num_text_layers}")
    return [
        min(max(math.floor((i + 1) * num_text_layers / num_blocks + 0.5) - 1, 0), num_text_layers - 1)
        for i in range(num_blocks)
    ]


@dataclass
class TextKV:
    r"""Projected text keys/values of every generator block, computed once per prompt batch and reused at every
    denoising step (diffusion) or every generated token (AR).

    Attributes:
        keys, values (`list[torch.Tensor]`): One `(B, H, T, D)` tensor per block.
        mask (`torch.Tensor` of shape `(B, T)`, bool, *optional*): `True` for real text tokens; `None` when no token
            is padding.
    """

    keys: list
    values: list
    mask: Optional[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def repeat_interleave(self, repeats: int) -> "TextKV":
        """Repeat every batch row `repeats` times (several images per prompt)."""
        if repeats == 1:
            return self
        rep = lambda t: t.repeat_interleave(repeats, dim=0)  # noqa: E731
        return TextKV(
            [rep(k) for k in self.keys], [rep(v) for v in self.values], None if self.mask is None else rep(self.mask)
        )


def check_text_inputs(
    encoder_hidden_states: Union[torch.Tensor, Sequence[torch.Tensor]],
    encoder_attention_mask: Optional[torch.Tensor],
    num_text_layers: int,
    text_embed_dim: int,
) -> None:
    """Raise a `ValueError` naming the argument when per-layer text features or their mask do not fit the model."""
    if encoder_hidden_states is None:
        raise ValueError("`encoder_hidden_states` is required when `text_kv` is not given")
    if len(encoder_hidden_states) != num_text_layers:
        raise ValueError(
            f"`encoder_hidden_states` must hold one hidden state per text-encoder layer ({num_text_layers}), "
            f"got {len(encoder_hidden_states)}"
        )
    first = encoder_hidden_states[0]
    for index, layer in enumerate(encoder_hidden_states):
        if (
            not isinstance(layer, torch.Tensor)
            or layer.ndim != 3
            or layer.shape[-1] != text_embed_dim
            or layer.shape[:2] != first.shape[:2]
        ):
            shape = tuple(layer.shape) if isinstance(layer, torch.Tensor) else type(layer).__name__
            raise ValueError(
                f"every entry of `encoder_hidden_states` must have shape (batch, text_len, {text_embed_dim}) with the "
                f"batch and length of entry 0 {tuple(first.shape[:2])}; entry {index} has {shape}"
            )
    if encoder_attention_mask is not None and (
        encoder_attention_mask.ndim != 2 or tuple(encoder_attention_mask.shape) != tuple(first.shape[:2])
    ):
        raise ValueError(
            f"`encoder_attention_mask` must have shape (batch, text_len) = {tuple(first.shape[:2])}, "
            f"got {tuple(encoder_attention_mask.shape)}"
        )


def block_text_kv(block: nn.Module, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Keys/values of one generator block for `(B, T, C_text)` text features: the block's `context_embedder`
    (text width -> model width), then its attention's key/value projections and key norm. `(B, H, T, D)` each."""
    weight = block.context_embedder.weight
    text = block.context_embedder(text_features.to(device=weight.device, dtype=weight.dtype))
    return block.attn.project_kv(text)


def text_padding_mask(encoder_attention_mask: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    """`(B, T)` 0/1 mask -> bool mask on `device`, or `None` when there is no mask or no padding."""
    if encoder_attention_mask is None:
        return None
    mask = encoder_attention_mask.to(device=device).bool()
    return None if bool(mask.all()) else mask


def project_text_kv(
    blocks: Sequence[nn.Module],
    layer_indices: Sequence[int],
    encoder_hidden_states: Union[torch.Tensor, Sequence[torch.Tensor]],
    encoder_attention_mask: Optional[torch.Tensor],
) -> TextKV:
    r"""[`block_text_kv`] for every block; block `i` reads `encoder_hidden_states[layer_indices[i]]`.

    Args:
        encoder_hidden_states: `L` tensors `(B, T, C_text)` (or one `(L, B, T, C_text)` tensor).
        encoder_attention_mask (`(B, T)`, *optional*): 1/True for real tokens, 0/False for padding.
    """
    mask = text_padding_mask(encoder_attention_mask, blocks[0].context_embedder.weight.device)
    keys, values = [], []
    for block, layer in zip(blocks, layer_indices):
        k, v = block_text_kv(block, zero_padding(encoder_hidden_states[layer], mask))
        keys.append(k)
        values.append(v)
    return TextKV(keys, values, mask)


def zero_padding(text_features: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero the features of padded text tokens: they are never attended to, but a NaN there (some text encoders emit
    NaN for fully padded rows) would still poison the attention output through `0 * NaN`."""
    if mask is None:
        return text_features
    return text_features.masked_fill(~mask.to(text_features.device)[:, :, None], 0)


def joint_attention_mask(
    text_mask: Optional[torch.Tensor],
    text_len: int,
    num_queries: int,
    num_image_keys: int,
    causal: bool,
    device: torch.device,
) -> Optional[torch.Tensor]:
    r"""Boolean mask over the keys `[text; image]` for image-token queries.

    Text keys are visible where `text_mask` is True (all of them when it is `None`). Image keys are all visible
    (`causal=False`) or, with `causal=True`, query `q` sees image keys `0 .. num_image_keys - num_queries + q`
    (bottom-right aligned: the queries are the last `num_queries` image positions, as in incremental decoding).

    Args:
        text_mask (`(B, T)` bool, *optional*): `True` for real text tokens.
        text_len (`int`): `T`, the number of text keys.

    Returns:
        `None` when nothing is masked, else a bool tensor broadcastable to `(B, H, num_queries, T + num_image_keys)`.
    """
    image_part = None
    if causal and num_image_keys > 1:
        q_pos = torch.arange(num_queries, device=device)[:, None] + (num_image_keys - num_queries)
        image_part = torch.arange(num_image_keys, device=device)[None, :] <= q_pos  # (Q, K_img)
        if bool(image_part.all()):
            image_part = None
    if text_mask is None and image_part is None:
        return None
    if image_part is None:
        image_part = torch.ones(num_queries, num_image_keys, dtype=torch.bool, device=device)
    if text_mask is None:
        text_part = torch.ones(num_queries, text_len, dtype=torch.bool, device=device)
        return torch.cat([text_part, image_part], dim=-1)[None, None]
    batch = text_mask.shape[0]
    text_part = text_mask[:, None, None, :].expand(batch, 1, num_queries, text_len)
    return torch.cat([text_part, image_part[None, None].expand(batch, 1, -1, -1)], dim=-1)


class TextConditioningMixin:
    r"""Text plumbing shared by [`BinaryDiT`] and [`BinaryARTransformer`].

    Expects `self.transformer_blocks` (blocks with `context_embedder` and `attn`) and config fields `num_layers`,
    `text_num_layers`, `text_embed_dim`, `in_channels`.
    """

    @property
    def text_layer_map(self) -> list[int]:
        """Text-encoder layer read by each block; see [`text_layer_indices`]."""
        return text_layer_indices(self.config.num_layers, self.config.text_num_layers or self.config.num_layers)

    def prepare_text_kv(
        self,
        encoder_hidden_states: Union[torch.Tensor, Sequence[torch.Tensor]],
        encoder_attention_mask: Optional[torch.Tensor] = None,
    ) -> TextKV:
        r"""Project the text side of every block's attention once, to pass as `text_kv` at every step.

        Args:
            encoder_hidden_states: One `(B, T, text_embed_dim)` hidden state per text-encoder layer (the embedding
                output excluded), as a sequence or a stacked `(L, B, T, text_embed_dim)` tensor.
            encoder_attention_mask (`(B, T)`, *optional*): 1 for real text tokens, 0 for padding.
        """
        check_text_inputs(
            encoder_hidden_states,
            encoder_attention_mask,
            self.config.text_num_layers or self.config.num_layers,
            self.config.text_embed_dim,
        )
        return project_text_kv(self.transformer_blocks, self.text_layer_map, encoder_hidden_states,
                               encoder_attention_mask)  # fmt: skip

    def _text_inputs(self, batch_size, encoder_hidden_states, encoder_attention_mask, text_kv):
        """Per-block text inputs (raw features, projected inside the block, or precomputed `(k, v)`), the bool padding
        mask and the text length."""
        if text_kv is not None:
            if text_kv.batch_size != batch_size:
                raise ValueError(f"`text_kv` has batch {text_kv.batch_size}, `hidden_states` has batch {batch_size}")
            return list(zip(text_kv.keys, text_kv.values)), text_kv.mask, text_kv.length
        check_text_inputs(
            encoder_hidden_states,
            encoder_attention_mask,
            self.config.text_num_layers or self.config.num_layers,
            self.config.text_embed_dim,
        )
        if encoder_hidden_states[0].shape[0] != batch_size:
            raise ValueError(
                f"`encoder_hidden_states` has batch {encoder_hidden_states[0].shape[0]}, `hidden_states` has batch "
                f"{batch_size}"
            )
        mask = text_padding_mask(encoder_attention_mask, self.device)
        texts = [zero_padding(encoder_hidden_states[layer], mask) for layer in self.text_layer_map]
        return texts, mask, texts[0].shape[1]

    def _check_bits_input(self, hidden_states: torch.Tensor, max_tokens: int, exact: bool) -> None:
        channels = self.config.in_channels
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 3 or hidden_states.shape[-1] != channels:
            shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
            raise ValueError(f"`hidden_states` must have shape (batch, tokens, {channels}), got {shape}")
        n = hidden_states.shape[1]
        if (exact and n != max_tokens) or n > max_tokens:
            expected = f"exactly {max_tokens}" if exact else f"at most {max_tokens}"
            raise ValueError(f"`hidden_states` must hold {expected} tokens, got {n}")
        check_bits("hidden_states", hidden_states)


def run_block(model: nn.Module, block: nn.Module, *args) -> torch.Tensor:
    """Call `block(*args)`, through the model's gradient-checkpointing function when it is enabled and grads are on."""
    if torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False):
        return model._gradient_checkpointing_func(block, *args)
    return block(*args)
