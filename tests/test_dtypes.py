"""Torch dtypes by name from one map (`diffusers_bit.utils.dtypes`), used by the command line, the training scripts
(accelerate's `--mixed_precision` values) and the benchmarks; every spelling accepted before is accepted."""

import sys
from pathlib import Path

import pytest
import torch

from diffusers_bit import cli
from diffusers_bit.utils import dtypes
from diffusers_bit.utils.dtypes import DTYPE_NAMES, dtype_from_name, dtype_name, mixed_precision_dtype

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import inference, training  # noqa: E402

SPELLINGS = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "no": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def test_every_spelling():
    assert {name: dtype_from_name(name) for name in SPELLINGS} == SPELLINGS
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'bfloat16', 'float16'\], got 'half'"):
        dtype_from_name("half")
    # the frozen models under --mixed_precision: float32 without it and for values without a dtype of their own
    for value, dtype in (
        (None, torch.float32),
        ("no", torch.float32),
        ("fp8", torch.float32),
        ("bf16", torch.bfloat16),
        ("fp16", torch.float16),
    ):
        assert mixed_precision_dtype(value) is dtype
    assert [dtype_name(dtype_from_name(name)) for name in DTYPE_NAMES] == list(DTYPE_NAMES)


def test_command_line_training_and_benchmarks_share_the_map(monkeypatch):
    assert training.resolve_dtype is dtype_from_name and inference.dtype_from_name is dtype_from_name
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    for command in ("generate", "convert", "eval-reconstruction"):
        action = next(a for a in commands[command]._actions if a.dest == "dtype")
        assert [c for c in action.choices if c not in ("auto", "keep")] == list(DTYPE_NAMES)
    monkeypatch.setitem(dtypes.DTYPES, "float16", torch.float64)
    monkeypatch.setitem(dtypes.DTYPES, "fp16", torch.float64)
    assert cli._dtype("float16") is torch.float64 and cli._dtype("keep") is None
    assert mixed_precision_dtype("fp16") is torch.float64
    assert training.resolve_dtype("float16") is torch.float64
