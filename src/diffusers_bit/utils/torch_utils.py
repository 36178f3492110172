# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Random draws that honour diffusers' generator conventions (one generator, or one per batch row)."""

from typing import Optional, Union

import torch

GeneratorType = Optional[Union[torch.Generator, list]]


def bernoulli(probs: torch.Tensor, generator: GeneratorType = None) -> torch.Tensor:
    r"""Draw `Bernoulli(probs)` in the dtype of `probs`.

    Args:
        probs (`torch.Tensor` of shape `(B, ...)`): Probabilities of a 1.
        generator (`torch.Generator` or `list[torch.Generator]`, *optional*): With a list, row `b` is drawn from
            `generator[b]` alone, so a row's draw does not depend on the rest of the batch.

    The uniforms are drawn in float32 on the generator's device and compared with `probs`: `u < p`.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != probs.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {probs.shape[0]}")
        return torch.cat([bernoulli(p[None], g) for p, g in zip(probs, generator)], dim=0)
    device = generator.device if generator is not None else probs.device
    uniform = torch.rand(probs.shape, generator=generator, device=device, dtype=torch.float32).to(probs.device)
    return (uniform < probs.float()).to(probs.dtype)


def uniform_bits(shape: tuple, generator: GeneratorType = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Bits drawn from `Bernoulli(0.5)` (pure noise at t = 1), `shape = (B, ...)`."""
    return bernoulli(torch.full(shape, 0.5, device=device, dtype=dtype), generator)
