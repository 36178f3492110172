# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""The SwiGLU MLP of the tokenizer blocks (the generators use diffusers' `FeedForward`)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class SwiGLU(nn.Module):
    r"""Bias-free SwiGLU MLP: `down(silu(gate(x)) * up(x))`.

    Args:
        dim (`int`): Input and output width.
        hidden_dim (`int`): Inner width.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(..., dim)` -> `(..., dim)`."""
        return self.down_proj(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))
