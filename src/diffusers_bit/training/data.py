# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Training data: image-caption records from a Hub data set, a local folder (imagefolder + `metadata.jsonl`,
webdataset `.tar` shards, `.parquet` files) or a precomputed latent store, turned into fixed-size batches.

Design (what makes runs reproducible and resumable):

- A **source** gives raw records. Map-style sources ([`MapSource`]) have a length and random access (a non-streaming
  `datasets.Dataset`, indexed tar shards, a [`~diffusers_bit.training.latent_store.LatentStore`]); stream sources
  ([`StreamSource`]) are read front to back (`--streaming`).
- [`BatchDataset`] turns one process's share of a source into a sequence of **items**, one per block of
  `batch_size` raw records. Item `k` of an epoch is a deterministic function of `(seed, epoch, process, k)` (and, for
  streams, of the number of dataloader workers): map-style sources are shuffled with a permutation drawn from
  `(seed, epoch)` and dealt to processes round-robin; streams are split into one part per (process, worker) at the
  shard level when they have enough shards.
- Unusable records (undecodable or truncated files, images whose shorter edge is below `min_size`, missing
  captions) are skipped and **counted**; a block with some valid samples is filled back to `batch_size` by repeating
  them, so every step sees a full batch. A block without any valid sample still produces an (empty) item, so the
  item count never depends on the data's contents.
- Resuming = building the dataset with `start_index=k`: records of earlier items are skipped without being decoded.

Images are decoded with PIL and converted with numpy (no torchvision): aspect-preserving resize of the shorter edge
to the target resolution, centre crop, values in [-1, 1].
"""

import io
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image

from ..utils.checks import read_metadata_rows

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WEBDATASET_CAPTION_KEYS = ("txt", "caption", "text")
SKIP_REASONS = ("corrupt", "too_small", "missing_image", "missing_caption", "corrupt_shard")


class SkipSample(Exception):
    """Raised by a record processor for a record that cannot be used; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------
def load_image(value: Any) -> Image.Image:
    r"""Decode an image from whatever a data set holds: a `PIL.Image`, encoded bytes, a `{"bytes", "path"}` dict (the
    `datasets.Image(decode=False)` format), a file path, or an `(H, W[, C])` uint8 array. The pixels are fully
    decoded (so truncated files fail here, not later) and converted to RGB.

    Raises:
        [`SkipSample`] with reason `"missing_image"` (no data) or `"corrupt"` (anything that does not decode).
    """
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            if value.get("bytes") is not None:
                image = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = Image.open(value["path"])
            else:
                raise SkipSample("missing_image", "empty image entry")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(value)))
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(value)
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value)
        elif value is None:
            raise SkipSample("missing_image", "no image")
        else:
            raise SkipSample("corrupt", f"unsupported image value of type {type(value).__name__}")
        image.load()
        if image.mode != "RGB":
            # palette images with transparency warn unless they go through RGBA first
            image = image.convert("RGBA").convert("RGB") if image.mode in ("P", "LA", "PA") else image.convert("RGB")
        return image
    except SkipSample:
        raise
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        raise SkipSample("corrupt", f"{type(error).__name__}: {error}") from None


def resize_and_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    r"""Resize so that the shorter edge is `resolution` (aspect ratio kept; bicubic, with PIL's reducing gap for large
    downscales), then crop the central `resolution x resolution` square."""
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if new_size != (width, height):
        image = image.resize(new_size, resample=Image.BICUBIC, reducing_gap=3.0)
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    r"""RGB `PIL.Image` -> `torch.float32` tensor `(3, H, W)` in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def preprocess_image(image: Image.Image, resolution: int, min_size: Optional[int] = None) -> torch.Tensor:
    r"""The paper's image preprocessing: skip images whose shorter edge is below `min_size` (the paper uses
    `resolution / 2`; `None` or 0 keeps every image), resize the shorter edge to `resolution`, centre crop.

    Returns:
        `torch.float32` tensor of shape `(3, resolution, resolution)` in [-1, 1].

    Raises:
        [`SkipSample`] with reason `"too_small"`.
    """
    if min_size and min(image.size) < min_size:
        raise SkipSample("too_small", f"{image.size[0]}x{image.size[1]} < {min_size} px shorter edge")
    return image_to_tensor(resize_and_center_crop(image, resolution))


def select_caption(value: Any, rng: Optional[np.random.Generator] = None) -> str:
    r"""A caption string from a caption field: a string, bytes (UTF-8), or a list of strings (one is drawn with `rng`,
    the first one without).

    Raises:
        [`SkipSample`] with reason `"missing_caption"` for `None`, empty lists and other types.
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, bytes)) for v in value):
        choice = value[int(rng.integers(len(value)))] if rng is not None else value[0]
        return select_caption(choice)
    raise SkipSample("missing_caption", f"caption of type {type(value).__name__}")


@dataclass
class ImageCaptionProcessor:
    r"""Turns a raw record into `{"pixel_values": (3, R, R) tensor in [-1, 1], "caption": str}`.

    Args:
        resolution (`int`): Output side `R`.
        image_column (`str`): Record key of the image. For webdataset records, the default `"image"` also matches
            the first key that is an image extension (`jpg`, `png`, `webp`...).
        caption_column (`str`): Record key of the caption; for webdataset records the default `"text"` also matches
            `txt` / `caption` (or the same keys inside a `json` member).
        min_size (`int`, *optional*): Images whose shorter edge is below this are skipped (the paper uses half the
            target resolution). `None` keeps every image.
        keep_all_captions (`bool`, defaults to `False`): Return every caption of a multi-caption field (a list)
            instead of drawing one (used when precomputing, so training can draw per epoch).
    """

    resolution: int
    image_column: str = "image"
    caption_column: str = "text"
    min_size: Optional[int] = None
    keep_all_captions: bool = False

    def __call__(self, record: dict, rng: Optional[np.random.Generator] = None) -> dict:
        value = _lookup_caption(record, self.caption_column)
        if self.keep_all_captions and isinstance(value, (list, tuple)):
            caption = [select_caption(v) for v in value]
            if not caption:
                raise SkipSample("missing_caption", "empty caption list")
        else:
            caption = select_caption(value, rng)
        image = load_image(lookup_image(record, self.image_column))
        return {"pixel_values": preprocess_image(image, self.resolution, self.min_size), "caption": caption}


def collate_images(samples: list[dict]) -> dict:
    """Stack processed image samples: `pixel_values` `(B, 3, R, R)` and the list of `captions`."""
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "captions": [s["caption"] for s in samples],
    }


def lookup_image(record: dict, column: str) -> Any:
    """The image value of `record` (webdataset records: the member with any image extension)."""
    if column in record:
        return record[column]
    if "__key__" in record:  # webdataset record: any image extension
        for key in record:
            if f".{key.lower()}" in IMAGE_EXTENSIONS:
                return record[key]
    raise SkipSample("missing_image", f"no {column!r} field")


def _lookup_caption(record: dict, column: str) -> Any:
    if column in record:
        return record[column]
    if "__key__" in record:
        for key in WEBDATASET_CAPTION_KEYS:
            if key in record:
                return record[key]
        meta = record.get("json")
        if isinstance(meta, (bytes, str)):
            try:
                meta = json.loads(meta)
            except ValueError:
                meta = None
        if isinstance(meta, dict):
            for key in (column, *WEBDATASET_CAPTION_KEYS):
                if key in meta:
                    return meta[key]
    raise SkipSample("missing_caption", f"no {column!r} field")


# ----------------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------------
class MapSource:
    """A source with a length and random access: `len(source)`, `source[i] -> dict`."""

    column_names: Optional[list[str]] = None

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        raise NotImplementedError


class StreamSource:
    """A source read front to back. `iter_part(seed, epoch, part, num_parts)` yields the records of one of
    `num_parts` disjoint parts, in an order that depends only on its arguments."""

    column_names: Optional[list[str]] = None

    def iter_part(self, seed: int, epoch: int, part: int, num_parts: int) -> Iterator[dict]:
        raise NotImplementedError


class HFMapSource(MapSource):
    """A non-streaming `datasets.Dataset`; images are read undecoded (`Image(decode=False)`) so a corrupt file fails
    in [`load_image`] (and is skipped) instead of inside `datasets`."""

    def __init__(self, dataset, image_column: Optional[str] = None):
        self.dataset = _undecoded(dataset, image_column)
        self.column_names = list(self.dataset.column_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[int(index)]


class HFStreamSource(StreamSource):
    """A streaming `datasets.IterableDataset`. Parts are whole shards when the data set has at least `num_parts`
    shards, otherwise every part reads the full stream and keeps every `num_parts`-th record. Shard order and a
    shuffle buffer are seeded by `(seed, epoch)`."""

    def __init__(self, dataset, image_column: Optional[str] = None, shuffle_buffer_size: int = 1000, shuffle=True):
        self.dataset = _undecoded(dataset, image_column)
        self.column_names = list(self.dataset.column_names) if self.dataset.column_names else None
        self.shuffle_buffer_size = shuffle_buffer_size
        self.shuffle = shuffle

    def iter_part(self, seed: int, epoch: int, part: int, num_parts: int) -> Iterator[dict]:
        dataset = self.dataset
        by_shard = num_parts > 1 and dataset.num_shards >= num_parts
        if by_shard:
            dataset = dataset.shard(num_shards=num_parts, index=part, contiguous=False)
        if self.shuffle:
            dataset = dataset.shuffle(
                seed=derive_seed(seed, part if by_shard else 0), buffer_size=self.shuffle_buffer_size
            )
        dataset.set_epoch(epoch)
        position = 0
        # `iter(batch_size=...)` reads the stream as a plain iterator (iterating the data set directly inside a
        # dataloader worker would make `datasets` re-shard it by worker).
        for batch in dataset.iter(batch_size=64):
            keys = list(batch)
            for row in range(len(batch[keys[0]]) if keys else 0):
                if by_shard or position % num_parts == part:
                    yield {key: batch[key][row] for key in keys}
                position += 1


class TarShardIndex(MapSource):
    r"""Webdataset `.tar` shards with random access: the member headers are scanned once (no image data is read) and
    members are grouped into records by key (the file name up to the first dot of its base name). A record is a dict
    `{"__key__": key, "jpg": bytes, "txt": bytes, ...}`; a `json` member is parsed and its fields are added when they
    do not clash. A truncated or damaged shard keeps the records before the damage; a record cut off by the end of
    the file raises [`SkipSample`] (`"corrupt"`) when read, so it is counted like any unreadable image."""

    def __init__(self, shards: Sequence[Union[str, os.PathLike]]):
        self.shards = [str(s) for s in shards]
        self.entries: list[tuple[int, str, dict[str, tuple[int, int]]]] = []  # (shard, key, {ext: (offset, size)})
        self.broken_shards: list[str] = []
        self.shard_sizes: list[int] = []
        for shard_index, shard in enumerate(self.shards):
            records: dict[str, dict[str, tuple[int, int]]] = {}
            size = os.path.getsize(shard)
            damage = None
            try:
                with tarfile.open(shard, "r:") as tar:
                    while True:
                        member = tar.next()
                        if member is None:
                            break
                        if member.isfile():
                            key, ext = _split_member_name(member.name)
                            if key is not None:
                                records.setdefault(key, {})[ext] = (member.offset_data, member.size)
                    # a complete archive ends with two zero blocks; tarfile stops quietly at a cut-off header
                    if tar.offset + 2 * tarfile.BLOCKSIZE > size:
                        damage = "the file ends without the end-of-archive blocks"
            except (tarfile.TarError, OSError, EOFError) as error:
                damage = f"{type(error).__name__}: {error}"
            if any(offset + length > size for members in records.values() for offset, length in members.values()):
                damage = damage or "a member is cut off by the end of the file"
            self.shard_sizes.append(size)
            self.entries.extend((shard_index, key, members) for key, members in records.items())
            if damage:
                self.broken_shards.append(shard)
                # a virtual record that reads as "corrupt_shard", so the damage is counted with the other skips
                self.entries.append((shard_index, None, {}))
                logger.warning(
                    "webdataset shard %s is damaged (%s); using the %d records before the damage",
                    shard,
                    damage,
                    len(records),
                )
        self._handles: dict[int, Any] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.entries)

    def _handle(self, shard_index: int):
        if self._pid != os.getpid():  # re-open after fork (dataloader workers)
            self._handles, self._pid = {}, os.getpid()
        if shard_index not in self._handles:
            self._handles[shard_index] = open(self.shards[shard_index], "rb")
        return self._handles[shard_index]

    def __getitem__(self, index: int) -> dict:
        shard_index, key, members = self.entries[int(index)]
        if key is None:
            raise SkipSample(
                "corrupt_shard", f"{self.shards[shard_index]} is damaged; records after the damage are lost"
            )
        if any(offset + length > self.shard_sizes[shard_index] for offset, length in members.values()):
            raise SkipSample("corrupt", f"record {key} is cut off by the end of {self.shards[shard_index]}")
        handle = self._handle(shard_index)
        record: dict[str, Any] = {}
        for ext, (offset, size) in members.items():
            handle.seek(offset)
            record[ext] = handle.read(size)
        record["__key__"] = f"{os.path.basename(self.shards[shard_index])}/{key}"
        return _merge_json(record)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state


class TarStreamSource(StreamSource):
    """Webdataset `.tar` shards read sequentially (`--streaming`). Parts are whole shards when there are at least
    `num_parts` shards, otherwise every part reads all shards and keeps every `num_parts`-th record. Shard order and a
    shuffle buffer are seeded by `(seed, epoch, part)`. A damaged shard ends early and is counted."""

    def __init__(self, shards: Sequence[Union[str, os.PathLike]], shuffle_buffer_size: int = 1000, shuffle=True):
        self.shards = [str(s) for s in shards]
        self.shuffle_buffer_size = shuffle_buffer_size
        self.shuffle = shuffle

    def iter_part(self, seed: int, epoch: int, part: int, num_parts: int) -> Iterator[dict]:
        by_shard = num_parts > 1 and len(self.shards) >= num_parts
        shards = self.shards[part::num_parts] if by_shard else list(self.shards)
        rng = np.random.default_rng([seed, epoch, part if by_shard else 0])
        if self.shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        records = self._records(shards)
        if not by_shard:
            records = (r for i, r in enumerate(records) if i % num_parts == part or r.get("__corrupt_shard__"))
        if self.shuffle and self.shuffle_buffer_size > 1:
            records = _buffer_shuffle(records, self.shuffle_buffer_size, rng)
        yield from records

    @staticmethod
    def _records(shards: list[str]) -> Iterator[dict]:
        for shard in shards:
            current_key, record = None, {}
            try:
                with tarfile.open(shard, "r:") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        key, ext = _split_member_name(member.name)
                        if key is None:
                            continue
                        if key != current_key and record:
                            yield _merge_json({**record, "__key__": f"{os.path.basename(shard)}/{current_key}"})
                            record = {}
                        current_key = key
                        record[ext] = tar.extractfile(member).read()
                    complete = tar.offset + 2 * tarfile.BLOCKSIZE <= os.path.getsize(shard)
                if record:
                    yield _merge_json({**record, "__key__": f"{os.path.basename(shard)}/{current_key}"})
                if not complete:  # tarfile stops quietly at a cut-off header
                    raise tarfile.ReadError("the file ends without the end-of-archive blocks")
            except (tarfile.TarError, OSError, EOFError) as error:
                logger.warning("webdataset shard %s is damaged (%s); skipping the rest of it", shard, error)
                yield {"__corrupt_shard__": shard, "__key__": shard}


def _buffer_shuffle(records: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    buffer: list[dict] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        index = int(rng.integers(size))
        yield buffer[index]
        buffer[index] = record
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


def _split_member_name(name: str) -> tuple[Optional[str], str]:
    directory, base = os.path.split(name)
    if base.startswith(".") or "." not in base:
        return None, ""
    stem, ext = base.split(".", 1)
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _merge_json(record: dict) -> dict:
    if "json" in record:
        try:
            meta = json.loads(record["json"])
        except ValueError:
            meta = None
        if isinstance(meta, dict):
            for key, value in meta.items():
                record.setdefault(key, value)
    return record


def _undecoded(dataset, image_column: Optional[str]):
    """Cast the image column of a `datasets` data set to `Image(decode=False)` when it is an `Image` feature."""
    import datasets

    features = getattr(dataset, "features", None)
    if image_column and features is not None and isinstance(features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


# ----------------------------------------------------------------------------------------------------------------------
# Building a source from the command-line options
# ----------------------------------------------------------------------------------------------------------------------
def detect_local_format(folder: Union[str, os.PathLike]) -> str:
    r"""Format of a local data folder: `"webdataset"` (any `.tar` file), `"parquet"` (any `.parquet` file) or
    `"imagefolder"` (images, with captions in `metadata.jsonl`/`.csv`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`--train_data_dir` {str(folder)!r} is not a folder")
    names = [p.name.lower() for p in folder.rglob("*") if p.is_file()]
    if any(n.endswith(".tar") for n in names):
        return "webdataset"
    if any(n.endswith(".parquet") for n in names):
        return "parquet"
    return "imagefolder"


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def check_train_data_dir(folder: Union[str, os.PathLike], flag: str = "--train_data_dir") -> str:
    r"""Up-front check of a local data folder (before any model loads): it exists, holds images, webdataset tars or
    parquet files, and every `metadata.jsonl` in it parses (errors name the file and line). Returns the format."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"`{flag}` {str(folder)!r} is not a folder")
    fmt = detect_local_format(folder)
    if fmt == "imagefolder":
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*") if p.is_file()):
            raise ValueError(
                f"`{flag}` {str(folder)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}), webdataset "
                ".tar or .parquet files"
            )
        for metadata in sorted(folder.rglob("metadata.jsonl")):
            for _ in read_metadata_rows(metadata):  # every line parses; errors name the file and line
                pass
    return fmt


def build_source(
    dataset_name: Optional[str] = None,
    train_data_dir: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    split: str = "train",
    image_column: str = "image",
    caption_column: Optional[str] = "text",
    streaming: bool = False,
    cache_dir: Optional[str] = None,
    shuffle_buffer_size: int = 1000,
    max_samples: Optional[int] = None,
    shuffle: bool = True,
) -> Union[MapSource, StreamSource]:
    r"""The record source for `--dataset_name` (a Hub data set, or anything `datasets.load_dataset` takes) or
    `--train_data_dir` (imagefolder with `metadata.jsonl`, webdataset tars, parquet), checking that the image and
    caption columns exist. Nothing is decoded here.

    Args:
        caption_column (`str`, *optional*): `None` when captions are not needed (tokenizer training).
        streaming (`bool`): Read the data front to back instead of downloading/indexing it first.
        max_samples (`int`, *optional*): Keep only the first records (debugging).
    """
    import datasets

    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("pass exactly one of `--dataset_name` and `--train_data_dir`")
    if train_data_dir is not None and detect_local_format(train_data_dir) == "webdataset":
        shards = sorted(str(p) for p in Path(train_data_dir).rglob("*.tar"))
        if streaming:
            source = TarStreamSource(shards, shuffle_buffer_size, shuffle=shuffle)
        else:
            source = TarShardIndex(shards)
            if max_samples is not None:
                source.entries = source.entries[:max_samples]
        if max_samples is not None and streaming:
            source = _LimitedStream(source, max_samples)
        return source

    if train_data_dir is not None:
        fmt = detect_local_format(train_data_dir)
        if fmt == "parquet":
            files = sorted(str(p) for p in Path(train_data_dir).rglob("*.parquet"))
            dataset = datasets.load_dataset(
                "parquet", data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
            )
        else:
            dataset = datasets.load_dataset(
                "imagefolder", data_dir=train_data_dir, split=split, streaming=streaming, cache_dir=cache_dir
            )
    else:
        dataset = datasets.load_dataset(
            dataset_name, dataset_config_name, split=split, streaming=streaming, cache_dir=cache_dir
        )
    columns = list(dataset.column_names or [])
    if columns:
        for flag, column in (("--image_column", image_column), ("--caption_column", caption_column)):
            if column is not None and column not in columns:
                raise ValueError(f"`{flag}` {column!r} is not a column of the data set; columns: {columns}")
    if max_samples is not None:
        dataset = dataset.take(max_samples) if streaming else dataset.select(range(min(max_samples, len(dataset))))
    if streaming:
        return HFStreamSource(dataset, image_column, shuffle_buffer_size, shuffle=shuffle)
    return HFMapSource(dataset, image_column)


class _LimitedStream(StreamSource):
    def __init__(self, source: StreamSource, limit: int):
        self.source, self.limit = source, limit

    def iter_part(self, seed, epoch, part, num_parts):
        for i, record in enumerate(self.source.iter_part(seed, epoch, part, num_parts)):
            if i * num_parts >= self.limit:
                return
            yield record


# ----------------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class SkipStats:
    """Counts of skipped records by reason, with a few examples for the logs."""

    counts: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    def add(self, reason: str, key: str, detail: str, max_examples: int = 8) -> None:
        self.counts[reason] += 1
        if len(self.examples) < max_examples:
            self.examples.append((reason, key, detail))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{reason}={n}" for reason, n in sorted(self.counts.items())) or "none"


def derive_seed(*values: int) -> int:
    r"""A 63-bit seed that is a pure function of `values` (e.g. `(seed, process_index, epoch, batch)`), used to seed
    every random draw of a training step so that a resumed run draws exactly what an uninterrupted one does."""
    entropy = [int(v) & 0xFFFFFFFFFFFFFFFF for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1


class BatchDataset(torch.utils.data.IterableDataset):
    r"""One process's batches of one epoch, as a `torch.utils.data.IterableDataset` to use with
    `DataLoader(dataset, batch_size=None, num_workers=W)`.

    Every yielded item is a dict:

    - `index` (`int`): position of the item in this process's epoch (0, 1, 2, ... in the order the dataloader
      returns them, whatever `W` is).
    - `batch` (`dict` or `None`): the collated valid samples (filled up to `batch_size` by repetition when
      `fill_incomplete`), `None` when the block had no usable record.
    - `num_valid` (`int`), `skipped` (`dict[str, int]`), `skip_examples` (`list`): what was skipped in this block.
    - `end` (`bool`): stream sources only; a worker whose part is exhausted sends one `end` item. The epoch ends at
      the first one (consume with [`synchronized_items`]).

    Args:
        source ([`MapSource`] or [`StreamSource`]): The records.
        process_fn (`Callable[[dict, np.random.Generator], dict]`): Record -> sample; raises [`SkipSample`].
        collate_fn (`Callable[[list[dict]], dict]`): Samples -> batch.
        batch_size (`int`): Records per block (= per item) on this process.
        seed (`int`), epoch (`int`): Order of the epoch.
        process_index (`int`), num_processes (`int`): This process's share.
        start_index (`int`): First item to produce (resume); earlier records are not decoded.
        shuffle (`bool`): Shuffle map-style sources per epoch (streams use their own shuffle setting).
        even_shards (`bool`): Map-style only: pad the epoch (by wrapping around) so every process gets the same
            number of records (needed for synchronous training; turn off for precomputing).
        fill_incomplete (`bool`): Fill a partly valid block back to `batch_size` by repeating its valid samples.
        stream_drop_last (`bool`): Streams only: drop a trailing block shorter than `batch_size` (training, where
            every part stops at the same item count anyway); keep it when precomputing.
    """

    def __init__(
        self,
        source: Union[MapSource, StreamSource],
        process_fn: Callable[[dict, np.random.Generator], dict],
        collate_fn: Callable[[list[dict]], dict],
        batch_size: int,
        seed: int,
        epoch: int,
        process_index: int = 0,
        num_processes: int = 1,
        start_index: int = 0,
        shuffle: bool = True,
        even_shards: bool = True,
        fill_incomplete: bool = True,
        stream_drop_last: bool = True,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        self.source = source
        self.process_fn = process_fn
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.process_index = process_index
        self.num_processes = num_processes
        self.start_index = start_index
        self.shuffle = shuffle
        self.even_shards = even_shards
        self.fill_incomplete = fill_incomplete
        self.stream_drop_last = stream_drop_last
        # computed here, in the parent process: dataloader workers inherit it instead of each drawing its own
        self._indices = self._compute_indices() if isinstance(source, MapSource) else None

    # -- map-style -----------------------------------------------------------------------------------------------------
    def process_indices(self) -> np.ndarray:
        """Map-style sources: the source indices of this process's records for the epoch, in order."""
        if self._indices is None:
            raise TypeError("a streaming source has no index order")
        return self._indices

    def _compute_indices(self) -> np.ndarray:
        n = len(self.source)
        dtype = np.int32 if n < 2**31 else np.int64  # 400 MB for 100M records, only this process's share is kept
        order = np.arange(n, dtype=dtype)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        if self.even_shards and n % self.num_processes:
            pad = self.num_processes - n % self.num_processes
            order = np.concatenate([order, np.resize(order, pad)])
        return order[self.process_index :: self.num_processes].copy()

    def __len__(self) -> int:
        """Items in a full epoch (map-style sources only)."""
        return -(-len(self.process_indices()) // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if isinstance(self.source, MapSource):
            yield from self._iter_map(worker, num_workers)
        else:
            yield from self._iter_stream(worker, num_workers)

    def _iter_map(self, worker: int, num_workers: int) -> Iterator[dict]:
        indices = self.process_indices()
        num_items = -(-len(indices) // self.batch_size)
        # the dataloader takes items from workers round-robin, so worker w makes items start + w, start + w + W, ...
        for item in range(self.start_index + worker, num_items, num_workers):
            block = indices[item * self.batch_size : (item + 1) * self.batch_size]
            positions = range(item * self.batch_size, item * self.batch_size + len(block))
            records = ((pos, lambda i=i: self.source[int(i)]) for pos, i in zip(positions, block))
            yield self._make_item(item, records)

    # -- streams -------------------------------------------------------------------------------------------------------
    def _iter_stream(self, worker: int, num_workers: int) -> Iterator[dict]:
        # Item k of the epoch belongs to logical worker k % W (its (k // W)-th block). After a resume at item K the
        # dataloader starts again at worker slot 0, so slot s plays logical worker (K + s) % W.
        logical = (self.start_index + worker) % num_workers
        part = self.process_index * num_workers + logical
        first_block = (self.start_index - logical + num_workers - 1) // num_workers if self.start_index > logical else 0
        records = self.source.iter_part(self.seed, self.epoch, part, self.num_processes * num_workers)
        block, pending, position, broken = 0, [], 0, []
        for record in records:
            if record.get("__corrupt_shard__"):
                if block >= first_block:  # (damage before the resume point was counted before the checkpoint)
                    broken.append(record["__corrupt_shard__"])
                continue
            if block >= first_block:
                pending.append(((part << 40) + position, record))  # a position unique over all parts
            position += 1
            if position % self.batch_size == 0:
                if block >= first_block:
                    yield self._make_item(
                        block * num_workers + logical, ((p, lambda r=r: r) for p, r in pending), broken
                    )
                    broken = []
                pending = []
                block += 1
        if pending and not self.stream_drop_last:
            yield self._make_item(block * num_workers + logical, ((p, lambda r=r: r) for p, r in pending), broken)
            broken, block = [], block + 1
        # (in training a trailing partial block is dropped, like the tails of the other parts)
        yield {
            "index": max(first_block, block) * num_workers + logical,
            "end": True,
            "batch": None,
            "num_valid": 0,
            "skipped": {"corrupt_shard": len(broken)} if broken else {},
            "skip_examples": [],
        }

    # -- shared --------------------------------------------------------------------------------------------------------
    def _make_item(self, index: int, records, broken_shards: Sequence[str] = ()) -> dict:
        stats = SkipStats()
        for shard in broken_shards:
            stats.add("corrupt_shard", shard, "damaged tar shard")
        samples = []
        for position, get_record in records:
            rng = np.random.default_rng([self.seed, self.epoch, self.process_index, position])
            key = f"#{position}"
            try:
                record = get_record()
                key = _record_name(record, key)
                samples.append(self.process_fn(record, rng))
            except SkipSample as skip:
                stats.add(skip.reason, key, skip.detail)
        num_valid = len(samples)
        if samples and self.fill_incomplete and num_valid < self.batch_size:
            samples = samples + [samples[i % num_valid] for i in range(self.batch_size - num_valid)]
        return {
            "index": index,
            "end": False,
            "batch": self.collate_fn(samples) if samples else None,
            "num_valid": num_valid,
            "skipped": dict(stats.counts),
            "skip_examples": stats.examples,
        }


def _record_name(record: dict, default: str) -> str:
    if "__key__" in record:
        return str(record["__key__"])
    for value in record.values():
        if isinstance(value, dict) and value.get("path"):
            return str(value["path"])
    return default


def identity_collate(item):
    """`collate_fn` for `DataLoader(batch_size=None)` over a [`BatchDataset`]: items are already batches."""
    return item


def synchronized_items(items: Iterator[dict], accelerator=None) -> Iterator[dict]:
    r"""Consume [`BatchDataset`] items so that all processes agree, step by step: the epoch ends on every process as
    soon as one of them runs out (or gets an `end` item), and an item is marked `skip=True` on every process when any
    process got an item without valid samples (so no process runs a step the others skip). One tiny all-reduce per
    item when `accelerator.num_processes > 1`."""
    iterator = iter(items)
    distributed = accelerator is not None and accelerator.num_processes > 1
    while True:
        item = next(iterator, None)
        end = item is None or item.get("end", False)
        empty = not end and item["num_valid"] == 0
        if distributed:
            flags = torch.tensor([float(end), float(empty)], device=accelerator.device)
            flags = accelerator.reduce(flags, reduction="sum")
            end, empty = bool(flags[0] > 0), bool(flags[1] > 0)
        if end:
            return
        item["skip"] = empty
        yield item
