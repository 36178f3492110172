# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Image quality metrics shared by training and evaluation: PSNR ([`psnr`], and [`psnr_signed`] for the tokenizer
training logs), SSIM ([`ssim`]) and the LPIPS-VGG perceptual distance ([`LPIPS`], also the tokenizer's perceptual
loss). PSNR and SSIM need only torch and numpy; LPIPS needs weights (see [`LPIPS.from_pretrained`])."""

from .image_inputs import ImageLike
from .lpips import LPIPS, LPIPSConfig, load_perceptual_model
from .psnr import psnr, psnr_batch, psnr_signed
from .ssim import ssim, ssim_batch

__all__ = [
    "LPIPS",
    "ImageLike",
    "LPIPSConfig",
    "load_perceptual_model",
    "psnr",
    "psnr_batch",
    "psnr_signed",
    "ssim",
    "ssim_batch",
]
