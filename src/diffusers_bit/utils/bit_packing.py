# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""A binary latent as bytes and back: 128 tokens x 64 bits = 1024 bytes per image."""

import torch

_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    r"""Pack binary latents into bytes, most significant bit first (the order of `numpy.packbits`).

    Args:
        bits (`torch.Tensor` of shape `(B, N, K)`): Values in {0, 1} (any dtype); `N * K` must be divisible by 8.

    Returns:
        `torch.uint8` tensor of shape `(B, N * K // 8)`: 1024 bytes for the paper's 128 x 64 latent.
    """
    if bits.ndim != 3:
        raise ValueError(f"`bits` must have shape (batch, tokens, bits_per_token), got {tuple(bits.shape)}")
    if (bits.shape[1] * bits.shape[2]) % 8:
        raise ValueError(f"`bits` must hold a multiple of 8 bits per latent, got {bits.shape[1] * bits.shape[2]}")
    if bool(((bits != 0) & (bits != 1)).any()):
        raise ValueError("`bits` must contain only 0 and 1")
    flat = bits.reshape(bits.shape[0], bits.shape[1] * bits.shape[2] // 8, 8).to(torch.uint8)
    return (flat * _WEIGHTS.to(bits.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, num_tokens: int = 128, bits_per_token: int = 64) -> torch.Tensor:
    r"""Inverse of [`pack_bits`].

    Args:
        packed (`torch.Tensor` of shape `(B, num_tokens * bits_per_token // 8)`, uint8): Packed latents.

    Returns:
        `torch.float32` tensor of shape `(B, num_tokens, bits_per_token)` with values in {0, 1}.
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"`packed` must be a uint8 tensor, got {packed.dtype}")
    if packed.ndim != 2 or packed.shape[1] * 8 != num_tokens * bits_per_token:
        raise ValueError(
            f"`packed` must have shape (batch, {num_tokens * bits_per_token // 8}) for {num_tokens} tokens of "
            f"{bits_per_token} bits, got {tuple(packed.shape)}"
        )
    unpacked = (packed[..., None] & _WEIGHTS.to(packed.device)) != 0
    return unpacked.reshape(packed.shape[0], num_tokens, bits_per_token).float()
