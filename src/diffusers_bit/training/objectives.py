# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Training objectives of the Instella-T2I generators (paper §2.2, §2.3) and the text conditioning they share."""

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..schedulers import BernoulliScheduler


def apply_prompt_dropout(captions: Sequence[str], probability: float, rng: np.random.Generator) -> list[str]:
    r"""Replace each caption by `""` with `probability` (the paper drops 10% for classifier-free guidance; the
    pipelines' unconditional prompt is `""` too). One uniform draw per caption from `rng`."""
    draws = rng.random(len(captions))
    return ["" if draw < probability else caption for caption, draw in zip(captions, draws)]


@torch.no_grad()
def encode_text(pipeline, captions: Sequence[str], device, max_sequence_length: int = 128):
    r"""Per-layer text features exactly as the pipelines compute them at inference (every hidden state after the
    embedding output, left padding for decoder-only LMs, truncation at `max_sequence_length`).

    Returns:
        `(embeds, mask)`: `(L, B, T, C)` features (padded positions zero) and the `(B, T)` attention mask.
    """
    embeds, mask, _, _ = pipeline.encode_prompt(
        list(captions), do_classifier_free_guidance=False, device=device, max_sequence_length=max_sequence_length
    )
    return embeds, mask


def diffusion_loss(
    transformer,
    scheduler: BernoulliScheduler,
    bits: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, dict]:
    r"""Bernoulli diffusion loss (paper Eq. 5): `t ~ logit-normal` (the scheduler's `timestep_distribution`),
    `z_t ~ Bernoulli((1 - t) z_0 + t/2)`, BCE between `p(z_0 = 1)` from the predicted flip logits and `z_0`.

    Args:
        bits (`torch.Tensor` of shape `(B, N, K)`): Clean latents `z_0` in {0, 1}.
        text_embeds (`(L, B, T, C)`), text_mask (`(B, T)`): From [`encode_text`].
        generator (`torch.Generator`, *optional*): Draws `t` and the noise.

    Returns:
        `(loss, metrics)`; `metrics["bit_accuracy"]`: fraction of bits whose `p(z_0 = 1)` is on the right side of 1/2.
    """
    timesteps = scheduler.sample_timesteps(bits.shape[0], generator=generator, device=bits.device)
    noisy = scheduler.add_noise(bits, timesteps, generator=generator)
    output = transformer(noisy, timesteps, encoder_hidden_states=text_embeds, encoder_attention_mask=text_mask).sample
    loss = scheduler.loss(output, noisy, bits)
    with torch.no_grad():
        accuracy = ((scheduler.original_logits(output.float(), noisy) > 0).float() == bits).float().mean()
    return loss, {"bit_accuracy": accuracy}


def autoregressive_loss(
    transformer, bits: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    r"""Next-token loss of the AR model (paper Eq. 7): the input is `[split; z_1 .. z_{N-1}]` (the model prepends its
    split token to `bits[:, :-1]`), output `i` holds the logits of the `K` bits of token `i + 1`, BCE-with-logits
    against all `N` tokens.

    Returns:
        `(loss, metrics)` with `metrics["bit_accuracy"]` (thresholded prediction vs. target bits).
    """
    output = transformer(bits[:, :-1], encoder_hidden_states=text_embeds, encoder_attention_mask=text_mask).sample
    if output.shape != bits.shape:
        raise ValueError(f"AR output {tuple(output.shape)} does not match the latents {tuple(bits.shape)}")
    loss = F.binary_cross_entropy_with_logits(output.float(), bits.float())
    with torch.no_grad():
        accuracy = ((output.float() > 0).float() == bits).float().mean()
    return loss, {"bit_accuracy": accuracy}
