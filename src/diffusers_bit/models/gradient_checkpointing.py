# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Gradient checkpointing of the models' repeated blocks."""

import torch
import torch.nn as nn


def run_block(model: nn.Module, block: nn.Module, *args) -> torch.Tensor:
    """Call `block(*args)`, through the model's gradient-checkpointing function when it is enabled and grads are on."""
    if torch.is_grad_enabled() and getattr(model, "gradient_checkpointing", False):
        return model._gradient_checkpointing_func(block, *args)
    return block(*args)
