# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Architecture presets: the JSON configs under the repository's `pipelines/` folder (installed as
`diffusers_bit.preset_data`) are the single source of truth for model sizes.

A preset is a folder laid out like a diffusers pipeline, with configs and no weights:
`image_tokenizer/config.json`, `transformer/config.json` (BinaryDiT), `ar_transformer/config.json`,
`scheduler/scheduler_config.json`, and for presets that bring their own text encoder, `text_encoder/config.json` and a
`tokenizer/` folder.

- `instella-t2i`: the released Instella-T2I models (0.43B tokenizer, 1.29B diffusion, 0.88B AR; AMD-OLMo-1B text).
- `tiny`: a few-MB architecture with a tiny OLMo text encoder and a byte-level text tokenizer, for tests and the
  offline demo.
"""

import json
import os
from importlib import resources
from pathlib import Path
from typing import Union

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
