# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Tensors in [-1, 1] to PIL images."""

import torch


def tensor_to_pil(images: torch.Tensor) -> list:
    """`(B, 3, H, W)` in [-1, 1] -> list of RGB `PIL.Image`s."""
    from PIL import Image  # noqa: PLC0415  (PIL only when images are made)

    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    return [Image.fromarray(a.numpy()) for a in array]
