# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The tokenizer's training objective for one micro-batch (paper §2.1, Appendix A): reconstruction (pixel +
perceptual) loss, code loss, and in stage 3 the adaptive adversarial term and the discriminator's hinge loss.
`train_tokenizer.py` and the benchmark's training section both call [`tokenizer_loss`] and [`discriminator_loss`]."""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .discriminator import adaptive_adversarial_weight, hinge_discriminator_loss, hinge_generator_loss
from .tokenizer_data import resize_images


def random_crops(
    images: Sequence[torch.Tensor], crop: int, rng: np.random.Generator
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    r"""The same random `crop x crop` window of every image in `images` (a list of `(B, C, H, W)` tensors of one
    size), one window per batch row drawn from `rng`. Returns the crops and the `(top, left)` offsets."""
    batch, _, height, width = images[0].shape
    tops = rng.integers(0, height - crop + 1, size=batch)
    lefts = rng.integers(0, width - crop + 1, size=batch)
    offsets = [(int(t), int(l)) for t, l in zip(tops, lefts)]
    crops = [torch.stack([x[b, :, t : t + crop, l : l + crop] for b, (t, l) in enumerate(offsets)]) for x in images]
    return crops, offsets


def perceptual_loss(
    lpips,
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    global_size: Optional[int],
    crop_size: Optional[int],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, dict]:
    r"""The paper's stage-1 perceptual term, used in every stage: LPIPS between the reconstruction and the target both
    resized to `global_size x global_size` (bilinear, antialiased; paper: 448, "to match global appearance"), and
    LPIPS between the same random `crop_size` window (paper: 224, "to refine local image details") cut from both at
    the decode resolution (one window per image, drawn from `rng`). The loss is the **mean** of the two terms (either
    can be switched off with size 0/`None`).

    Returns:
        `(loss, {"lpips_global": ..., "lpips_crop": ...})` (float32 scalars; the dict holds detached values).
    """
    terms, parts = [], {}
    if global_size:
        value = lpips(
            resize_images(reconstruction, global_size, "bilinear"), resize_images(target, global_size, "bilinear")
        )
        terms.append(value)
        parts["lpips_global"] = value.detach()
    if crop_size:
        if crop_size > min(target.shape[-2:]):
            raise ValueError(f"perceptual crop {crop_size} is larger than the decoded image {tuple(target.shape[-2:])}")
        (rec_crops, target_crops), _ = random_crops([reconstruction, target], crop_size, rng)
        value = lpips(rec_crops, target_crops)
        terms.append(value)
        parts["lpips_crop"] = value.detach()
    if not terms:
        return reconstruction.new_zeros((), dtype=torch.float32), parts
    return torch.stack(terms).mean(), parts


PIXEL_LOSSES = ("smooth_l1", "l1", "mse")


def foreground_weights(target: torch.Tensor, weight: float, threshold: float) -> Optional[torch.Tensor]:
    r"""Per-pixel loss weights `(B, 1, H, W)` that up-weight what stands out from an image's background: pixels whose
    colour differs from the image's per-channel median by more than `threshold` (largest channel difference, images in
    [-1, 1]) get `weight`, the others 1; the weights are normalised to mean 1 per image so the loss scale does not
    change. `None` when `weight == 1`. Small objects on a plain background are otherwise a few percent of the pixels
    and the last thing a pixel loss pays for."""
    if weight == 1:
        return None
    median = target.flatten(2).median(dim=-1).values[..., None, None]
    foreground = ((target - median).abs().amax(dim=1, keepdim=True) > threshold).float()
    weights = 1.0 + (weight - 1.0) * foreground
    return weights / weights.mean(dim=(1, 2, 3), keepdim=True)


def pixel_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    kind: str = "smooth_l1",
    beta: float = 1.0,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""Mean pixel loss `kind` (`"smooth_l1"` with `beta`, `"l1"` or `"mse"`), each pixel scaled by `weights`
    (broadcast over channels) when given."""
    if kind not in PIXEL_LOSSES:
        raise ValueError(f"pixel loss must be one of {list(PIXEL_LOSSES)}, got {kind!r}")
    if kind == "smooth_l1":
        per_pixel = F.smooth_l1_loss(reconstruction, target, beta=beta, reduction="none")
    elif kind == "l1":
        per_pixel = (reconstruction - target).abs()
    else:
        per_pixel = (reconstruction - target).pow(2)
    return per_pixel.mean() if weights is None else (per_pixel * weights).mean()


def reconstruction_losses(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    lpips,
    smooth_l1_weight: float,
    smooth_l1_beta: float,
    perceptual_weight: float,
    global_size: Optional[int],
    crop_size: Optional[int],
    rng: np.random.Generator,
    pixel_loss_type: str = "smooth_l1",
    foreground_weight: float = 1.0,
    foreground_threshold: float = 0.1,
) -> tuple[torch.Tensor, dict]:
    r"""`smooth_l1_weight * pixel_loss(rec, target) + perceptual_weight * perceptual_loss(...)` in float32, with the
    parts (detached) for logging. The pixel loss is `pixel_loss_type` (smooth L1 with `smooth_l1_beta` by default),
    optionally weighted towards the foreground ([`foreground_weights`])."""
    reconstruction, target = reconstruction.float(), target.float()
    weights = foreground_weights(target, foreground_weight, foreground_threshold)
    pixel = pixel_loss(reconstruction, target, pixel_loss_type, smooth_l1_beta, weights)
    loss = smooth_l1_weight * pixel
    parts = {pixel_loss_type: pixel.detach()}
    if perceptual_weight and lpips is not None:
        perceptual, lpips_parts = perceptual_loss(lpips, reconstruction, target, global_size, crop_size, rng)
        loss = loss + perceptual_weight * perceptual
        parts.update(lpips_parts, perceptual=perceptual.detach())
    return loss, parts


def last_decoder_layer(tokenizer) -> torch.nn.Parameter:
    r"""The weight the adaptive adversarial weight is measured at: the last layer of the decoder, which in
    [`BinaryLatentTokenizer`] is the final layer of the pixel head (the layer that writes pixels): `pixel_head.proj`
    (Linear, the released linear head) or the final 3x3 convolution to RGB of the convolutional head."""
    head = tokenizer.pixel_head
    if hasattr(head, "proj"):
        return head.proj.weight
    return head.layers[-1].weight


@dataclass
class TokenizerLossWeights:
    r"""Weights and settings of [`tokenizer_loss`] (the `train_tokenizer.py` flags of the same names)."""

    smooth_l1_weight: float = 1.0
    smooth_l1_beta: float = 1.0
    perceptual_weight: float = 1.0
    perceptual_size: Optional[int] = 448
    perceptual_crop: Optional[int] = 224
    pixel_loss: str = "smooth_l1"
    foreground_weight: float = 1.0
    foreground_threshold: float = 0.1
    code_loss_weight: float = 0.1
    adversarial_weight: float = 0.1
    adaptive_weight_max: float = 1e4

    @classmethod
    def from_args(cls, args) -> "TokenizerLossWeights":
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)})


def tokenizer_loss(
    model,
    pixels: torch.Tensor,
    target: torch.Tensor,
    size: int,
    temperature: float,
    generator: Optional[torch.Generator],
    lpips,
    crop_rng: np.random.Generator,
    weights: TokenizerLossWeights,
    discriminator=None,
    last_layer: Optional[torch.nn.Parameter] = None,
    reduce_weight=None,
) -> tuple[torch.Tensor, dict, torch.Tensor]:
    r"""Forward the tokenizer on a micro-batch and build its loss (call under the run's autocast).

    Args:
        model: The tokenizer (possibly wrapped for data parallelism).
        pixels (`(B, 3, r, r)`): Encoder input in [-1, 1]. target (`(B, 3, size, size)`): What the decoder should give.
        size (`int`): Decode side. temperature, generator: The quantizer's sampling (stochastic bits in training).
        lpips: The perceptual network (or `None`). crop_rng: Draws the perceptual crops.
        discriminator (*optional*): The unwrapped discriminator: present in stage 3 once it trains; it judges the
            reconstruction without collecting gradients into its heads.
        last_layer: Where the adaptive adversarial weight is measured ([`last_decoder_layer`]).
        reduce_weight (`Callable`, *optional*): Averages the adaptive weight over processes.

    Returns:
        `(loss, metrics, reconstruction)`: metrics (detached) are `reconstruction`, `code_loss`, the pixel/perceptual
        parts and, adversarially, `g_adv` and `adaptive_weight`; the reconstruction `(B, 3, size, size)` in float32.
    """
    recon, _, code_loss = model(
        pixels, height=size, width=size, sample=True, temperature=temperature, generator=generator, return_dict=False
    )
    recon = recon.float()
    if recon.shape != target.shape or target.shape[-1] != size:
        raise RuntimeError(
            f"reconstruction {tuple(recon.shape)} / target {tuple(target.shape)} do not match the decode size {size}"
        )
    rec_loss, parts = reconstruction_losses(
        recon,
        target,
        lpips,
        weights.smooth_l1_weight,
        weights.smooth_l1_beta,
        weights.perceptual_weight,
        weights.perceptual_size,
        weights.perceptual_crop,
        crop_rng,
        weights.pixel_loss,
        weights.foreground_weight,
        weights.foreground_threshold,
    )
    code_loss = code_loss.float()
    loss = rec_loss + weights.code_loss_weight * code_loss
    metrics = {"reconstruction": rec_loss.detach(), "code_loss": code_loss.detach(), **parts}
    if discriminator is not None:
        discriminator.heads.requires_grad_(False)
        discriminator.eval()
        g_adv = hinge_generator_loss(discriminator(recon))
        discriminator.train()
        discriminator.heads.requires_grad_(True)
        adaptive = adaptive_adversarial_weight(rec_loss, g_adv, last_layer, weights.adaptive_weight_max)
        if reduce_weight is not None:  # one weight for all processes
            adaptive = reduce_weight(adaptive)
        loss = loss + weights.adversarial_weight * adaptive * g_adv
        metrics.update(g_adv=g_adv.detach(), adaptive_weight=adaptive.detach())
    return loss, metrics, recon


def discriminator_loss(discriminator, target: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, dict]:
    r"""The discriminator's hinge loss on real `target` and detached `reconstruction` images (call under the run's
    autocast); metrics: `d_loss`, `logits_real`, `logits_fake` (means, detached)."""
    logits = discriminator(torch.cat([target.to(reconstruction.dtype), reconstruction.detach()]))
    real_logits, fake_logits = logits.float().chunk(2)
    d_loss = hinge_discriminator_loss(real_logits, fake_logits)
    return d_loss, {
        "d_loss": d_loss.detach(),
        "logits_real": real_logits.mean().detach(),
        "logits_fake": fake_logits.mean().detach(),
    }
