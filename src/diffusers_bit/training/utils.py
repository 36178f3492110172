# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Small helpers shared by the training scripts: dtypes, logging of scalars and image grids, running means."""

import logging
import os
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..utils.image_grid import image_grid  # noqa: F401  (re-exported: the training scripts' validation grids)

logger = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weight_dtype_for(mixed_precision: Optional[str]) -> torch.dtype:
    """Dtype of the frozen models under `--mixed_precision` (the trained model keeps float32 master weights)."""
    return WEIGHT_DTYPES.get(mixed_precision or "no", torch.float32)


def log_image_grid(accelerator, tag: str, grid: Image.Image, step: int, caption: str = "") -> None:
    """Send an image to every tracker that takes images (tensorboard: an image summary; wandb: `wandb.Image`)."""
    array = np.asarray(grid.convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({tag: array[None]}, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({tag: [wandb.Image(grid, caption=caption)]}, step=step)


def scalar_config(config: dict) -> dict:
    """The entries of a run config that trackers accept as hyperparameters (numbers, strings, bools)."""
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}


class RunningMean:
    """Exponential moving average of a scalar (`decay=0` gives the last value); `value` is `nan` before any update."""

    def __init__(self, decay: float = 0.9, value: float = float("nan"), count: int = 0):
        self.decay, self.value, self.count = decay, value, count

    def update(self, x: float) -> float:
        self.value = x if self.count == 0 else self.decay * self.value + (1 - self.decay) * x
        self.count += 1
        return self.value

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value, "count": self.count}

    @classmethod
    def from_state_dict(cls, state: dict) -> "RunningMean":
        return cls(state["decay"], state["value"], state["count"])


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
    if world_size <= 1 and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") and (
        "MASTER_ADDR" in os.environ
    ):
        logger.warning(
            "`accelerate launch --cpu` with several processes needs MPI (`--mpirun_hostfile`); without it only ONE "
            "process runs. To run N CPU processes without MPI use `accelerate launch --multi_gpu --num_processes N "
            "--config_file training_scripts/accelerate_configs/cpu_2proc.yaml` (or torchrun)."
        )
    return world_size > 1 and not has_device_accelerator()
