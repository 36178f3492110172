# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Loaders of the Instella pipelines: LoRA adapters of the transformer (see [`~diffusers_bit.loaders.lora_pipeline`])."""

from .lora_pipeline import (
    InstellaLoraLoaderMixin,
    check_lora_state_dict,
    transformer_config_summary,
    transformer_lora_layers,
)

__all__ = ["InstellaLoraLoaderMixin", "check_lora_state_dict", "transformer_config_summary", "transformer_lora_layers"]
