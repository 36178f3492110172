# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Binary quantizer of the 1D binary latent tokenizer: sigmoid + Bernoulli, with a learned bit embedding."""

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..utils.torch_utils import GeneratorType, sample_bits


@dataclass
class QuantizerOutput:
    r"""
    Attributes:
        bits (`torch.Tensor` of shape `(B, N, K)`): Hard bits in {0, 1}, detached.
        latents (`torch.Tensor` of shape `(B, N, C)`): Bit embeddings fed to the decoder. In training they carry the
            straight-through gradient of `sigmoid(logits)`.
        logits (`torch.Tensor` of shape `(B, N, K)`): Pre-sigmoid bit logits.
        code_loss (`torch.Tensor`, scalar): `mean(sigmoid(logits) * (1 - sigmoid(logits)))`, the entropy-like
            penalty that pushes the bit probabilities away from 1/2.
    """

    bits: torch.Tensor
    latents: torch.Tensor
    logits: torch.Tensor
    code_loss: torch.Tensor


class BinaryQuantizer(nn.Module):
    r"""Project encoder tokens to `K` bit logits, binarise, and embed the bits back to the decoder width.

    Binarisation is greedy, `logits > 0`, when `sample=False` (inference); with `sample=True` (training) the bits are
    drawn from `Bernoulli(sigmoid(logits / temperature))`, greedy again at temperature 0 (see [`sample_bits`]). In
    training the decoder input uses the straight-through estimator `bits + sigmoid(logits) - sigmoid(logits).detach()`.

    Args:
        dim (`int`): Width `C` of the encoder output and of the bit embedding.
        bits_per_token (`int`): `K`, bits per latent token.
    """

    def __init__(self, dim: int, bits_per_token: int):
        super().__init__()
        self.proj = nn.Linear(dim, bits_per_token)
        self.embed = nn.Parameter(torch.randn(bits_per_token, dim) * 0.02)

    def embed_bits(self, bits: torch.Tensor) -> torch.Tensor:
        """`(B, N, K)` bits (or straight-through bits) -> `(B, N, C)` latents: the sum of the embeddings of set bits."""
        return torch.einsum("bnk,kc->bnc", bits.to(self.embed.dtype), self.embed)

    def forward(
        self,
        hidden_states: torch.Tensor,
        sample: bool = False,
        temperature: float = 0.1,
        generator: GeneratorType = None,
    ) -> QuantizerOutput:
        """`hidden_states` `(B, N, C)` -> [`QuantizerOutput`]."""
        logits = self.proj(hidden_states)
        probs = torch.sigmoid(logits)
        code_loss = (probs * (1 - probs)).mean()
        bits = sample_bits(logits.detach(), temperature if sample else 0.0, generator).to(logits.dtype)
        straight_through = bits + probs - probs.detach() if torch.is_grad_enabled() and probs.requires_grad else bits
        return QuantizerOutput(bits=bits, latents=self.embed_bits(straight_through), logits=logits, code_loss=code_loss)
