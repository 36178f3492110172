# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The image inputs [`~diffusers_bit.metrics.psnr`] and [`~diffusers_bit.metrics.ssim`] accept, as float64 batches.

Images are `uint8` (range 255) or floats in [0, 1] (range 1); numpy arrays and PIL images are channel-last, torch
tensors channel-first.
"""

from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

ImageLike = Union[np.ndarray, torch.Tensor, Image.Image]


def as_image_batch(image: ImageLike, name: str) -> tuple[torch.Tensor, bool, bool]:
    r"""`image` as a float64 batch.

    Args:
        image: A numpy array / PIL image `(H, W)`, `(H, W, C)` or `(N, H, W, C)`, or a torch tensor `(H, W)`,
            `(C, H, W)` or `(B, C, H, W)`.
        name (`str`): The argument named in errors.

    Returns:
        `(batch, is_uint8, batched)`: the `(B, C, H, W)` float64 tensor, whether the input was uint8, and whether it
        was a batch.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        is_uint8 = image.dtype == np.uint8
        if image.ndim not in (2, 3, 4):
            raise ValueError(f"`{name}` must be (H, W), (H, W, C) or (N, H, W, C), got shape {image.shape}")
        batched = image.ndim == 4
        tensor = torch.from_numpy(np.array(image, dtype=np.float64))
        tensor = tensor[..., None] if image.ndim == 2 else tensor
        tensor = tensor.movedim(-1, -3)
    elif isinstance(image, torch.Tensor):
        is_uint8 = image.dtype == torch.uint8
        if image.ndim not in (2, 3, 4):
            raise ValueError(f"`{name}` must be (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
        batched = image.ndim == 4
        tensor = image.detach().cpu().to(torch.float64)
        tensor = tensor[None] if image.ndim == 2 else tensor
    else:
        raise TypeError(f"`{name}` must be a numpy array, torch tensor or PIL image, got {type(image).__name__}")
    return (tensor if batched else tensor[None]), is_uint8, batched


def image_pair(
    a: ImageLike, b: ImageLike, data_range: Optional[float]
) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    r"""Two images of the same shape as `(B, C, H, W)` float64 batches `(x, y, data_range, batched)`; `data_range`
    defaults to 255 for `uint8` and 1.0 for floats (both images must then be of the same kind)."""
    x, x_uint8, batched = as_image_batch(a, "a")
    y, y_uint8, _ = as_image_batch(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"images must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if data_range is None:
        if x_uint8 != y_uint8:
            raise ValueError("one image is uint8 and the other is not; convert both or pass `data_range`")
        data_range = 255.0 if x_uint8 else 1.0
    if data_range <= 0:
        raise ValueError(f"`data_range` must be positive, got {data_range}")
    return x, y, float(data_range), batched


def per_image_result(values: torch.Tensor, batched: bool) -> Union[float, np.ndarray]:
    """`(B,)` per-image values as a `(B,)` numpy array for a batch input, else the single value as a float."""
    return values.numpy() if batched else float(values[0])
