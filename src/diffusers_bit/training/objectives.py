# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Training objectives of the Instella-T2I generators (paper §2.2, §2.3) and the text conditioning they share."""

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..schedulers import BernoulliScheduler
from ..utils.text_encoders import is_causal_lm


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


class TextFeatureCache:
    r"""Per-caption text features of a frozen text encoder, computed once per distinct caption and re-padded per
    batch: the text encoder then runs only on captions it has not seen (a large saving for data sets whose captions
    repeat, e.g. synthetic ones, and for the `""` of prompt dropout).

    Exact only for encoders whose features of real tokens do not depend on the padding: BERT-style encoders with right
    padding and an attention mask. Decoder-only LMs are left-padded (as the authors do), which shifts their positions,
    so they are refused. Cached features live on `device`; memory is `L * T * C` values per distinct caption.
    """

    def __init__(self, pipeline, device, max_sequence_length: int = 128):
        if is_causal_lm(pipeline.text_encoder):
            raise ValueError(
                "--cache_text_features needs a text encoder that masks right padding (BERT-style); "
                f"{type(pipeline.text_encoder).__name__} is a decoder-only LM whose left-padded features depend on the "
                "batch, so its features cannot be cached per caption"
            )
        self.pipeline, self.device, self.max_sequence_length = pipeline, device, max_sequence_length
        self.features: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.features)

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as [`encode_text`]: `(L, B, T, C)` features (padding zero) and the `(B, T)` mask."""
        missing = list(dict.fromkeys(c for c in captions if c not in self.features))
        if missing:
            embeds, mask = encode_text(self.pipeline, missing, self.device, self.max_sequence_length)
            for index, caption in enumerate(missing):
                self.features[caption] = embeds[:, index, : int(mask[index].sum())].clone()
        rows = [self.features[c] for c in captions]
        length = max(1, max(row.shape[1] for row in rows))
        first = rows[0]
        embeds = first.new_zeros(first.shape[0], len(rows), length, first.shape[2])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=first.device)
        for index, row in enumerate(rows):
            embeds[:, index, : row.shape[1]] = row
            mask[index, : row.shape[1]] = 1
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


def generator_loss(
    model: str,
    transformer,
    scheduler: Optional[BernoulliScheduler],
    bits: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, dict]:
    r"""The training loss of either generator: [`diffusion_loss`] (`model="diffusion"`, needs the noise `scheduler`
    and draws from `generator`) or [`autoregressive_loss`] (`model="ar"`). What `train_t2i.py` and the benchmark's
    training section optimise."""
    if model == "diffusion":
        return diffusion_loss(transformer, scheduler, bits, text_embeds, text_mask, generator)
    if model == "ar":
        return autoregressive_loss(transformer, bits, text_embeds, text_mask)
    raise ValueError(f"`model` must be 'diffusion' or 'ar', got {model!r}")
