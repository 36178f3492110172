# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""What kind of text encoder a transformers model is: the one rule that decides left or right padding (pipelines,
training text features) and the `Auto` class a text encoder is loaded with (presets, training components).

Decoder-only language models (AMD-OLMo for the released weights) are padded on the left, as the authors do, and loaded
with `AutoModelForCausalLM`; encoders (BERT-style, e.g. all-MiniLM-L6-v2) are padded on the right and loaded with
`AutoModel`.
"""


def is_causal_lm(model_or_config) -> bool:
    r"""Whether `model_or_config` is a decoder-only (causal) language model: its class is a `*CausalLM` (for a
    `PretrainedConfig`, not yet instantiated: one of the `architectures` it was saved with), or its config says
    `is_decoder`.

    Args:
        model_or_config: A transformers model (any object with an optional `config`) or a `PretrainedConfig`.
    """
    from transformers import PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        config, class_names = model_or_config, list(model_or_config.architectures or [])
    else:
        config, class_names = getattr(model_or_config, "config", None), [type(model_or_config).__name__]
    return any("CausalLM" in name for name in class_names) or bool(getattr(config, "is_decoder", False))


def text_padding_side(text_encoder) -> str:
    """`"left"` for a causal LM (see [`is_causal_lm`]), `"right"` for an encoder."""
    return "left" if is_causal_lm(text_encoder) else "right"


def auto_text_model_class(config):
    """`transformers.AutoModelForCausalLM` for a causal LM's config (see [`is_causal_lm`]), else `AutoModel`."""
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if is_causal_lm(config) else AutoModel
