# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Model cards for pipelines pushed to the Hub, rendered from the templates in the repository's `model_cards/`."""

from importlib import resources
from string import Template
from typing import Optional

import yaml


def card_template(name: str) -> Template:
    """A template of the repository's `model_cards/` folder (installed as `diffusers_bit.model_card_templates`)."""
    return Template((resources.files("diffusers_bit.model_card_templates") / name).read_text(encoding="utf-8"))


def table_rows(mapping: dict) -> str:
    """Markdown table rows `| key | value |` (one placeholder row when empty)."""
    return "\n".join(f"| {key} | {value} |" for key, value in mapping.items()) or "| - | - |"


def format_parameter_count(parameters) -> str:
    """`1.29B` / `0.56M` for an iterable of parameters (or a module)."""
    if hasattr(parameters, "parameters"):
        parameters = parameters.parameters()
    count = sum(p.numel() for p in parameters)
    return f"{count / 1e9:.2f}B" if count >= 1e8 else f"{count / 1e6:.2f}M" if count else "-"


def card_metadata(tags: list, pipeline_tag: str, license: str, base_model: Optional[str]) -> str:
    """YAML front matter of a card."""
    metadata = {"license": license, "library_name": "diffusers", "pipeline_tag": pipeline_tag, "tags": tags}
    if base_model:
        metadata["base_model"] = base_model
    return yaml.safe_dump(metadata, sort_keys=False).strip()


def training_section(training: Optional[dict], default_script: str) -> str:
    """The `model_cards/training.md` section for `training = {script, data, steps, hyperparameters, metrics}`."""
    if not training:
        return ""
    return card_template("training.md").substitute(
        script=training.get("script", default_script),
        data=training.get("data", "-"),
        steps=training.get("steps", "-"),
        hyperparameters=table_rows(training.get("hyperparameters", {})),
        metrics=table_rows(training.get("metrics", {})),
    )


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
    tags = ["text-to-image", "diffusers", "diffusers-bit", "instella-t2i", "binary-latent", type(pipeline).__name__]
    components = {
        f"`{name}`": f"`{type(module).__name__}` | "
        + (format_parameter_count(module) if hasattr(module, "parameters") else "-")
        for name, module in pipeline.components.items()
        if module is not None
    }
    sizes = tokenizer.sample_sizes or [tokenizer.rope_reference_size]
    return card_template("pipeline.md").substitute(
        metadata=card_metadata(tags, "text-to-image", license, base_model),
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
        components=table_rows(components),
        training=training_section(training, "train_t2i.py"),
    )


def render_tokenizer_card(
    tokenizer,
    repo_id: str,
    stage: Optional[int] = None,
    stage_summary: str = "",
    training: Optional[dict] = None,
    title: Optional[str] = None,
    description: str = "",
    license: str = "apache-2.0",
    base_model: Optional[str] = None,
) -> str:
    r"""Markdown model card (with YAML metadata) for a [`BinaryLatentTokenizer`], from `model_cards/tokenizer.md`
    (and `model_cards/training.md` for the training section).

    Args:
        stage (`int`, *optional*): The tokenizer training stage that produced the weights, with `stage_summary`.
        training (`dict`, *optional*): `script`, `data` (str), `steps`, `hyperparameters` (dict), `metrics` (dict).
    """
    config = tokenizer.config
    tags = ["diffusers-bit", "instella-t2i", "binary-latent", "image-tokenizer", "BinaryLatentTokenizer"]
    if stage is not None:
        tags.append(f"tokenizer-stage-{stage}")
    sizes = list(config.sample_sizes or [config.rope_reference_size or 512])
    decoder = [p for name, p in tokenizer.named_parameters() if not name.startswith("encoder.")]
    return card_template("tokenizer.md").substitute(
        metadata=card_metadata(tags, "image-to-image", license, base_model),
        title=title or repo_id.split("/")[-1],
        description=description,
        num_tokens=config.num_latent_tokens,
        bits_per_token=config.bits_per_token,
        latent_bytes=config.num_latent_tokens * config.bits_per_token // 8,
        sizes=", ".join(f"{s}x{s}" for s in sizes),
        parameters=format_parameter_count(tokenizer),
        encoder_parameters=format_parameter_count(tokenizer.encoder),
        decoder_parameters=format_parameter_count(decoder),
        stage="-" if stage is None else stage,
        stage_summary=stage_summary,
        repo_id=repo_id,
        encode_size=min(sizes),
        decode_size=max(sizes),
        training=training_section(training, "train_tokenizer.py"),
    )


def render_lora_card(
    pipeline_class: str,
    repo_id: str,
    base_model: str,
    lora: dict,
    training: Optional[dict] = None,
    title: Optional[str] = None,
    description: str = "",
    license: str = "apache-2.0",
    example_prompt: str = "a watercolor painting of a lighthouse at dawn",
) -> str:
    r"""Markdown model card (with YAML metadata) for a LoRA adapter of an Instella pipeline's transformer, from
    `model_cards/lora.md` (and `model_cards/training.md` for the training section).

    Args:
        pipeline_class (`str`): `InstellaT2IPipeline` or `InstellaARPipeline`.
        base_model (`str`): The pipeline the adapter was trained on (a Hub repo id goes into the metadata as
            `base_model`; a local folder is only named in the text).
        lora (`dict`): `rank`, `alpha`, `target_modules` (list), `parameters` (int), `size` (bytes), `adapter_name`.
        training (`dict`, *optional*): `script`, `data` (str), `steps`, `hyperparameters` (dict), `metrics` (dict).
    """
    tags = ["text-to-image", "diffusers", "diffusers-bit", "instella-t2i", "binary-latent", "lora", pipeline_class]
    is_repo_id = base_model.count("/") == 1 and not base_model.startswith((".", "/", "~"))
    metadata = card_metadata(tags, "text-to-image", license, base_model if is_repo_id else None)
    if is_repo_id:
        metadata += "\nbase_model_relation: adapter"
    size = lora.get("size")
    size_text = "-" if size is None else f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
    return card_template("lora.md").substitute(
        metadata=metadata,
        title=title or repo_id.split("/")[-1],
        description=description,
        pipeline_class=pipeline_class,
        base_model=base_model,
        repo_id=repo_id,
        rank=lora["rank"],
        alpha=lora["alpha"],
        adapter_parameters=f"{lora['parameters'] / 1e6:.2f}M" if lora.get("parameters") else "-",
        adapter_size=size_text,
        adapter_name=lora.get("adapter_name", "default"),
        target_modules=", ".join(f"`{name}`" for name in lora["target_modules"]),
        example_prompt=example_prompt,
        training=training_section(training, "train_t2i.py"),
    )
