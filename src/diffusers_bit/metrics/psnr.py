# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Peak signal-to-noise ratio: [`psnr`] for evaluation (any image layout, float64) and [`psnr_signed`] for the
tokenizer training logs (torch batches in [-1, 1], float32)."""

import math
from typing import Optional, Union

import numpy as np
import torch

from .image_inputs import ImageLike, image_pair, per_image_result


def psnr_batch(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    r"""Per-image PSNR in dB, `10 * log10(data_range**2 / MSE)`.

    Args:
        x, y (`torch.Tensor` of shape `(B, C, H, W)`): Images in `[0, data_range]`.
        data_range (`float`): Peak value.

    Returns:
        `torch.Tensor` of shape `(B,)`, `inf` where the images are identical.
    """
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    return torch.where(mse > 0, 10 * torch.log10(data_range**2 / mse), torch.full_like(mse, math.inf))


def psnr(a: ImageLike, b: ImageLike, data_range: Optional[float] = None) -> Union[float, np.ndarray]:
    r"""Peak signal-to-noise ratio in dB, `10 * log10(data_range**2 / MSE)`, over all pixels and channels.

    Args:
        a, b: Images of the same shape: numpy arrays / PIL images `(H, W)`, `(H, W, C)` or a batch `(N, H, W, C)`;
            torch tensors `(H, W)`, `(C, H, W)` or a batch `(B, C, H, W)`. Either both `uint8` or both floats in
            [0, 1].
        data_range (`float`, *optional*): Peak value; defaults to 255 for `uint8` and 1.0 for floats.

    Returns:
        A float (`inf` for identical images), or for a batch a `(B,)` numpy array of per-image values.
    """
    x, y, data_range, batched = image_pair(a, b, data_range)
    return per_image_result(psnr_batch(x, y, data_range), batched)


def psnr_signed(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Per-image PSNR in dB of images in [-1, 1] (computed on [0, 1], reconstructions clamped; the MSE is floored at
    1e-10, so identical images give 100 dB): the tokenizer training's validation metric.

    Args:
        reconstruction, target (`torch.Tensor` of shape `(B, 3, H, W)`): Images in [-1, 1], any float dtype.

    Returns:
        `torch.Tensor` of shape `(B,)`, float32.
    """
    rec = (reconstruction.float().clamp(-1, 1) + 1) / 2
    ref = (target.float().clamp(-1, 1) + 1) / 2
    mse = (rec - ref).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)
