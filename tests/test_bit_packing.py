"""Bit packing: `pack_bits` / `unpack_bits` (8 bits per byte, most significant bit first)."""

import numpy as np
import pytest
import torch
from model_helpers import gen

from diffusers_bit import pack_bits, unpack_bits


def test_pack_unpack_round_trip_and_msb_first():
    bits = torch.randint(0, 2, (2, 128, 64), generator=gen(0)).float()
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 1024)
    expected = np.packbits(bits.numpy().astype(np.uint8).reshape(2, -1), axis=-1)
    assert np.array_equal(packed.numpy(), expected)
    unpacked = unpack_bits(packed)
    assert unpacked.dtype == torch.float32 and unpacked.shape == (2, 128, 64)
    assert torch.equal(unpacked, bits)


def test_pack_bits_hand_values_and_other_dtypes():
    bits = torch.tensor([[[1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 1, 0]]])
    assert pack_bits(bits).tolist() == [[128, 1, 0b10100110]]
    assert pack_bits(bits.bool()).tolist() == [[128, 1, 166]]
    assert pack_bits(bits.to(torch.bfloat16)).tolist() == [[128, 1, 166]]
    small = unpack_bits(torch.tensor([[128, 1, 166]], dtype=torch.uint8), num_tokens=3, bits_per_token=8)
    assert torch.equal(small, bits.float())
    # any split of the bits over tokens, as long as the total is a multiple of 8
    odd = torch.randint(0, 2, (3, 4, 6), generator=gen(1))
    assert torch.equal(unpack_bits(pack_bits(odd), num_tokens=4, bits_per_token=6), odd.float())


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((1, 8, 8), 0.5), "0 and 1"),
        (torch.full((1, 8, 8), 2.0), "0 and 1"),
        (torch.full((1, 8, 8), -1.0), "0 and 1"),
        (torch.full((1, 8, 8), float("nan")), "0 and 1"),
        (torch.zeros(8, 8), "shape"),
        (torch.zeros(1, 2, 8, 8), "shape"),
        (torch.zeros(1, 3, 5), "multiple of 8"),
    ],
)
def test_pack_bits_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        pack_bits(bad)


@pytest.mark.parametrize(
    "bad, kwargs, match",
    [
        (torch.zeros(2, 1024), {}, "uint8"),
        (torch.zeros(2, 1024, dtype=torch.int32), {}, "uint8"),
        (torch.zeros(2, 1023, dtype=torch.uint8), {}, "shape"),
        (torch.zeros(2, 8, 128, dtype=torch.uint8), {}, "shape"),
        (torch.zeros(1024, dtype=torch.uint8), {}, "shape"),
        (torch.zeros(2, 1024, dtype=torch.uint8), {"num_tokens": 16, "bits_per_token": 16}, "shape"),
    ],
)
def test_unpack_bits_rejects_bad_input(bad, kwargs, match):
    with pytest.raises(ValueError, match=match):
        unpack_bits(bad, **kwargs)


def test_pack_bits_empty_batch():
    packed = pack_bits(torch.zeros(0, 128, 64))
    assert packed.shape == (0, 1024) and packed.dtype == torch.uint8
    assert unpack_bits(packed).shape == (0, 128, 64)
