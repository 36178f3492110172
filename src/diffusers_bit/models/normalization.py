# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""RMSNorm, the normalisation of the tokenizer blocks, the AR transformer and every attention's queries and keys."""

import torch
import torch.nn as nn


class RMSNorm(nn.Module):
    r"""Root-mean-square normalisation over the last dimension.

    The statistics are computed in float32 and the result is cast back to the input dtype before the learned scale is
    applied (the Llama convention the released Instella-T2I weights were trained with).

    Args:
        dim (`int`): Size of the normalised (last) dimension.
        eps (`float`, defaults to 1e-6): Added to the mean square for numerical stability.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states` `(..., dim)` -> `(..., dim)`."""
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
