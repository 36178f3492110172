"""Training data: image preprocessing, skipping and counting unusable records, every local layout, deterministic
resumable batching, the packed latent store."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from training_helpers import caption, encode, make_imagefolder, make_webdataset, shape_image, truncated_jpeg

from diffusers_bit import build_pipeline, pack_bits, unpack_bits
from diffusers_bit.training import (
    BatchDataset,
    ImageCaptionProcessor,
    LatentStore,
    LatentStoreWriter,
    MapSource,
    SkipSample,
    StreamSource,
    build_source,
    collate_images,
    identity_collate,
    load_image,
    preprocess_image,
    synchronized_items,
    write_header,
)
from diffusers_bit.training.data import TarShardIndex, TarStreamSource, detect_local_format, select_caption
from diffusers_bit.training.latent_store import collate_latents, process_latent_record


# ----------------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------------
def test_preprocess_keeps_aspect_and_center_crops():
    # left third red, middle third green, right third blue: 120 x 60 -> shorter edge 64 -> 128 x 64 -> crop x 32..96
    array = np.zeros((60, 120, 3), np.uint8)
    array[:, :40, 0] = 255
    array[:, 40:80, 1] = 255
    array[:, 80:, 2] = 255
    out = preprocess_image(Image.fromarray(array), 64, min_size=32)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    # the crop spans x = 32..96 of the resized image, i.e. 30..90 of the original: red 30-40, green 40-80, blue 80-90
    assert out[0, 32, 2] > 0.9 and out[1, 32, 32] > 0.9 and out[2, 32, 61] > 0.9
    assert out[1, 32, 2] < -0.9 and out[0, 32, 61] < -0.9
    # same as doing it by hand with PIL
    reference = Image.fromarray(array).resize((128, 64), Image.BICUBIC, reducing_gap=3.0).crop((32, 0, 96, 64))
    expected = torch.from_numpy(np.asarray(reference).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    torch.testing.assert_close(out, expected)


def test_min_size_filter_is_half_resolution():
    assert preprocess_image(Image.new("RGB", (32, 200)), 64, min_size=32).shape == (3, 64, 64)  # exactly half: kept
    with pytest.raises(SkipSample) as info:
        preprocess_image(Image.new("RGB", (31, 200)), 64, min_size=32)
    assert info.value.reason == "too_small"
    assert preprocess_image(Image.new("RGB", (10, 10)), 64, min_size=None).shape == (3, 64, 64)  # filter off


@pytest.mark.parametrize(
    "value, reason",
    [
        (truncated_jpeg(), "corrupt"),
        (b"not an image", "corrupt"),
        ({"bytes": None, "path": None}, "missing_image"),
        (None, "missing_image"),
        ({"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None}, "corrupt"),
        (3.5, "corrupt"),
    ],
)
def test_unreadable_images_raise_skip(value, reason):
    with pytest.raises(SkipSample) as info:
        load_image(value)
    assert info.value.reason == reason


def test_load_image_accepts_every_form_and_converts_to_rgb(tmp_path):
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 128))
    palette = shape_image(0, (8, 8)).convert("P")
    gray = Image.new("L", (8, 8), 100)
    path = tmp_path / "x.png"
    rgba.save(path)
    for value in (
        rgba,
        palette,
        gray,
        encode(rgba, "PNG"),
        {"bytes": encode(gray, "PNG"), "path": None},
        {"bytes": None, "path": str(path)},
        str(path),
        np.zeros((4, 5, 3), np.uint8),
    ):
        assert load_image(value).mode == "RGB"


def test_select_caption():
    rng = np.random.default_rng(0)
    assert select_caption(" a cat ") == "a cat"
    assert select_caption(b"bytes caption") == "bytes caption"
    assert select_caption(["one", "two"]) == "one"
    assert {select_caption(["one", "two"], rng) for _ in range(30)} == {"one", "two"}
    for bad in (None, [], 3):
        with pytest.raises(SkipSample):
            select_caption(bad)


# ----------------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------------
def _all_items(source, batch_size=2, **kwargs):
    dataset = BatchDataset(
        source, ImageCaptionProcessor(64, min_size=32), collate_images, batch_size, seed=0, epoch=0, **kwargs
    )
    return list(dataset)


def test_imagefolder_skips_and_counts_corrupt_and_small_images(tmp_path):
    root = make_imagefolder(tmp_path / "data", num_images=4, corrupt=True)
    assert detect_local_format(root) == "imagefolder"
    source = build_source(train_data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    assert len(source) == 7
    items = _all_items(source, batch_size=7, fill_incomplete=False)
    assert len(items) == 1
    assert items[0]["num_valid"] == 4
    assert items[0]["skipped"] == {"corrupt": 2, "too_small": 1}
    assert any("truncated.jpg" in key for _, key, _ in items[0]["skip_examples"])
    batch = items[0]["batch"]
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert sorted(batch["captions"]) == sorted(caption(i) for i in range(4))


def test_partly_valid_block_is_filled_and_empty_block_still_yields_an_item(tmp_path):
    root = make_imagefolder(tmp_path / "data", num_images=1, corrupt=True)  # 1 good + 3 bad
    source = build_source(train_data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    items = _all_items(source, batch_size=2, shuffle=False)
    assert len(items) == 2
    valid = [item for item in items if item["num_valid"]]
    empty = [item for item in items if not item["num_valid"]]
    assert len(valid) == 1 and len(empty) == 1
    assert valid[0]["batch"]["pixel_values"].shape[0] == 2  # filled by repetition
    assert empty[0]["batch"] is None
    assert [i["skip"] for i in synchronized_items(iter(items))] == [not bool(i["num_valid"]) for i in items]


def test_column_names_are_checked(tmp_path):
    root = make_imagefolder(tmp_path / "data", num_images=2)
    with pytest.raises(ValueError, match="--caption_column"):
        build_source(train_data_dir=str(root), caption_column="prompt", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="--image_column"):
        build_source(train_data_dir=str(root), image_column="picture", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="exactly one"):
        build_source()


def test_parquet_source(tmp_path):
    import datasets

    images = [shape_image(i) for i in range(3)]
    table = datasets.Dataset.from_dict({"jpg": images, "prompt": [[caption(i), "alt"] for i in range(3)]})
    table = table.cast_column("jpg", datasets.Image())
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    assert detect_local_format(tmp_path / "pq") == "parquet"
    source = build_source(
        train_data_dir=str(tmp_path / "pq"),
        image_column="jpg",
        caption_column="prompt",
        cache_dir=str(tmp_path / "cache"),
    )
    processor = ImageCaptionProcessor(64, "jpg", "prompt", 32)
    items = list(BatchDataset(source, processor, collate_images, 3, seed=0, epoch=0, shuffle=False))
    assert items[0]["num_valid"] == 3 and items[0]["batch"]["pixel_values"].shape == (3, 3, 64, 64)
    assert all(c in (caption(i), "alt") for i, c in enumerate(items[0]["batch"]["captions"]))


def test_webdataset_indexed_and_streamed_agree(tmp_path):
    root = make_webdataset(tmp_path / "wds", shards=2, per_shard=3)
    assert detect_local_format(root) == "webdataset"
    indexed = build_source(train_data_dir=str(root))
    assert isinstance(indexed, TarShardIndex) and len(indexed) == 6
    streamed = build_source(train_data_dir=str(root), streaming=True, shuffle_buffer_size=4)
    assert isinstance(streamed, TarStreamSource)
    processor = ImageCaptionProcessor(64, min_size=32)  # default columns resolve to jpg / txt / json caption
    a = list(BatchDataset(indexed, processor, collate_images, 6, seed=0, epoch=0))
    b = [i for i in BatchDataset(streamed, processor, collate_images, 6, seed=0, epoch=0) if not i["end"]]
    assert a[0]["num_valid"] == b[0]["num_valid"] == 6
    assert (
        sorted(a[0]["batch"]["captions"]) == sorted(b[0]["batch"]["captions"]) == sorted(caption(i) for i in range(6))
    )


def test_truncated_webdataset_shard_keeps_earlier_records(tmp_path):
    root = make_webdataset(tmp_path / "wds", shards=2, per_shard=4, truncate_last=True)
    indexed = build_source(train_data_dir=str(root))
    assert [p.rsplit("/", 1)[-1] for p in indexed.broken_shards] == ["shard-0001.tar"]
    items = list(
        BatchDataset(
            indexed, ImageCaptionProcessor(64, min_size=32), collate_images, 16, seed=0, epoch=0, fill_incomplete=False
        )
    )
    valid, skipped = items[0]["num_valid"], items[0]["skipped"]
    assert 4 <= valid < 8  # the intact shard and the records before the damage
    assert skipped["corrupt_shard"] == 1  # the damage is counted, never raised
    assert valid + sum(skipped.values()) == len(indexed)
    streamed = build_source(train_data_dir=str(root), streaming=True)
    stream_items = list(
        BatchDataset(
            streamed, ImageCaptionProcessor(64, min_size=32), collate_images, 2, seed=0, epoch=0, stream_drop_last=False
        )
    )
    assert 4 <= sum(i["num_valid"] for i in stream_items) < 8
    assert sum(i["skipped"].get("corrupt_shard", 0) for i in stream_items) == 1


# ----------------------------------------------------------------------------------------------------------------------
# Deterministic, resumable batching
# ----------------------------------------------------------------------------------------------------------------------
class ListSource(MapSource):
    def __init__(self, n):
        self.records = [{"id": i, "text": f"caption {i}"} for i in range(n)]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if self.records[i]["id"] % 7 == 3:
            raise SkipSample("corrupt", "every 7th record is broken")
        return self.records[i]


class ListStream(StreamSource):
    def __init__(self, n):
        self.n = n

    def iter_part(self, seed, epoch, part, num_parts):
        order = np.random.default_rng([seed, epoch]).permutation(self.n)
        for position, i in enumerate(order):
            if position % num_parts == part:
                yield {"id": int(i), "text": f"caption {i}"}


def _ids(item):
    return None if item["batch"] is None else item["batch"]["ids"]


def _process(record, rng):
    return {"id": record["id"], "draw": float(rng.random())}


def _collate(samples):
    return {"ids": [s["id"] for s in samples], "draws": [s["draw"] for s in samples]}


def _loader_items(dataset, workers):
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=identity_collate)
    return [(item["index"], _ids(item)) for item in synchronized_items(loader)]


def test_map_order_depends_on_seed_and_epoch_only():
    source = ListSource(23)
    make = lambda epoch, seed=0, **kw: BatchDataset(source, _process, _collate, 4, seed=seed, epoch=epoch, **kw)  # noqa
    first = [_ids(i) for i in make(0)]
    assert first == [_ids(i) for i in make(0)]
    assert first != [_ids(i) for i in make(1)] and first != [_ids(i) for i in make(0, seed=1)]
    assert len(first) == len(make(0)) == 6
    # the random draws of a record depend on (seed, epoch, process, position) only: identical on a re-run
    assert [i["batch"]["draws"] for i in make(0)] == [i["batch"]["draws"] for i in make(0)]


@pytest.mark.parametrize("workers", [0, 2])
def test_map_resume_skips_consumed_batches(workers):
    source = ListSource(23)
    full = _loader_items(BatchDataset(source, _process, _collate, 3, seed=5, epoch=2), workers)
    assert [index for index, _ in full] == list(range(len(full)))
    for start in (1, 4, len(full)):
        resumed = _loader_items(
            BatchDataset(source, _process, _collate, 3, seed=5, epoch=2, start_index=start), workers
        )
        assert resumed == full[start:]
    # workers do not change the order
    assert full == _loader_items(BatchDataset(source, _process, _collate, 3, seed=5, epoch=2), 0)


def test_map_processes_get_disjoint_equal_shares():
    source = ListSource(22)  # not a multiple of 3 processes: padded by wrapping around
    shares = [
        BatchDataset(source, _process, _collate, 4, 0, 0, process_index=p, num_processes=3).process_indices()
        for p in range(3)
    ]
    assert len({len(s) for s in shares}) == 1
    together = np.concatenate(shares)
    assert set(together.tolist()) == set(range(22)) and len(together) == 24


@pytest.mark.parametrize("workers", [1, 2])
def test_stream_resume_is_exact(workers):
    stream = ListStream(30)
    full = _loader_items(BatchDataset(stream, _process, _collate, 4, seed=1, epoch=3), workers)
    assert full and [index for index, _ in full] == list(range(len(full)))
    for start in (1, 3):
        resumed = _loader_items(
            BatchDataset(stream, _process, _collate, 4, seed=1, epoch=3, start_index=start), workers
        )
        assert resumed == full[start:]


# ----------------------------------------------------------------------------------------------------------------------
# Latent store
# ----------------------------------------------------------------------------------------------------------------------
def _write_store(path, parts, tokens=128, bits=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    infos, all_bits, all_captions = [], [], []
    for part, n in enumerate(parts):
        writer = LatentStoreWriter(path, tokens, bits, part=part)
        latents = (torch.rand(n, tokens, bits, generator=generator) > 0.5).float()
        captions = [f"image {part}-{i} – ünïcode" if i % 2 else [f"first {i}", f"second {i}"] for i in range(n)]
        writer.append(latents, captions)
        infos.append(writer.close())
        all_bits.append(latents)
        all_captions += captions
    write_header(path, tokens, bits, infos, {"resolution": 512})
    return torch.cat(all_bits), all_captions


def test_latent_store_roundtrip_paper_layout(tmp_path):
    bits, captions = _write_store(tmp_path / "store", parts=[5, 0, 3])
    store = LatentStore(tmp_path / "store")
    assert len(store) == 8 and store.bytes_per_image == 1024
    assert (tmp_path / "store" / "latents-00000.bin").stat().st_size == 5 * 1024  # 1 KiB per image
    assert torch.equal(store.bits(range(8)), bits)
    assert [store.caption(i) for i in range(8)] == captions
    record = store[6]
    assert record["packed"].dtype == np.uint8 and record["packed"].shape == (1024,)
    assert torch.equal(torch.from_numpy(record["packed"])[None], pack_bits(bits[6:7]))
    batch = collate_latents([process_latent_record(store[i]) for i in range(3)])
    assert torch.equal(unpack_bits(batch["packed"], 128, 64), bits[:3])
    assert batch["captions"][1] == captions[1]


def test_latent_store_refuses_incomplete_or_inconsistent(tmp_path):
    writer = LatentStoreWriter(tmp_path / "partial", 16, 16)
    writer.append(torch.zeros(2, 16, 16), ["a", "b"])
    writer.close()
    with pytest.raises(ValueError, match="not a complete latent store"):
        LatentStore(tmp_path / "partial")
    _write_store(tmp_path / "bad", parts=[2], tokens=16, bits=16)
    with open(tmp_path / "bad" / "latents-00000.bin", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not hold"):
        LatentStore(tmp_path / "bad")


def test_latent_store_in_dataloader_workers(tmp_path):
    bits, _ = _write_store(tmp_path / "store", parts=[7], tokens=16, bits=16)
    store = LatentStore(tmp_path / "store")
    dataset = BatchDataset(
        store, process_latent_record, collate_latents, 3, seed=0, epoch=0, shuffle=False, fill_incomplete=False
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=identity_collate)
    got = torch.cat([unpack_bits(item["batch"]["packed"], 16, 16) for item in loader])
    assert torch.equal(got, bits)


def test_store_bits_equal_tokenizer_bits(tmp_path):
    """What precompute writes unpacks to exactly the image tokenizer's bits (tiny tokenizer: 32 bytes/image)."""
    root = make_imagefolder(tmp_path / "data", num_images=3)
    source = build_source(train_data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    tokenizer = build_pipeline("tiny", "diffusion", seed=0).image_tokenizer
    items = list(BatchDataset(source, ImageCaptionProcessor(64, min_size=32), collate_images, 3, 0, 0, shuffle=False))
    with torch.no_grad():
        expected = tokenizer.encode(items[0]["batch"]["pixel_values"], sample=False).bits
    writer = LatentStoreWriter(tmp_path / "store", 16, 16)
    writer.append(expected, items[0]["batch"]["captions"])
    write_header(tmp_path / "store", 16, 16, [writer.close()])
    store = LatentStore(tmp_path / "store")
    assert (tmp_path / "store" / "latents-00000.bin").stat().st_size == 3 * 32
    assert torch.equal(store.bits(range(3)), expected.float())
    assert json.loads((tmp_path / "store" / "header.json").read_text())["bytes_per_image"] == 32


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_imagefolder_resume_is_exact(tmp_path, workers):
    root = make_imagefolder(tmp_path / "data", num_images=6, corrupt=True)
    source = build_source(train_data_dir=str(root), streaming=True, shuffle_buffer_size=3)
    processor = ImageCaptionProcessor(64, min_size=32)

    def run(start):
        dataset = BatchDataset(source, processor, collate_images, 2, seed=3, epoch=1, start_index=start)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=identity_collate)
        return [
            (i["index"], i["num_valid"], None if i["batch"] is None else i["batch"]["captions"], i["skipped"])
            for i in synchronized_items(loader)
        ]

    full = run(0)
    assert len(full) >= 2
    assert run(1) == full[1:]
    if workers == 0:  # one part: every record is read once, the corrupt ones are counted
        skipped = sum(sum(s.values()) for *_, s in full)
        assert sum(n for _, n, _, _ in full) + skipped == 8  # 9 records, the trailing partial block is dropped
