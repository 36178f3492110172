# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Structural similarity (Wang et al. 2004): the standard Gaussian-window SSIM with the settings of
`skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`, in torch
(it matches scikit-image to float precision)."""

from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .image_inputs import ImageLike, image_pair, per_image_result


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """The normalised 1D Gaussian window `(2 * radius + 1,)`, float64, `radius = int(truncate * sigma + 0.5)` (11 taps
    for sigma 1.5, as scikit-image)."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return window / window.sum()


def ssim_batch(x: torch.Tensor, y: torch.Tensor, data_range: float, sigma: float = 1.5) -> torch.Tensor:
    r"""Per-image SSIM.

    Args:
        x, y (`torch.Tensor` of shape `(B, C, H, W)`): Images in `[0, data_range]`, at least 11x11 pixels.
        data_range (`float`): Peak value (sets `C1 = (0.01 * data_range) ** 2`, `C2 = (0.03 * data_range) ** 2`).
        sigma (`float`, defaults to 1.5): Width of the Gaussian window.

    Returns:
        `torch.Tensor` of shape `(B,)`: the SSIM map averaged over the window positions inside the image and over
        channels.
    """
    window = gaussian_window(sigma)
    size, channels = window.numel(), x.shape[1]
    if min(x.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size} pixels, got {tuple(x.shape[-2:])}")
    rows = window.view(1, 1, size, 1).repeat(channels, 1, 1, 1)
    cols = window.view(1, 1, 1, size).repeat(channels, 1, 1, 1)

    def blur(t):  # separable Gaussian, valid region only (= skimage's filter followed by its border crop)
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def ssim(a: ImageLike, b: ImageLike, data_range: Optional[float] = None) -> Union[float, np.ndarray]:
    r"""Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), `K1 = 0.01`,
    `K2 = 0.03`, population (co)variances, averaged over the window positions inside the image and over channels.
    Equal to `skimage.metrics.structural_similarity(a, b, data_range=..., channel_axis=-1, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)`.

    Args:
        a, b: Images of at least 11x11 pixels, laid out as for [`~diffusers_bit.metrics.psnr`]; `uint8` or floats
            in [0, 1].
        data_range (`float`, *optional*): Defaults to 255 for `uint8` and 1.0 for floats.

    Returns:
        A float in [-1, 1] (1 for identical images), or for a batch a `(B,)` numpy array.
    """
    x, y, data_range, batched = image_pair(a, b, data_range)
    return per_image_result(ssim_batch(x, y, data_range), batched)
