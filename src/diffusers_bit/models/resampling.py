# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""2x token down/up-sampling on the tokenizer's image grid: the released tokenizer's convolutional "DC" blocks and the
paper's linear 2x2 merge/split. Every block maps tokens `(B, h * w, C)` laid row-major on an `h x w` grid to the
halved or doubled grid; [`RESAMPLE_BLOCKS`] names the `(down, up)` pair of each `resample_type`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class DCDownBlock(nn.Module):
    r"""Halve the token grid: a 3x3 stride-2 convolution plus a 2x2 average-pool shortcut (the released tokenizer's
    "DC down block"). Tokens `(B, h*w, C)` on an `h x w` grid -> `(B, h/2 * w/2, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = tokens.transpose(1, 2).unflatten(2, (height, width))
        out = self.conv(grid) + F.avg_pool2d(grid, 2)
        return out.flatten(2).transpose(1, 2)


class DCUpBlock(nn.Module):
    r"""Double the token grid: a 3x3 convolution to 4x width followed by pixel-shuffle, plus a nearest-neighbour
    shortcut (the released tokenizer's "DC up block"). Tokens `(B, h*w, C)` -> `(B, 2h * 2w, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, 4 * dim, kernel_size=3, stride=1, padding=1)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        grid = tokens.transpose(1, 2).unflatten(2, (height, width))
        out = F.pixel_shuffle(self.conv(grid), 2) + F.interpolate(grid, scale_factor=2, mode="nearest")
        return out.flatten(2).transpose(1, 2)


class LinearDownBlock(nn.Module):
    r"""Halve the token grid with the paper's linear 2x2 merge (Eq. 2): the four tokens
    `[x(2i,2j); x(2i+1,2j); x(2i,2j+1); x(2i+1,2j+1)]` are concatenated and mapped `4C -> C`.
    Tokens `(B, h*w, C)` -> `(B, h/2 * w/2, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = tokens.shape
        grid = tokens.view(b, height // 2, 2, width // 2, 2, c)  # (B, i, di, j, dj, C)
        merged = grid.permute(0, 1, 3, 4, 2, 5).reshape(b, (height // 2) * (width // 2), 4 * c)
        return self.proj(merged)


class LinearUpBlock(nn.Module):
    r"""Double the token grid with the paper's linear split (Eq. 3): each token is mapped `C -> 4C` and split into a
    2x2 group, in the order of [`LinearDownBlock`]. Tokens `(B, h*w, C)` -> `(B, 2h * 2w, C)`."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 4 * dim, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, _, c = tokens.shape
        split = self.proj(tokens).view(b, height, width, 2, 2, c)  # (B, i, j, dj, di, C)
        return split.permute(0, 1, 4, 2, 3, 5).reshape(b, 4 * height * width, c)


RESAMPLE_BLOCKS = {"dc": (DCDownBlock, DCUpBlock), "linear": (LinearDownBlock, LinearUpBlock)}
