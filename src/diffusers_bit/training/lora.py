# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""LoRA fine-tuning of a generator in `train_t2i.py` (`--use_lora`), on diffusers' machinery: `peft.LoraConfig` and
the model's `add_adapter` (`PeftAdapterMixin`), `get_peft_model_state_dict` / `set_peft_model_state_dict`,
`convert_state_dict_to_diffusers` and the pipelines' `save_lora_weights` ([`InstellaLoraLoaderMixin`]).

- Flags (`--use_lora`, `--rank`, `--lora_alpha`, `--lora_dropout`, `--lora_target_modules`) and their checks, the
  target modules checked against the generator's architecture before any weights load ([`check_lora_targets`]: a
  skeleton on the meta device).
- [`add_lora_adapter`]: the base weights frozen, in the training dtype; the adapter in float32.
- Checkpoints ([`register_lora_checkpoint_hooks`]):
  `checkpoint-<step>/transformer_lora/pytorch_lora_weights.safetensors` (diffusers' format, float32, loaded back
  into the adapter exactly) and, with `--use_ema`,
  `checkpoint-<step>/transformer_lora_ema/` (the EMA of the adapter: its tensors by parameter name and its counters).
- The end: `pytorch_lora_weights.safetensors` in the output folder (the EMA weights with `--use_ema`) and its model
  card naming the base model ([`write_lora_model_card`]).
"""

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..loaders.lora_pipeline import transformer_lora_layers
from ..model_card import render_lora_card
from ..models.lora import DEFAULT_LORA_TARGET_MODULES, resolve_lora_targets

LORA_CHECKPOINT_FOLDER = "transformer_lora"
LORA_EMA_FOLDER = "transformer_lora_ema"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
EMA_WEIGHTS, EMA_STATE = "ema_weights.safetensors", "ema_state.json"
ADAPTER_NAME = "default"  # the adapter `add_adapter` creates; loading the result elsewhere may name it anything
DEFAULT_RANK = 16


# ----------------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------------
def add_lora_args(group) -> None:
    """Add `--use_lora`, `--rank`, `--lora_alpha`, `--lora_dropout` and `--lora_target_modules` to `group`."""
    group.add_argument(
        "--use_lora",
        action="store_true",
        help="Train a LoRA adapter of the generator of --pretrained_model_name_or_path: its weights "
        "stay frozen (in the training dtype) and the output folder holds "
        "pytorch_lora_weights.safetensors (diffusers' LoRA format, load with "
        "pipe.load_lora_weights) instead of a pipeline.",
    )
    group.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default {DEFAULT_RANK}).")
    group.add_argument(
        "--lora_alpha",
        type=float,
        default=None,
        help="LoRA alpha: the adapter's update is scaled by alpha / rank (default: the rank).",
    )
    group.add_argument("--lora_dropout", type=float, default=None, help="Dropout on the adapter's input (default 0).")
    group.add_argument(
        "--lora_target_modules",
        type=str,
        nargs="+",
        default=None,
        help="Linear layers to adapt, as peft matches them (a module named X or ending in .X). Default: "
        f"{' '.join(DEFAULT_LORA_TARGET_MODULES)} (the attention and feed-forward linears of every "
        "block).",
    )


def check_lora_args(args: argparse.Namespace) -> None:
    r"""The LoRA flags' checks that need no model (errors name the flag); fills in the defaults with `--use_lora`."""
    flags = ("rank", "lora_alpha", "lora_dropout", "lora_target_modules")
    if not args.use_lora:
        given = [f"--{flag}" for flag in flags if getattr(args, flag) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --use_lora")
        return
    if args.pretrained_model_name_or_path is None or args.preset is not None:
        raise ValueError(
            "--use_lora adapts the generator of a trained pipeline: pass --pretrained_model_name_or_path "
            "and no --preset"
        )
    args.rank = DEFAULT_RANK if args.rank is None else args.rank
    if args.rank < 1:
        raise ValueError(f"--rank must be >= 1, got {args.rank}")
    args.lora_alpha = float(args.rank) if args.lora_alpha is None else args.lora_alpha
    if not (math.isfinite(args.lora_alpha) and args.lora_alpha > 0):
        raise ValueError(f"--lora_alpha must be a finite number > 0, got {args.lora_alpha}")
    args.lora_dropout = 0.0 if args.lora_dropout is None else args.lora_dropout
    if not 0 <= args.lora_dropout < 1:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if args.lora_target_modules is not None and not args.lora_target_modules:
        raise ValueError("--lora_target_modules needs at least one name")


def generator_skeleton(plan, model: str) -> nn.Module:
    r"""The pretrained generator of a [`ComponentPlan`] built on the meta device from its `config.json` (no weights
    are read): its module names and layer shapes."""
    from .components import GENERATOR_CLASSES, _read_json

    config = _read_json(plan.pretrained, "transformer/config.json", plan.revision, plan.cache_dir)
    if config is None:
        raise ValueError(f"`--pretrained_model_name_or_path` {plan.pretrained!r} has no transformer/config.json")
    with torch.device("meta"):
        return GENERATOR_CLASSES[model].from_config(config)


def check_lora_targets(plan, model: str, targets: Optional[list]) -> list:
    r"""`--lora_target_modules` (or the defaults) checked against the pretrained generator's architecture before any
    weights load; returns the list. A name that matches no linear layer is an error naming the flag and listing the
    available names."""
    return resolve_lora_targets(generator_skeleton(plan, model), targets, flag="--lora_target_modules")


# ----------------------------------------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------------------------------------
def add_lora_adapter(transformer: nn.Module, args: argparse.Namespace, base_dtype: torch.dtype) -> list:
    r"""Freeze `transformer` in `base_dtype` (the training dtype), add the LoRA adapter of the flags (peft's default
    initialisation: `lora_B = 0`, so training starts at the base model) and return its parameters, in float32 (the
    trained ones, in a fixed order)."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.to(dtype=base_dtype)
    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=list(args.lora_target_modules),
        init_lora_weights=True,
    )
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.float()
    return trainable


def trainable_names(transformer: nn.Module) -> list[str]:
    """Names of the parameters that train, in `parameters()` order (the order of the EMA's shadow parameters)."""
    return [name for name, p in transformer.named_parameters() if p.requires_grad]


def load_adapter_weights(transformer: nn.Module, state_dict: dict, source: str) -> None:
    r"""Copy a LoRA state dict (diffusers' format, `transformer.`-prefixed, or peft's) into the transformer's adapter
    `default` (`set_peft_model_state_dict`); every adapter tensor must be there and nothing else."""
    from peft.utils import set_peft_model_state_dict

    state_dict = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    result = set_peft_model_state_dict(transformer, state_dict, adapter_name=ADAPTER_NAME)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora" in k]
    missing = [k for k in getattr(result, "missing_keys", []) if "lora" in k and f".{ADAPTER_NAME}." in k]
    if unexpected or missing:
        raise ValueError(
            f"{source} does not fit the adapter being trained (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}): was it written with other --rank / --lora_target_modules?"
        )


def save_adapter(pipeline_cls, transformer: nn.Module, folder) -> Path:
    r"""`pipeline_cls.save_lora_weights(folder, ...)` of the transformer's adapter; returns the file."""
    pipeline_cls.save_lora_weights(str(folder), **transformer_lora_layers(transformer, ADAPTER_NAME))
    return Path(folder) / LORA_WEIGHT_NAME


def _save_ema(ema_model, names: list, folder: str) -> None:
    import safetensors.torch

    os.makedirs(folder, exist_ok=True)
    tensors = {name: p.detach().cpu().contiguous() for name, p in zip(names, ema_model.shadow_params)}
    safetensors.torch.save_file(tensors, os.path.join(folder, EMA_WEIGHTS))
    state = {k: v for k, v in ema_model.state_dict().items() if k != "shadow_params"}
    Path(folder, EMA_STATE).write_text(json.dumps({**state, "names": names}, indent=2) + "\n")


def _load_ema(ema_model, names: list, folder: str, device) -> None:
    import safetensors.torch

    tensors = safetensors.torch.load_file(os.path.join(folder, EMA_WEIGHTS))
    state = json.loads(Path(folder, EMA_STATE).read_text())
    if state.pop("names") != names or set(tensors) != set(names):
        raise ValueError(
            f"the adapter EMA in {folder} was written for other adapter parameters (other --rank / "
            "--lora_target_modules?)"
        )
    ema_model.load_state_dict({**state, "shadow_params": [tensors[name] for name in names]})
    ema_model.to(device)


def register_lora_checkpoint_hooks(accelerator, pipeline_cls, ema_model=None, ema_names: Optional[list] = None) -> None:
    r"""Make `accelerator.save_state` / `load_state` store the prepared transformer's adapter (not its frozen base) as
    `<checkpoint>/transformer_lora/pytorch_lora_weights.safetensors` and the adapter's EMA in
    `<checkpoint>/transformer_lora_ema/`, and load both back exactly (the counterpart of
    [`~diffusers_bit.training.script_utils.register_checkpoint_hooks`] for `--use_lora`).

    Args:
        pipeline_cls: The pipeline class whose `save_lora_weights` / `lora_state_dict` read and write the files.
        ema_model (`EMAModel`, *optional*): The EMA of the adapter parameters, and `ema_names` their names.
    """

    def save_model_hook(models, weights, folder):
        if accelerator.is_main_process:
            for model in models:
                unwrapped = accelerator.unwrap_model(model)
                save_adapter(pipeline_cls, unwrapped, os.path.join(folder, LORA_CHECKPOINT_FOLDER))
                if weights:  # DeepSpeed saves its own states and passes no weights
                    weights.pop()
            if ema_model is not None:
                _save_ema(ema_model, ema_names, os.path.join(folder, LORA_EMA_FOLDER))

    def load_model_hook(models, folder):
        path = os.path.join(folder, LORA_CHECKPOINT_FOLDER)
        while models:  # empty under DeepSpeed, which loads its own checkpoint
            model = accelerator.unwrap_model(models.pop())
            load_adapter_weights(model, pipeline_cls.lora_state_dict(path), path)
        if ema_model is not None:
            _load_ema(ema_model, ema_names, os.path.join(folder, LORA_EMA_FOLDER), accelerator.device)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


class TrainableParameters:
    r"""What the EMA of a partly trained model tracks (for [`TrainingLoop`]'s `ema_target`): `parameters()` yields
    the given parameters (the adapter's), in a fixed order."""

    def __init__(self, parameters):
        self._parameters = list(parameters)

    def parameters(self):
        return iter(self._parameters)


# ----------------------------------------------------------------------------------------------------------------------
# The end of a run
# ----------------------------------------------------------------------------------------------------------------------
def lora_summary(args: argparse.Namespace, trainable: list, weight_file: Optional[Path] = None) -> dict:
    """What the model card and the results report of the adapter: rank, alpha, targets, parameters, file size."""
    return {
        "rank": args.rank,
        "alpha": args.lora_alpha,
        "dropout": args.lora_dropout,
        "target_modules": list(args.lora_target_modules),
        "parameters": sum(p.numel() for p in trainable),
        "size": None if weight_file is None else Path(weight_file).stat().st_size,
        "adapter_name": re.sub(r"\W", "_", Path(args.output_dir).resolve().name),
    }


def write_lora_model_card(
    folder, pipeline_class: str, repo_id: str, base_model: str, lora: dict, training: dict, description: str = ""
) -> Path:
    """Render the adapter's card ([`render_lora_card`]) into `<folder>/README.md`."""
    path = Path(folder) / "README.md"
    path.write_text(
        render_lora_card(pipeline_class, repo_id, base_model, lora, training=training, description=description),
        encoding="utf-8",
    )
    return path
