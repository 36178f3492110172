# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Torch dtypes by name: one map for every place that takes a dtype as a string (the command line's and the
benchmarks' `--dtype`, and accelerate's `--mixed_precision` values, which name the dtype of the frozen models in
training)."""

from typing import Optional

import torch

# every accepted spelling -> dtype
DTYPES = {
    # torch's own names: `--dtype` of the command line and of the benchmarks
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    # accelerate's `--mixed_precision` values ("no": no mixed precision, float32)
    "no": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# the spellings a `--dtype` flag offers
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def dtype_from_name(name: str) -> torch.dtype:
    r"""`"bfloat16"` -> `torch.bfloat16`; every spelling of [`DTYPES`] is accepted (`"bf16"`, `"fp16"`, `"no"` too).

    Raises:
        `ValueError` naming the accepted names for anything else.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPE_NAMES)}, got {name!r}")
    return DTYPES[name]


def mixed_precision_dtype(mixed_precision: Optional[str]) -> torch.dtype:
    r"""The dtype of the frozen models under accelerate's `mixed_precision` (`"no"`, `"fp16"`, `"bf16"`; `None` and
    any other value, e.g. `"fp8"`, keep float32)."""
    return DTYPES.get(mixed_precision or "no", torch.float32)


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"` (torch's name, without the `torch.` prefix)."""
    return str(dtype).replace("torch.", "")
