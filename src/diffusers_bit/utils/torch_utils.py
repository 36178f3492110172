# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Random draws that honour diffusers' generator conventions (one generator, or one per batch row), and the one
tempered-Bernoulli rule that turns bit logits into bits."""

import math
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


def tempered_sigmoid(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""`p(bit = 1) = sigmoid(logits / temperature)`, in float32: the tempering rule of every bit drawn from logits
    (the scheduler's flip probabilities, the AR pipeline's bits, the tokenizer quantizer's bits).

    Temperature 0 is the limit `temperature -> 0+`: `p = 1` where `logit > 0`, `p = 0` where `logit < 0`, and
    `p = 1/2` where `logit == 0` (`sigmoid(0) = 1/2` at every temperature). [`sample_bits`] turns that limit into
    greedy bits.

    Args:
        logits (`torch.Tensor` of any shape): Bit logits, any floating dtype.
        temperature (`float`): `>= 0`.

    Returns:
        `torch.Tensor` of the shape of `logits`, float32.
    """
    temperature = float(temperature)
    if temperature < 0 or math.isnan(temperature):
        raise ValueError(f"`temperature` must be >= 0, got {temperature}")
    logits = logits.float()
    if temperature == 0:
        return (logits > 0).float() + 0.5 * (logits == 0).float()
    return torch.sigmoid(logits / temperature)


def sample_bits(logits: torch.Tensor, temperature: float, generator: GeneratorType = None) -> torch.Tensor:
    r"""Bits from bit logits: `Bernoulli(sigmoid(logits / temperature))`, greedy at temperature 0.

    - `temperature > 0`: [`bernoulli`] of [`tempered_sigmoid`], i.e. one float32 uniform `u` per bit from `generator`
      (one generator, or one per batch row) and `bit = u < p`, the same draw as the scheduler's [`bernoulli`] steps.
      Seeded outputs (and the tests that pin them) depend on this consumption of random numbers: `torch.bernoulli`
      draws differently and must not replace it.
    - `temperature == 0`: greedy, `bit = 1` exactly where `logit > 0` (where `p > 1/2`); a tie `logit == 0` gives
      0, and so does a NaN logit. No random number is drawn: the generator's state is left untouched. The rule is
      applied to the logits, not to `sigmoid(logits) > 0.5`, which in low precision rounds small positive logits
      to 1/2 (bfloat16: every logit below about 0.008).

    Args:
        logits (`torch.Tensor` of shape `(B, ...)`): Bit logits, any floating dtype.
        temperature (`float`): `>= 0`.
        generator (`torch.Generator` or `list[torch.Generator]`, *optional*): With a list, row `b` is drawn from
            `generator[b]` alone.

    Returns:
        `torch.Tensor` of the shape of `logits`, float32, values in {0, 1}.
    """
    if float(temperature) == 0:
        return (logits > 0).float()
    return bernoulli(tempered_sigmoid(logits, temperature), generator)
