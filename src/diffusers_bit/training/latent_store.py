# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""A compact on-disk store of precomputed binary latents and their captions, so large generator runs skip the image
tokenizer: 128 tokens x 64 bits = **1024 bytes per image**, packed with [`~diffusers_bit.pack_bits`] (most
significant bit first, the order of `numpy.packbits`).

Layout of a store folder (one *part* per writing process):

```
header.json                 written last (atomically): format, version, num_tokens, bits_per_token,
                            bytes_per_image, num_images, parts, plus free-form metadata (resolution, source, skips)
latents-00000.bin           raw uint8, num_images_in_part x bytes_per_image, row-major (np.memmap-able)
captions-00000.jsonl        one JSON value per line: the caption (a string, or a list of strings)
captions-00000.idx          uint64 byte offset of every caption line, plus the file length (random access)
```

A store is complete exactly when `header.json` exists and every part file has the size the header says; a folder
without a header (an interrupted precompute) is refused by [`LatentStore`].
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..utils import pack_bits, unpack_bits
from ..utils.checks import read_json_file
from .checkpointing import atomic_write_json
from .data import MapSource, SkipSample, select_caption

FORMAT = "diffusers-bit-latent-store"
VERSION = 1
HEADER = "header.json"
STORE_FILE_PATTERNS = ("header.json", "latents-*.bin", "captions-*.jsonl", "captions-*.idx", "part-*.json")


def part_names(part: int) -> dict:
    """File names of part `part`."""
    return {
        "latents": f"latents-{part:05d}.bin",
        "captions": f"captions-{part:05d}.jsonl",
        "caption_index": f"captions-{part:05d}.idx",
        "info": f"part-{part:05d}.json",
    }


class LatentStoreWriter:
    r"""Appends packed latents and captions to one part of a store. Call [`close`] at the end; the part becomes
    visible to readers only when [`write_header`] has listed it.

    Args:
        path (`str` or `os.PathLike`): Store folder (created).
        num_tokens (`int`), bits_per_token (`int`): Latent layout; `num_tokens * bits_per_token` must be a multiple
            of 8.
        part (`int`): Part number (the process index when several processes write).
    """

    def __init__(self, path: Union[str, os.PathLike], num_tokens: int, bits_per_token: int, part: int = 0):
        if (num_tokens * bits_per_token) % 8:
            raise ValueError(f"{num_tokens} x {bits_per_token} bits is not a whole number of bytes")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.num_tokens, self.bits_per_token, self.part = num_tokens, bits_per_token, part
        self.bytes_per_image = num_tokens * bits_per_token // 8
        self.names = part_names(part)
        self._latents = open(self.path / self.names["latents"], "wb")
        self._captions = open(self.path / self.names["captions"], "wb")
        self._offsets = [0]
        self.num_images = 0

    def append(self, bits: torch.Tensor, captions: Sequence[Any]) -> None:
        r"""Add a batch.

        Args:
            bits (`torch.Tensor` of shape `(B, num_tokens, bits_per_token)`): Values in {0, 1}.
            captions (`list`): `B` captions (strings or lists of strings).
        """
        if tuple(bits.shape[1:]) != (self.num_tokens, self.bits_per_token):
            raise ValueError(
                f"`bits` must have shape (batch, {self.num_tokens}, {self.bits_per_token}), got {tuple(bits.shape)}"
            )
        if len(captions) != bits.shape[0]:
            raise ValueError(f"got {len(captions)} captions for {bits.shape[0]} latents")
        if bits.shape[0] == 0:
            return
        self.append_packed(pack_bits(bits.detach().cpu()).numpy(), captions)

    def append_packed(self, packed: np.ndarray, captions: Sequence[Any]) -> None:
        """Add a batch of already packed latents, `uint8` `(B, bytes_per_image)`."""
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if packed.ndim != 2 or packed.shape[1] != self.bytes_per_image:
            raise ValueError(f"`packed` must have shape (batch, {self.bytes_per_image}), got {packed.shape}")
        self._latents.write(packed.tobytes())
        for caption in captions:
            line = (json.dumps(caption, ensure_ascii=False) + "\n").encode("utf-8")
            self._captions.write(line)
            self._offsets.append(self._offsets[-1] + len(line))
        self.num_images += packed.shape[0]

    def close(self, extra: Optional[dict] = None) -> dict:
        """Flush everything to disk and write the part's info file; returns the part entry for the header."""
        for handle in (self._latents, self._captions):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        index_path = self.path / self.names["caption_index"]
        with open(index_path, "wb") as f:
            f.write(np.asarray(self._offsets, dtype="<u8").tobytes())
            f.flush()
            os.fsync(f.fileno())
        info = {
            "latents": self.names["latents"],
            "captions": self.names["captions"],
            "caption_index": self.names["caption_index"],
            "num_images": self.num_images,
            **(extra or {}),
        }
        atomic_write_json(self.path / self.names["info"], info)
        return info


def write_header(
    path: Union[str, os.PathLike],
    num_tokens: int,
    bits_per_token: int,
    parts: Sequence[dict],
    metadata: Optional[dict] = None,
) -> dict:
    r"""Complete a store: check every part's files and write `header.json` atomically (the store is valid from this
    moment on). Returns the header."""
    path = Path(path)
    bytes_per_image = num_tokens * bits_per_token // 8
    for part in parts:
        size = (path / part["latents"]).stat().st_size
        if size != part["num_images"] * bytes_per_image:
            raise ValueError(f"{part['latents']} holds {size} bytes, expected {part['num_images']} x {bytes_per_image}")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "num_tokens": num_tokens,
        "bits_per_token": bits_per_token,
        "bytes_per_image": bytes_per_image,
        "bit_order": "msb_first",
        "num_images": int(sum(p["num_images"] for p in parts)),
        "parts": list(parts),
        **(metadata or {}),
    }
    atomic_write_json(path / HEADER, header)
    return header


def read_part_infos(path: Union[str, os.PathLike], num_parts: int) -> list[dict]:
    """The info files of parts `0 .. num_parts - 1` (written by [`LatentStoreWriter.close`])."""
    path = Path(path)
    return [json.loads((path / part_names(i)["info"]).read_text()) for i in range(num_parts)]


def existing_store_files(path: Union[str, os.PathLike]) -> tuple[list[Path], list[Path]]:
    """`(store_files, other_files)` directly inside `path` (for the refuse-unless-`--overwrite` check)."""
    path = Path(path)
    if not path.exists():
        return [], []
    store, other = [], []
    for entry in sorted(path.iterdir()):
        (store if any(entry.match(p) for p in STORE_FILE_PATTERNS) and entry.is_file() else other).append(entry)
    return store, other


class LatentStore(MapSource):
    r"""Read a store written by `training_scripts/precompute_latents.py`: `len(store)` images, `store[i]` ->
    `{"packed": uint8 array (bytes_per_image,), "caption": str | list[str]}`, `store.bits(indices)` -> unpacked
    `(B, num_tokens, bits_per_token)` float tensor. Latents are memory-mapped and captions read by offset, so a store
    of 100M images opens instantly and is safe to share with dataloader workers.

    Raises:
        `ValueError` if the folder has no `header.json` (not a store, or an interrupted precompute) or a part's size
        does not match the header.
    """

    column_names = ["packed", "caption"]

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = Path(path)
        header_path = self.path / HEADER
        if not header_path.is_file():
            raise ValueError(
                f"{str(self.path)!r} is not a complete latent store (no {HEADER}); it may be an interrupted "
                "precompute_latents run: run it again with --overwrite"
            )
        self.header = read_json_file(header_path, "the latent store header")
        if self.header.get("format") != FORMAT or self.header.get("version") != VERSION:
            raise ValueError(f"{header_path} is not a version-{VERSION} {FORMAT} header")
        self.num_tokens = int(self.header["num_tokens"])
        self.bits_per_token = int(self.header["bits_per_token"])
        self.bytes_per_image = int(self.header["bytes_per_image"])
        self._latents, self._caption_index, starts = [], [], [0]
        for part in self.header["parts"]:
            n = int(part["num_images"])
            latents_path = self.path / part["latents"]
            if latents_path.stat().st_size != n * self.bytes_per_image:
                raise ValueError(f"{latents_path} does not hold {n} latents of {self.bytes_per_image} bytes")
            self._latents.append(
                np.memmap(latents_path, dtype=np.uint8, mode="r", shape=(n, self.bytes_per_image))
                if n
                else np.zeros((0, self.bytes_per_image), np.uint8)
            )
            offsets = np.fromfile(self.path / part["caption_index"], dtype="<u8")
            if len(offsets) != n + 1:
                raise ValueError(f"{part['caption_index']} has {len(offsets) - 1} entries, expected {n}")
            self._caption_index.append(offsets)
            starts.append(starts[-1] + n)
        self._starts = np.asarray(starts)
        self._handles: dict[int, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a store of {len(self)} images")
        part = int(np.searchsorted(self._starts, index, side="right") - 1)
        return part, index - int(self._starts[part])

    def packed(self, index: int) -> np.ndarray:
        """Packed latent of image `index`, `uint8` `(bytes_per_image,)`."""
        part, row = self._locate(int(index))
        return np.array(self._latents[part][row])

    def caption(self, index: int) -> Any:
        """Caption of image `index` as stored (a string or a list of strings)."""
        part, row = self._locate(int(index))
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if part not in self._handles:
            self._handles[part] = open(self.path / self.header["parts"][part]["captions"], "rb")
        handle = self._handles[part]
        start, end = self._caption_index[part][row : row + 2]
        handle.seek(int(start))
        return json.loads(handle.read(int(end - start)).decode("utf-8"))

    def __getitem__(self, index: int) -> dict:
        return {"packed": self.packed(index), "caption": self.caption(index)}

    def bits(self, indices: Sequence[int]) -> torch.Tensor:
        """Unpacked latents of `indices`, float32 `(len(indices), num_tokens, bits_per_token)` in {0, 1}."""
        packed = torch.from_numpy(np.stack([self.packed(i) for i in indices]))
        return unpack_bits(packed, self.num_tokens, self.bits_per_token)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state


def process_latent_record(record: dict, rng: Optional[np.random.Generator] = None) -> dict:
    """[`BatchDataset`] `process_fn` for a [`LatentStore`]: keeps the packed bytes, picks a caption."""
    if record.get("packed") is None:
        raise SkipSample("missing_image", "no latent")
    return {"packed": record["packed"], "caption": select_caption(record["caption"], rng)}


def collate_latents(samples: list[dict]) -> dict:
    """Stack latent samples: `packed` `uint8` `(B, bytes_per_image)` and `captions`. Unpack on the device with
    [`~diffusers_bit.unpack_bits`] (8x less host-to-device traffic)."""
    return {
        "packed": torch.from_numpy(np.stack([s["packed"] for s in samples])),
        "captions": [s["caption"] for s in samples],
    }
