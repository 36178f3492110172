# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Model cards for pipelines pushed to the Hub, rendered from the templates in the repository's `model_cards/`."""

from importlib import resources
from string import Template
from typing import Optional

import yaml


def _template(name: str) -> Template:
    return Template((resources.files("diffusers_bit.model_card_templates") / name).read_text(encoding="utf-8"))


def _rows(mapping: dict) -> str:
    return "\n".join(f"| {key} | {value} |" for key, value in mapping.items()) or "| - | - |"


def _params(module) -> str:
    count = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.2f}M" if count else "-"


def render_model_card(
    pipeline,
    repo_id: str,
    title: Optional[str] = None,
    description: str = "",
    training: Optional[dict] = None,
    license: str = "apache-2.0",
    base_model: Optional[str] = None,
    example_prompt: str = "a watercolor painting of a lighthouse at dawn",
) -> str:
    r"""Markdown model card (with YAML metadata) for an Instella pipeline.

    Args:
        pipeline: An [`InstellaT2IPipeline`] or [`InstellaARPipeline`].
        repo_id (`str`): Hub repository the card describes.
        training (`dict`, *optional*): Adds a training section. Keys: `script`, `data` (str), `steps` (int or str),
            `hyperparameters` (dict), `metrics` (dict).
    """
    tokenizer = pipeline.image_tokenizer.config
    metadata = {
        "license": license,
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["text-to-image", "diffusers", "diffusers-bit", "instella-t2i", "binary-latent", type(pipeline).__name__],
    }
    if base_model:
        metadata["base_model"] = base_model
    components = {
        f"`{name}`": f"`{type(module).__name__}` | {_params(module)}"
        for name, module in pipeline.components.items()
        if module is not None
    }
    training_section = ""
    if training:
        training_section = _template("training.md").substitute(
            script=training.get("script", "train_t2i.py"),
            data=training.get("data", "-"),
            steps=training.get("steps", "-"),
            hyperparameters=_rows(training.get("hyperparameters", {})),
            metrics=_rows(training.get("metrics", {})),
        )
    sizes = tokenizer.sample_sizes or [tokenizer.rope_reference_size]
    return _template("pipeline.md").substitute(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=title or repo_id.split("/")[-1],
        description=description,
        pipeline_class=type(pipeline).__name__,
        num_tokens=tokenizer.num_latent_tokens,
        bits_per_token=tokenizer.bits_per_token,
        latent_bytes=tokenizer.num_latent_tokens * tokenizer.bits_per_token // 8,
        sizes=", ".join(f"{s}x{s}" for s in sizes),
        repo_id=repo_id,
        example_prompt=example_prompt,
        sampling_defaults=pipeline.sampling_defaults_text(),
        components="\n".join(f"| {k} | {v} |" for k, v in components.items()),
        training=training_section,
    )
