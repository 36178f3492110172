"""The dtype chosen from the hardware (CPU flags, GPU support) for `--dtype auto`."""

import pytest
import torch

from diffusers_bit.utils import hardware


@pytest.mark.parametrize(
    "flags, expected",
    [
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"avx2", "amx_bf16", "amx_tile"}, torch.bfloat16),
        ({"avx2", "avx512f"}, torch.float32),
        (set(), torch.float32),
    ],
)
def test_cpu_dtype_follows_bf16_matrix_instructions(monkeypatch, flags, expected):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert hardware.preferred_dtype("cpu") == expected
    assert hardware.preferred_dtype() == expected
    assert ("bf16 matrix instructions: none" in hardware.describe_cpu()) == (expected == torch.float32)


def test_gpu_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.preferred_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.preferred_dtype("cuda:0") == torch.float16
    assert hardware.preferred_dtype("mps") == torch.float16


def test_this_machine_reads_its_flags():
    flags = hardware.cpu_flags()
    assert isinstance(flags, frozenset)
    if flags:  # Linux
        assert hardware.cpu_has_bf16_matmul() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_helper_is_exported_for_python_users():
    import diffusers_bit

    assert diffusers_bit.preferred_dtype is hardware.preferred_dtype
    assert diffusers_bit.preferred_dtype("cpu") in (torch.float32, torch.bfloat16)
