# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The binary image tokenizer as an image codec: `.bits` files.

A `.bits` file is a small header followed by the packed bits of one latent (MSB first, as [`pack_bits`]):

| bytes | field |
| --- | --- |
| 4 | magic `DBIT` |
| 1 | format version (1) |
| 2 | latent tokens (big-endian) |
| 2 | bits per token (big-endian) |
| 16 | fingerprint of the tokenizer (config and weights) that made the bits |
| tokens x bits / 8 | the packed bits |

25 bytes of header: a 1024x1024 image of the paper model is 1,049 bytes, a 64x64 shapes-world image 89. Decoding
with another tokenizer is refused (the fingerprints differ: its decoder would draw something else from the same
bits); truncated and foreign files are refused too.
"""

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Sequence, Union

import torch

from .utils.bit_packing import pack_bits, unpack_bits
from .utils.checks import write_file_atomically

MAGIC = b"DBIT"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBHH16s")
HEADER_SIZE = _HEADER.size  # 25
FINGERPRINT_SIZE = 16


def tokenizer_fingerprint(tokenizer) -> bytes:
    r"""16 bytes that identify a [`BinaryLatentTokenizer`]: SHA-256 of its public config (sorted JSON, private keys
    and the training-only `quantizer_temperature` left out) and of every parameter and buffer in float32 (so the same
    weights stored in float16 or bfloat16 and loaded as float32 give the same fingerprint only if the values are
    equal). Cached on the module until its parameters change identity or version."""
    state = tokenizer.state_dict()
    version = tuple((k, v.data_ptr(), v._version) for k, v in state.items())
    cached = getattr(tokenizer, "_codec_fingerprint", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(tokenizer.config).items() if not k.startswith("_") and k != "quantizer_temperature"}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for key in sorted(state):
        digest.update(key.encode("utf-8"))
        digest.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    fingerprint = digest.digest()[:FINGERPRINT_SIZE]
    tokenizer._codec_fingerprint = (version, fingerprint)
    return fingerprint


def encode_bits_file(bits: torch.Tensor, fingerprint: bytes) -> bytes:
    r"""The `.bits` file content of one latent `bits` `(tokens, bits_per_token)` in {0, 1}."""
    if not isinstance(bits, torch.Tensor) or bits.ndim != 2:
        raise ValueError(
            f"`bits` must be one (tokens, bits_per_token) latent, got {getattr(bits, 'shape', type(bits))}"
        )
    if len(fingerprint) != FINGERPRINT_SIZE:
        raise ValueError(f"`fingerprint` must be {FINGERPRINT_SIZE} bytes, got {len(fingerprint)}")
    tokens, width = bits.shape
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, tokens, width, fingerprint)
    return header + pack_bits(bits[None].cpu())[0].numpy().tobytes()


def decode_bits_file(data: bytes, name: str = "the .bits file") -> tuple[torch.Tensor, bytes]:
    r"""`(bits (tokens, bits_per_token) float32, fingerprint)` from `.bits` content; a foreign, truncated or
    oversized file raises a `ValueError` naming `name`."""
    if len(data) < HEADER_SIZE or data[:4] != MAGIC:
        raise ValueError(f"{name} is not a diffusers-bit .bits file (no 'DBIT' header)")
    magic, version, tokens, width, fingerprint = _HEADER.unpack(data[:HEADER_SIZE])
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{name} has .bits format version {version}; this diffusers-bit reads version {FORMAT_VERSION}"
        )
    expected = (tokens * width + 7) // 8
    payload = data[HEADER_SIZE:]
    if len(payload) != expected:
        state = "truncated" if len(payload) < expected else "longer than its header says"
        raise ValueError(
            f"{name} is {state}: {len(payload)} bytes of bits for {tokens} x {width} bits ({expected} bytes)"
        )
    packed = torch.frombuffer(bytearray(payload), dtype=torch.uint8)[None]
    return unpack_bits(packed, tokens, width)[0].float(), fingerprint


def save_bits(path: Union[str, os.PathLike], bits: torch.Tensor, tokenizer, overwrite: bool = False) -> Path:
    """Write one latent made by `tokenizer` as a `.bits` file (atomically; an existing file only with `overwrite`)."""
    tokenizer.check_bits(bits[None] if isinstance(bits, torch.Tensor) and bits.ndim == 2 else bits)
    return write_file_atomically(path, encode_bits_file(bits, tokenizer_fingerprint(tokenizer)), overwrite)


def load_bits(paths: Union[str, os.PathLike, Sequence], tokenizer) -> torch.Tensor:
    r"""Read `.bits` files made by `tokenizer` into one `(B, tokens, bits_per_token)` batch. A file from another
    tokenizer (fingerprint or layout) is refused, naming both fingerprints."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    expected = tokenizer_fingerprint(tokenizer)
    layout = (tokenizer.config.num_latent_tokens, tokenizer.config.bits_per_token)
    batch = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        bits, fingerprint = decode_bits_file(path.read_bytes(), str(path))
        if tuple(bits.shape) != layout:
            raise ValueError(
                f"{path} holds {bits.shape[0]} tokens x {bits.shape[1]} bits; this tokenizer decodes "
                f"{layout[0]} x {layout[1]}"
            )
        if fingerprint != expected:
            raise ValueError(
                f"{path} was made by another tokenizer (fingerprint {fingerprint.hex()}; this one is "
                f"{expected.hex()}): decoding it would draw a different image"
            )
        batch.append(bits)
    return torch.stack(batch)
