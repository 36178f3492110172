# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Images for tokenizer training: what every record yields and the target of each decode size.

Data for several decode sizes: every record yields the encoder input (`pixel_values`, the shorter edge resized to
`--resolution` and centre-cropped, straight from the original image, exactly the inference preprocessing) and, when a
decode size differs from the encoder size, `source`: the same centre crop taken from the original at the largest
decode size, kept as `uint8` (4x less memory and transfer than floats). The target of a step decoding at size `d` is
`pixel_values` when `d` is the encoder size, `source` when `d` is the largest size, and otherwise `source` resized to
`d` on the device (bicubic, antialiased, clamped to [-1, 1]). All targets therefore show the same region of the
original image; a source smaller than the largest size is upsampled once (images under `--min_image_size` are
skipped).
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import SkipSample, derive_seed, load_image, lookup_image, preprocess_image, resize_and_center_crop
from .tokenizer_stages import DECODE_SIZE_STREAM


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
        raise ValueError(
            f"decode size {size} differs from the encoder size {pixels.shape[-1]} but the batch has no source images"
        )
    source = batch["source"].to(device).float() / 127.5 - 1.0
    return resize_images(source, size)


def sample_decode_size(sizes: Sequence[int], seed: int, epoch: int, batch_index: int) -> int:
    r"""The decode size of a micro-batch: uniform over `sizes`, a pure function of `(seed, epoch, batch_index)` (no
    process index: all processes decode at the same size)."""
    if len(sizes) == 1:
        return int(sizes[0])
    rng = np.random.default_rng(derive_seed(seed, epoch, batch_index, DECODE_SIZE_STREAM))
    return int(sizes[int(rng.integers(len(sizes)))])
