# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Plumbing shared by the `accelerate launch` scripts in `training_scripts/` (`train_t2i.py`, `train_tokenizer.py`).

What lives here is the same in every script: the flags of optimisation, EMA, mixed precision, logging, checkpoints
and the Hub (with their defaults and help texts), the checks of those flags, the `Accelerator` and logging set-up,
the start of a run (output folder, resume point, seed, Hub repo), the checkpoint hooks that save models as
`save_pretrained` folders, the learning-rate schedule and the hyperparameters every model card lists: everything
before the loop. The loop itself is [`~diffusers_bit.training.loop.TrainingLoop`]; what a script trains, and how,
stays in the script.
"""

import argparse
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import diffusers
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from .checkpointing import TRAINING_STATE, remove_stale_temp_dirs, resolve_resume_checkpoint
from .data import check_train_data_dir
from .hub import create_hub_repo

logger = get_logger(__name__, log_level="INFO")

LR_SCHEDULERS = ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"]

ArgumentGroup = Union[argparse.ArgumentParser, argparse._ArgumentGroup]


# ----------------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------------
def add_optimization_args(
    group: ArgumentGroup, lr_scheduler_help: Optional[str] = None, max_grad_norm_help: Optional[str] = None
) -> None:
    r"""Add `--gradient_accumulation_steps`, `--gradient_checkpointing`, `--learning_rate`, `--lr_scheduler`,
    `--lr_warmup_steps`, the AdamW flags (`--adam_beta1`, `--adam_beta2`, `--adam_weight_decay`, `--adam_epsilon`) and
    `--max_grad_norm` to `group`. Defaults are the paper's (AdamW lr 1e-4, 1k warm-up steps, clipping 1.0).

    Args:
        group (`argparse.ArgumentParser` or argument group): Where the flags go.
        lr_scheduler_help (`str`, *optional*): Help text of `--lr_scheduler`.
        max_grad_norm_help (`str`, *optional*): Help text of `--max_grad_norm` (it says what is clipped).
    """
    group.add_argument("--gradient_accumulation_steps", type=int, default=1)
    group.add_argument("--gradient_checkpointing", action="store_true")
    group.add_argument("--learning_rate", type=float, default=1e-4)
    group.add_argument(
        "--lr_scheduler", type=str, default="constant_with_warmup", choices=LR_SCHEDULERS, help=lr_scheduler_help
    )
    group.add_argument("--lr_warmup_steps", type=int, default=1000)
    group.add_argument("--adam_beta1", type=float, default=0.9)
    group.add_argument("--adam_beta2", type=float, default=0.999)
    group.add_argument("--adam_weight_decay", type=float, default=0.0)
    group.add_argument("--adam_epsilon", type=float, default=1e-8)
    group.add_argument("--max_grad_norm", type=float, default=1.0, help=max_grad_norm_help)


def add_ema_args(group: ArgumentGroup, use_ema_help: str) -> None:
    r"""Add `--use_ema` and `--ema_decay` (0.9999) to `group`.

    Args:
        group (`argparse.ArgumentParser` or argument group): Where the flags go.
        use_ema_help (`str`): Help text of `--use_ema` (it names what the EMA is kept of and what uses it).
    """
    group.add_argument("--use_ema", action="store_true", help=use_ema_help)
    group.add_argument("--ema_decay", type=float, default=0.9999)


def add_mixed_precision_args(group: ArgumentGroup) -> None:
    """Add `--mixed_precision` (default: the accelerate config's) and `--allow_tf32` to `group`."""
    group.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Default: the accelerate config's (paper: bf16).",
    )
    group.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere+ GPUs.")


def add_logging_args(group: ArgumentGroup, tracker_project_name: str) -> None:
    r"""Add `--report_to` (tensorboard), `--logging_dir` (`logs`, inside `--output_dir`) and `--tracker_project_name`
    to `group`.

    Args:
        group (`argparse.ArgumentParser` or argument group): Where the flags go.
        tracker_project_name (`str`): Default of `--tracker_project_name` (the script's name).
    """
    group.add_argument("--report_to", type=str, default="tensorboard", help='"tensorboard", "wandb", "all" or "none".')
    group.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    group.add_argument("--tracker_project_name", type=str, default=tracker_project_name)


def add_checkpointing_args(group: ArgumentGroup) -> None:
    """Add `--checkpointing_steps` (500), `--checkpoints_total_limit` and `--resume_from_checkpoint` to `group`."""
    group.add_argument("--checkpointing_steps", type=int, default=500)
    group.add_argument("--checkpoints_total_limit", type=int, default=None)
    group.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='"latest" (the newest complete checkpoint in --output_dir, or a fresh start if none) or a '
        "checkpoint folder.",
    )


def add_hub_args(group: ArgumentGroup) -> None:
    """Add `--push_to_hub`, `--hub_model_id` (default: the name of `--output_dir`), `--hub_token` and `--hub_private`."""
    group.add_argument("--push_to_hub", action="store_true")
    group.add_argument("--hub_model_id", type=str, default=None, help="Default: the name of --output_dir.")
    group.add_argument("--hub_token", type=str, default=None)
    group.add_argument("--hub_private", action="store_true")


def check_common_args(args: argparse.Namespace, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> None:
    r"""The checks of the flags every training script has (errors name the flag), before any model or data is loaded;
    fills in the default `--hub_model_id` (the name of `--output_dir`) with `--push_to_hub`.

    Args:
        args (`argparse.Namespace`): The parsed flags.
        positive (`Sequence[str]`, *optional*): The script's own integer flags that must be >= 1 too.
        non_negative (`Sequence[str]`, *optional*): The script's own flags that must be >= 0 too.
    """
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps (a stream has no length)")
    for flag in (
        "train_batch_size",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "validation_steps",
        "num_train_epochs",
        "resolution",
        *positive,
    ):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("max_train_steps", "checkpoints_total_limit", "max_train_samples"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("lr_warmup_steps", "dataloader_num_workers", *non_negative):
        if not getattr(args, flag) >= 0:  # NaN fails too
            raise ValueError(f"--{flag} must be >= 0, got {getattr(args, flag)}")
    if not (args.adam_epsilon > 0 and math.isfinite(args.adam_epsilon)):
        raise ValueError(f"--adam_epsilon must be a finite number > 0, got {args.adam_epsilon}")
    for flag in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be in [0, 1), got {getattr(args, flag)}")
    for flag in ("learning_rate", "adam_weight_decay", "max_grad_norm"):  # lr 0 freezes the weights: allowed
        if not (getattr(args, flag) >= 0 and math.isfinite(getattr(args, flag))):
            raise ValueError(f"--{flag} must be a finite number >= 0, got {getattr(args, flag)}")
    if getattr(args, "ema_decay", None) is not None and not 0 <= args.ema_decay <= 1:
        raise ValueError(f"--ema_decay must be in [0, 1], got {args.ema_decay}")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {args.output_dir!r} is a file, not a folder")
    resume = args.resume_from_checkpoint
    if resume and resume != "latest" and not (Path(resume).is_dir() or (output_dir / resume).is_dir()):
        raise ValueError(
            f"--resume_from_checkpoint {resume!r} does not exist (neither a folder nor a checkpoint in "
            f"--output_dir {args.output_dir!r}); pass 'latest' to resume from the newest one if any"
        )
    if getattr(args, "train_data_dir", None):
        check_train_data_dir(args.train_data_dir)
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = Path(args.output_dir).resolve().name


# ----------------------------------------------------------------------------------------------------------------------
# Start of a run
# ----------------------------------------------------------------------------------------------------------------------
def _world_size_from_env() -> int:
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def has_device_accelerator() -> bool:
    """Whether torch sees a GPU-like device (CUDA/ROCm, XPU, MPS, ...)."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def accelerator_cpu_flag() -> bool:
    r"""`cpu=` for `Accelerator(...)`: `True` when several processes were launched (by `torchrun` or
    `accelerate launch --multi_gpu`) on a machine without any GPU, so accelerate sets up a gloo `MULTI_CPU` group
    instead of running every process alone. Also warns when `accelerate launch --cpu --num_processes N` started a
    single process (accelerate's `--cpu` launcher spawns several processes only through MPI)."""
    world_size = _world_size_from_env()
    if (
        world_size <= 1
        and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        and ("MASTER_ADDR" in os.environ)
    ):
        logger.warning(
            "`accelerate launch --cpu` with several processes needs MPI (`--mpirun_hostfile`); without it only ONE "
            "process runs. To run N CPU processes without MPI use `accelerate launch --multi_gpu --num_processes N "
            "--config_file training_scripts/accelerate_configs/cpu_2proc.yaml` (or torchrun)."
        )
    return world_size > 1 and not has_device_accelerator()


def scalar_config(config: dict) -> dict:
    """The entries of a run config that trackers accept as hyperparameters (numbers, strings, bools)."""
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}


def make_accelerator(args: argparse.Namespace, output_dir: Path) -> Accelerator:
    r"""The run's `Accelerator` (gradient accumulation, mixed precision and trackers from the flags, tracker logs in
    `<output_dir>/<logging_dir>`), with logging set up the diffusers way: INFO for the scripts, warnings only from
    transformers/diffusers on the local main process and errors only on the others. Applies `--allow_tf32`."""
    accelerator = Accelerator(
        cpu=accelerator_cpu_flag(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
    )
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_warning()
    else:
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    return accelerator


class RunStart(NamedTuple):
    r"""Where a run starts: `resume_path` (the checkpoint to resume from, or `None`), `seed` (the checkpoint's on
    resume, else `--seed` or a random one, the same on every process) and `repo_id` (the Hub repo created for
    `--push_to_hub`, on the main process only, else `None`)."""

    resume_path: Optional[Path]
    seed: int
    repo_id: Optional[str]


def prepare_run(accelerator: Accelerator, output_dir: Path, args: argparse.Namespace) -> RunStart:
    r"""Create `output_dir` (and delete the temp folders a killed run left there), find the checkpoint
    `--resume_from_checkpoint` designates, fix the seed (`accelerate.utils.set_seed`) and create the Hub repo for
    `--push_to_hub`. Call on every process.

    Returns:
        [`RunStart`]: `(resume_path, seed, repo_id)`.
    """
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(output_dir)
    accelerator.wait_for_everyone()
    resume_path = resolve_resume_checkpoint(output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and resume_path is None:
        logger.info(f"No complete checkpoint in {output_dir}; starting a new run")
    if resume_path is not None:
        seed = json.loads((resume_path / TRAINING_STATE.format(0)).read_text())["seed"]
    else:
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        seed = broadcast_object_list([seed])[0]  # a random seed must be the same on every process
    set_seed(seed)
    logger.info(f"seed {seed}")

    repo_id = None
    if args.push_to_hub and accelerator.is_main_process:
        repo_id = create_hub_repo(args.hub_model_id, token=args.hub_token, private=args.hub_private or None)
    return RunStart(resume_path, seed, repo_id)


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------
def register_checkpoint_hooks(
    accelerator: Accelerator,
    subfolders: dict[str, type],
    ema_model: Optional[EMAModel] = None,
    ema_subfolder: Optional[str] = None,
) -> None:
    r"""Make `accelerator.save_state` / `load_state` (and so [`save_checkpoint`] / [`load_checkpoint`]) store every
    prepared model as a `save_pretrained` folder of the checkpoint, and the EMA weights next to them.

    Args:
        accelerator (`Accelerator`): Registers the hooks.
        subfolders (`dict[str, type]`): Checkpoint subfolder -> model class, e.g. `{"tokenizer": BinaryLatentTokenizer,
            "discriminator": DinoDiscriminator}`. A prepared model goes to the first subfolder whose class it is an
            instance of, else to the first one (the model being trained); it is loaded back with
            `<class>.from_pretrained(<checkpoint>/<subfolder>)`.
        ema_model (`EMAModel`, *optional*): Saved with `save_pretrained` and loaded back in place (moved to the
            accelerator's device); its `model_cls` reads the folder.
        ema_subfolder (`str`, *optional*): Subfolder of the EMA weights; required with `ema_model`.
    """
    if ema_model is not None and not ema_subfolder:
        raise ValueError("`ema_subfolder` is required with `ema_model`")

    def subfolder_of(model) -> tuple[str, type]:
        for name, cls in subfolders.items():
            if isinstance(model, cls):
                return name, cls
        return next(iter(subfolders.items()))

    def save_model_hook(models, weights, folder):
        if accelerator.is_main_process:
            if ema_model is not None:
                ema_model.save_pretrained(os.path.join(folder, ema_subfolder))
            for model in models:
                unwrapped = accelerator.unwrap_model(model)
                unwrapped.save_pretrained(os.path.join(folder, subfolder_of(unwrapped)[0]))
                if weights:  # DeepSpeed saves its own states and passes no weights
                    weights.pop()

    def load_model_hook(models, folder):
        if ema_model is not None:
            loaded = EMAModel.from_pretrained(os.path.join(folder, ema_subfolder), ema_model.model_cls)
            ema_model.load_state_dict(loaded.state_dict())
            ema_model.to(accelerator.device)
            del loaded
        while models:  # empty under DeepSpeed, which loads its own checkpoint
            unwrapped = accelerator.unwrap_model(models.pop())
            name, cls = subfolder_of(unwrapped)
            loaded = cls.from_pretrained(os.path.join(folder, name))
            unwrapped.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


# ----------------------------------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------------------------------
def get_optimizer(args: argparse.Namespace, params) -> torch.optim.AdamW:
    r"""AdamW over `params` with the flags of [`add_optimization_args`] (`--learning_rate`, `--adam_beta1/2`,
    `--adam_weight_decay`, `--adam_epsilon`)."""
    return torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def get_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, num_processes: int):
    r"""`--lr_scheduler` with `--lr_warmup_steps` and `--max_train_steps` for `optimizer`. Both step counts are
    multiplied by `num_processes`: the prepared scheduler steps once per process at every optimizer step (diffusers'
    convention)."""
    return get_scheduler(
        args.lr_scheduler,
        optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=args.max_train_steps * num_processes,
    )


# ----------------------------------------------------------------------------------------------------------------------
# End of a run
# ----------------------------------------------------------------------------------------------------------------------
def common_hyperparameters(args: argparse.Namespace, accelerator: Accelerator, total_batch_size: int) -> dict:
    r"""The model card's hyperparameters every script shares, in the order its table lists them: learning rate and
    schedule, optimizer, clipping, batch sizes, processes, accumulation, mixed precision, gradient checkpointing, EMA.
    """
    return {
        "learning_rate": args.learning_rate,
        "lr_scheduler": args.lr_scheduler,
        "lr_warmup_steps": args.lr_warmup_steps,
        "optimizer": f"AdamW (betas=({args.adam_beta1}, {args.adam_beta2}), weight_decay={args.adam_weight_decay}, "
        f"eps={args.adam_epsilon})",
        "max_grad_norm": args.max_grad_norm,
        "train_batch_size (per device)": args.train_batch_size,
        "processes": accelerator.num_processes,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total batch size": total_batch_size,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "EMA": f"decay {args.ema_decay}" if args.use_ema else "no",
    }
