# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""LoRA support of the generators ([`BinaryDiT`], [`BinaryARTransformer`]), on top of diffusers' `PeftAdapterMixin`
(`add_adapter`, `load_lora_adapter`, `set_adapters`, `fuse_lora`, ...):

- which linear layers an adapter targets by default ([`DEFAULT_LORA_TARGET_MODULES`]: the attention and feed-forward
  projections of every block) and the check of a target list against a model ([`resolve_lora_targets`]);
- the run-time LoRA scale of diffusers' convention, `attention_kwargs={"scale": s}`, applied for the duration of one
  call by [`apply_lora_scale`] (the models' `forward` and `prepare_text_kv`). Unlike diffusers' own
  `scale_lora_layers` / `unscale_lora_layers` pair, the scalings of the layers are restored exactly afterwards, also
  after `scale=0` and with the adapter weights of `set_adapters`.

`peft` is imported only where an adapter is present.
"""

import contextlib
import functools
import inspect
import math
import re
from typing import Iterable, Optional, Sequence

import torch.nn as nn

# the attention (queries, keys/values of image and text tokens, output) and feed-forward linears of every block
DEFAULT_LORA_TARGET_MODULES = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out", "ff.net.0.proj", "ff.net.2")
ATTENTION_KWARGS = ("scale",)  # the keys `attention_kwargs` may hold
_BLOCK_PREFIX = re.compile(r"^transformer_blocks\.\d+\.")


def lora_scale_of(attention_kwargs: Optional[dict]) -> float:
    r"""The LoRA scale in `attention_kwargs` (`{"scale": s}`; 1.0 when absent). Raises a `ValueError` / `TypeError`
    naming `attention_kwargs` for anything else (unknown keys, a scale that is not a finite number)."""
    if attention_kwargs is None:
        return 1.0
    if not isinstance(attention_kwargs, dict):
        raise TypeError(
            f"`attention_kwargs` must be a dict such as {{'scale': 0.5}}, got {type(attention_kwargs).__name__}"
        )
    unknown = sorted(set(attention_kwargs) - set(ATTENTION_KWARGS))
    if unknown:
        raise ValueError(
            f"`attention_kwargs` has unknown keys {unknown}; supported: {list(ATTENTION_KWARGS)} "
            "(`scale`: the weight of the LoRA adapters)"
        )
    scale = attention_kwargs.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"`attention_kwargs['scale']` must be a finite number, got {scale!r}")
    return float(scale)


def _lora_layers(model: nn.Module) -> list:
    if not getattr(model, "_hf_peft_config_loaded", False):
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        m for m in model.modules() if isinstance(m, BaseTunerLayer) and isinstance(getattr(m, "scaling", None), dict)
    ]


@contextlib.contextmanager
def scaled_lora_layers(model: nn.Module, scale: float):
    r"""Multiply the scaling of every LoRA layer of `model` by `scale` for the duration (diffusers'
    `scale_lora_layers`), then put the saved scalings back exactly. A no-op for `scale == 1` or without adapters."""
    layers = [] if scale == 1.0 else _lora_layers(model)
    if not layers:
        yield
        return
    from diffusers.utils.peft_utils import scale_lora_layers

    saved = [dict(layer.scaling) for layer in layers]
    scale_lora_layers(model, scale)
    try:
        yield
    finally:
        for layer, scaling in zip(layers, saved):
            layer.scaling.clear()
            layer.scaling.update(scaling)


def apply_lora_scale(method):
    r"""Decorator of a model method with an `attention_kwargs` argument: runs it with the LoRA layers scaled by
    `attention_kwargs["scale"]` (see [`scaled_lora_layers`]); `attention_kwargs` is checked first."""
    position = list(inspect.signature(method).parameters).index("attention_kwargs")  # `self` is position 0

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        attention_kwargs = args[position - 1] if len(args) >= position else kwargs.get("attention_kwargs")
        scale = lora_scale_of(attention_kwargs)
        if scale == 1.0:  # the common case: nothing to scale, no context manager in the way
            return method(self, *args, **kwargs)
        with scaled_lora_layers(self, scale):
            return method(self, *args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------------------------------
# Target modules
# ----------------------------------------------------------------------------------------------------------------------
def lora_target_names(model: nn.Module) -> list[str]:
    r"""The names a LoRA target list can use for `model`: its linear layers, those of the blocks without the
    `transformer_blocks.<i>.` prefix (`attn.to_q`, `ff.net.2`, ...), in model order."""
    names = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".lora_" not in name and not name.endswith(".base_layer"):
            names.setdefault(_BLOCK_PREFIX.sub("", name), None)
    return list(names)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)  # how peft matches a list of target module names


def resolve_lora_targets(
    model: nn.Module, targets: Optional[Sequence[str]] = None, flag: str = "--lora_target_modules"
) -> list[str]:
    r"""Check a LoRA target list against `model` before any adapter is added: every entry must name linear layers
    (peft's rule: a module named `entry` or ending in `.entry`). Returns the list (the defaults when `None`).

    Raises:
        `ValueError` naming `flag`, the entries that match no linear layer (or also match other modules) and the
        available names (see [`lora_target_names`]).
    """
    targets = list(DEFAULT_LORA_TARGET_MODULES if targets is None else targets)
    if not targets:
        raise ValueError(f"`{flag}` is empty; available: {', '.join(lora_target_names(model))}")
    modules = dict(model.named_modules())
    bad = []
    for target in targets:
        matched = [module for name, module in modules.items() if name and _matches(name, target)]
        if not matched or not all(isinstance(module, nn.Linear) for module in matched):
            bad.append(target)
    if bad:
        raise ValueError(
            f"`{flag}` {bad} match no linear layer of {type(model).__name__} (or not only linear "
            f"layers); available: {', '.join(lora_target_names(model))}"
        )
    return targets


def matched_lora_modules(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """The full names of the linear layers of `model` a target list adapts."""
    targets = list(targets)
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(_matches(name, t) for t in targets)
    ]
