# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The three training stages of the binary latent tokenizer (Instella-T2I §2.1 "Multi-stage training", §4, App. B)
and the pieces `training_scripts/train_tokenizer.py` builds them from.

| stage | encoder input | decoder output | temperature | trains | losses |
| --- | --- | --- | --- | --- | --- |
| 1 | `--resolution` (512) | the same size | 0.5 | everything | smooth L1 + LPIPS + code loss |
| 2 | `--resolution` (512) | one of `sample_sizes` (512/768/1024) per step | 0.1 | everything | smooth L1 + LPIPS + code loss |
| 3 | `--resolution` (512) | one of `sample_sizes` per step | 0.1 | quantizer + decoder + pixel head (encoder frozen) | + adversarial (DINO discriminator, hinge, adaptive weight) |

Data for several decode sizes: every record yields the encoder input (`pixel_values`, the shorter edge resized to
`--resolution` and centre-cropped, straight from the original image, exactly the inference preprocessing) and, when a
decode size differs from the encoder size, `source`: the same centre crop taken from the original at the largest
decode size, kept as `uint8` (4x less memory and transfer than floats). The target of a step decoding at size `d` is
`pixel_values` when `d` is the encoder size, `source` when `d` is the largest size, and otherwise `source` resized to
`d` on the device (bicubic, antialiased, clamped to [-1, 1]). All targets therefore show the same region of the
original image; a source smaller than the largest size is upsampled once (images under `--min_image_size` are
skipped).

Random draws are pure functions of `(seed, epoch, batch index)` (decode size: no process index, so every process
decodes at the same size and none waits for another) and of `(seed, process, epoch, batch index)` (quantizer noise,
perceptual crops), which is what makes a resumed run identical to an uninterrupted one.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from .. import model_card
from .data import (
    SkipSample,
    derive_seed,
    image_to_tensor,
    load_image,
    lookup_image,
    preprocess_image,
    resize_and_center_crop,
)

# stream ids of `derive_seed(seed, ..., stream)`: one independent random stream per kind of draw
QUANTIZER_STREAM, CROP_STREAM, DECODE_SIZE_STREAM = 11, 12, 13


@dataclass(frozen=True)
class StagePreset:
    r"""Defaults of one tokenizer training stage.

    Attributes:
        temperature (`float`): Bernoulli temperature of the quantizer in training (paper: 0.5 then 0.1).
        multi_resolution (`bool`): Decode at the tokenizer's `sample_sizes` (one drawn per step) instead of the
            encoder resolution.
        train_encoder (`bool`): Whether the encoder trains (stage 3 freezes it).
        adversarial (`bool`): Whether the discriminator and the adversarial loss are used.
    """

    stage: int
    temperature: float
    multi_resolution: bool
    train_encoder: bool
    adversarial: bool
    summary: str


STAGES = {
    1: StagePreset(1, 0.5, False, True, False,
                   "all parameters, smooth L1 + LPIPS + code loss at the encoder resolution, quantizer temperature 0.5"),
    2: StagePreset(2, 0.1, True, True, False,
                   "all parameters, smooth L1 + LPIPS + code loss, decoding at several resolutions, temperature 0.1"),
    3: StagePreset(3, 0.1, True, False, True,
                   "encoder frozen; quantizer, decoder and pixel head trained with smooth L1 + LPIPS + code loss + an "
                   "adversarial loss against a frozen-DINO discriminator with adaptive weighting"),
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class TokenizerImageProcessor:
    r"""Record -> `{"pixel_values": (3, R, R) float32 in [-1, 1]}` (+ `"source": (3, S, S) uint8` when
    `source_size` is set). Captions are not needed (records without one are fine).

    Args:
        resolution (`int`): Encoder input side `R`.
        source_size (`int`, *optional*): Side `S` of the decode targets' source (the largest decode size), cropped
            from the original image like `pixel_values`.
        image_column (`str`): Record key of the image (webdataset records: any image extension).
        min_size (`int`, *optional*): Skip images whose shorter edge is smaller.
    """

    resolution: int
    source_size: Optional[int] = None
    image_column: str = "image"
    min_size: Optional[int] = None

    def __call__(self, record: dict, rng: Optional[np.random.Generator] = None) -> dict:
        image = load_image(lookup_image(record, self.image_column))
        sample = {"pixel_values": preprocess_image(image, self.resolution, self.min_size)}
        if self.source_size:
            crop = resize_and_center_crop(image, self.source_size)
            sample["source"] = torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return sample


def collate_tokenizer_images(samples: list[dict]) -> dict:
    """Stack `pixel_values` (and `source` when present)."""
    batch = {"pixel_values": torch.stack([s["pixel_values"] for s in samples])}
    if "source" in samples[0]:
        batch["source"] = torch.stack([s["source"] for s in samples])
    return batch


def load_validation_images(paths: Sequence[str], processor: TokenizerImageProcessor) -> dict:
    """A batch of validation images from files, processed like the training data (the `--validation_images` flag)."""
    samples = []
    for path in paths:
        try:
            samples.append(processor({processor.image_column: str(path)}))
        except SkipSample as skip:
            raise ValueError(f"`--validation_images` {path!r} cannot be used: {skip}") from None
    return collate_tokenizer_images(samples)


def resize_images(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    r"""Square resize of `(B, 3, H, W)` images in [-1, 1] (antialiased when downsampling; bicubic results are clamped
    to [-1, 1]). Identity when the size already matches."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode=mode, align_corners=False, antialias=True)
    return out.clamp(-1.0, 1.0) if mode == "bicubic" else out


def decode_target(batch: dict, size: int, device) -> torch.Tensor:
    r"""The reconstruction target at decode size `size` (see the module docstring): `pixel_values` at the encoder
    size, otherwise the `uint8` source (at the largest decode size) resized to `size`. Float32 in [-1, 1]."""
    pixels = batch["pixel_values"]
    if pixels.shape[-1] == size:
        return pixels.to(device)
    if "source" not in batch:
        raise ValueError(f"decode size {size} differs from the encoder size {pixels.shape[-1]} but the batch has no "
                         "source images")  # fmt: skip
    source = batch["source"].to(device).float() / 127.5 - 1.0
    return resize_images(source, size)


def sample_decode_size(sizes: Sequence[int], seed: int, epoch: int, batch_index: int) -> int:
    r"""The decode size of a micro-batch: uniform over `sizes`, a pure function of `(seed, epoch, batch_index)` (no
    process index: all processes decode at the same size)."""
    if len(sizes) == 1:
        return int(sizes[0])
    rng = np.random.default_rng(derive_seed(seed, epoch, batch_index, DECODE_SIZE_STREAM))
    return int(sizes[int(rng.integers(len(sizes)))])


# ----------------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------------
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
        value = lpips(resize_images(reconstruction, global_size, "bilinear"), resize_images(target, global_size, "bilinear"))
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


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (computed on [0, 1], reconstructions clamped)."""
    rec = (reconstruction.float().clamp(-1, 1) + 1) / 2
    ref = (target.float().clamp(-1, 1) + 1) / 2
    mse = (rec - ref).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


def tensor_to_pil(images: torch.Tensor) -> list:
    """`(B, 3, H, W)` in [-1, 1] -> list of RGB `PIL.Image`s."""
    from PIL import Image

    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy()) for a in array]


# ----------------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------------
def render_tokenizer_card(tokenizer, repo_id: str, stage: int, training: Optional[dict] = None, **kwargs) -> str:
    """[`~diffusers_bit.model_card.render_tokenizer_card`] with the summary of `stage`."""
    return model_card.render_tokenizer_card(tokenizer, repo_id, stage=stage, stage_summary=STAGES[stage].summary,
                                            training=training, **kwargs)  # fmt: skip
