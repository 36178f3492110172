# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Image grids: plain (training validation) or with a caption under every image (the demo)."""

import math
import textwrap
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont


def image_grid(
    images: Sequence[Image.Image],
    cols: Optional[int] = None,
    captions: Optional[Sequence[str]] = None,
    scale: int = 1,
) -> Image.Image:
    r"""Paste same-size images into a grid (`cols` per row, default: about square).

    Args:
        images (`list[PIL.Image.Image]`): Images of one size.
        cols (`int`, *optional*): Images per row.
        captions (`list[str]`, *optional*): One caption per image, written under it (wrapped to the cell width).
        scale (`int`, defaults to 1): Integer upscaling of every image (nearest neighbour), so that small images stay
            legible next to their captions.
    """
    if not images:
        raise ValueError("no images to put in a grid")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"`scale` must be an int >= 1, got {scale!r}")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    width, height = width * scale, height * scale
    font = ImageFont.load_default()
    line_height, lines = 0, []
    if captions is not None:
        chars = max(8, width // 6)
        lines = [textwrap.wrap(caption, chars) or [""] for caption in captions]
        line_height = 12
    label = line_height * max((len(c) for c in lines), default=0) + (4 if captions is not None else 0)
    grid = Image.new("RGB", (cols * width, rows * (height + label)), "white")
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        x, y = (i % cols) * width, (i // cols) * (height + label)
        image = image.convert("RGB")
        if scale != 1:
            image = image.resize((width, height), Image.NEAREST)
        grid.paste(image, (x, y))
        for j, line in enumerate(lines[i] if lines else []):
            draw.text((x + 2, y + height + 2 + j * line_height), line, fill="black", font=font)
    return grid
