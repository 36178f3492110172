# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Position embeddings of the tokenizer: the multi-axis rotary embedding (tables and how they are applied) and the
fixed 2D sine/cosine embedding of the image tokens.

Shapes use `B` batch, `H` heads, `S` sequence, `D` head dim.
"""

from typing import Sequence

import torch

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
    grid = torch.cat([row_emb[:, None].expand(-1, len(cols), -1), col_emb[None, :].expand(len(rows), -1, -1)], dim=-1)
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
