# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The fastest compute dtype for a device, decided from the hardware.

Measured on the 2-core CPU hosts this project runs on: with AVX512-BF16 (or AMX) a bf16 matrix product reaches
~400 GFLOP/s against ~150-180 in float32, so bf16 wins; with AVX2 only, bf16 runs at ~21 GFLOP/s (`x @ W.T`) or
~1 GFLOP/s (`a @ b`) against ~90 in float32, so float32 is ~4x faster. GPUs: bfloat16 where supported, else
float16.
"""

import functools
import platform
from typing import Optional, Union

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU feature flags (Linux `/proc/cpuinfo`; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX-BF16)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


def preferred_dtype(device: Optional[Union[str, torch.device]] = None) -> torch.dtype:
    r"""The faster inference dtype on `device` (default: CPU): `bfloat16` on GPUs that support it (`float16` on
    others and on Apple MPS), and on CPUs with bf16 matrix instructions; `float32` on other CPUs."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16_matmul() else torch.float32


def describe_cpu() -> str:
    """One line about the CPU's matrix capabilities (for benchmark headers)."""
    bf16 = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]
    return (
        f"{platform.machine()}, {torch.get_num_threads()} threads, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, bf16 matrix instructions: {', '.join(bf16) or 'none'}"
    )
