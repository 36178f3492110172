#!/usr/bin/env python
# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Encode a data set once with the frozen binary image tokenizer into a compact latent store (packed bits: 128 x 64
bits = 1 KiB per image for the paper's tokenizer) that `train_t2i.py --latents_dir` reads instead of images.

    accelerate launch training_scripts/precompute_latents.py \
        --pretrained_model_name_or_path <instella pipeline or tokenizer folder> \
        --train_data_dir <images> | --dataset_name <hub data set> \
        --resolution 512 --output_dir <store>

Images go through the same preprocessing as on-the-fly training (shorter edge below resolution / 2 skipped, shorter
edge resized, centre crop); unreadable images are skipped and counted. Every process writes its own part; the store
becomes valid when `header.json` is written at the very end, so an interrupted run never leaves a store that
`train_t2i.py` would read. A non-empty `--output_dir` is refused unless `--overwrite` is given.
"""

import argparse
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from diffusers_bit.training import BatchDataset, ImageCaptionProcessor, build_source, collate_images, identity_collate
from diffusers_bit.training.components import (
    check_resolution,
    image_tokenizer_config,
    load_image_tokenizer,
    plan_components,
)
from diffusers_bit.training.data import SKIP_REASONS, SkipStats
from diffusers_bit.training.latent_store import LatentStoreWriter, existing_store_files, read_part_infos, write_header
from diffusers_bit.training.loop import end_run
from diffusers_bit.training.script_utils import accelerator_cpu_flag
from diffusers_bit.utils.dtypes import mixed_precision_dtype

logger = get_logger(__name__, log_level="INFO")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], fromfile_prefix_chars="@")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="A saved Instella pipeline (folder or repo id) whose image_tokenizer is used.",
    )
    parser.add_argument("--revision", type=str, default=None)
    parser.add_argument("--image_tokenizer", type=str, default=None, help="A BinaryLatentTokenizer folder or repo.")
    parser.add_argument(
        "--preset",
        type=str,
        default=None,
        help="Use the preset's image tokenizer with random weights (tests and smoke runs only).",
    )
    parser.add_argument("--dataset_name", type=str, default=None)
    parser.add_argument("--dataset_config_name", type=str, default=None)
    parser.add_argument("--dataset_split", type=str, default="train")
    parser.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="Local data: an imagefolder with metadata.jsonl, webdataset .tar shards, or .parquet files.",
    )
    parser.add_argument("--image_column", type=str, default="image")
    parser.add_argument("--caption_column", type=str, default="text")
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("--max_samples", type=int, default=None, help="Encode only the first records.")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument(
        "--min_image_size",
        type=int,
        default=None,
        help="Skip images whose shorter edge is smaller (default: resolution / 2).",
    )
    parser.add_argument("--output_dir", type=str, required=True, help="Folder of the latent store.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing latent store in --output_dir.")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per encoder batch and process.")
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    parser.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Compute dtype of the tokenizer (the authors encode in bf16).",
    )
    parser.add_argument("--cache_dir", type=str, default=None)
    args = parser.parse_args(argv)
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise ValueError("pass exactly one of --dataset_name and --train_data_dir")
    if args.pretrained_model_name_or_path is None and args.image_tokenizer is None and args.preset is None:
        raise ValueError("pass --pretrained_model_name_or_path, --image_tokenizer or --preset (the image tokenizer)")
    for flag in ("batch_size", "resolution"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1")
    if args.min_image_size is None:
        args.min_image_size = args.resolution // 2
    return args


def prepare_output_dir(output_dir: Path, overwrite: bool, is_main: bool) -> None:
    """Refuse a non-empty folder unless `overwrite`; even then, only files of a latent store are deleted."""
    store_files, other_files = existing_store_files(output_dir)
    if not store_files and not other_files:
        return
    if not overwrite:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} is not empty; pass --overwrite to replace the latent store there"
        )
    if other_files:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} holds files that are not part of a latent store "
            f"({[p.name for p in other_files[:5]]}); refusing to delete them even with --overwrite"
        )
    if is_main:
        for path in store_files:
            path.unlink()


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    accelerator = Accelerator(cpu=accelerator_cpu_flag(), mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)

    plan = plan_components(
        "diffusion",
        args.pretrained_model_name_or_path,
        args.preset,
        None,
        args.image_tokenizer,
        args.revision,
        args.cache_dir,
        need_generator=False,
    )
    config = image_tokenizer_config(plan)
    check_resolution(config, args.resolution)
    prepare_output_dir(output_dir, args.overwrite, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():
        source = build_source(
            args.dataset_name,
            args.train_data_dir,
            args.dataset_config_name,
            args.dataset_split,
            args.image_column,
            args.caption_column,
            args.streaming,
            args.cache_dir,
            max_samples=args.max_samples,
            shuffle=False,
        )

    weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
    tokenizer = load_image_tokenizer(plan, dtype=weight_dtype).to(accelerator.device)
    num_tokens, bits_per_token = config["num_latent_tokens"], config["bits_per_token"]
    processor = ImageCaptionProcessor(
        args.resolution, args.image_column, args.caption_column, args.min_image_size, keep_all_captions=True
    )
    dataset = BatchDataset(
        source,
        processor,
        collate_images,
        args.batch_size,
        seed=0,
        epoch=0,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        shuffle=False,
        even_shards=False,
        fill_incomplete=False,
        stream_drop_last=False,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=args.dataloader_num_workers, collate_fn=identity_collate
    )

    writer = LatentStoreWriter(output_dir, num_tokens, bits_per_token, part=accelerator.process_index)
    stats = SkipStats()
    progress = tqdm(desc="Encoding", unit="img", disable=not accelerator.is_local_main_process)
    for item in loader:
        for reason, count in item["skipped"].items():
            stats.counts[reason] += count
        for reason, key, detail in item["skip_examples"]:
            logger.warning(f"skipped {key}: {reason} ({detail})", main_process_only=False)
        if item["end"] or item["batch"] is None:
            continue
        batch = item["batch"]
        with torch.no_grad():
            pixels = batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)
            bits = tokenizer.encode(pixels, sample=False).bits
        writer.append(bits, batch["captions"])
        progress.update(bits.shape[0])
    progress.close()
    writer.close(extra={"skipped": dict(stats.counts)})
    accelerator.wait_for_everyone()

    header = None
    if accelerator.is_main_process:
        parts = read_part_infos(output_dir, accelerator.num_processes)
        skipped = SkipStats()
        for part in parts:
            skipped.counts.update(part.get("skipped", {}))
        source_name = args.dataset_name or str(Path(args.train_data_dir).resolve())
        metadata = {
            "resolution": args.resolution,
            "min_image_size": args.min_image_size,
            "image_tokenizer": "{}:{}".format(*plan.image_tokenizer)
            + (f" ({plan.pretrained})" if plan.image_tokenizer[0] == "pipeline" else ""),
            "compute_dtype": str(weight_dtype).replace("torch.", ""),
            "source": {
                "data": source_name,
                "image_column": args.image_column,
                "caption_column": args.caption_column,
                "split": args.dataset_split,
            },
            "skipped": {r: skipped.counts[r] for r in SKIP_REASONS if skipped.counts.get(r)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        header = write_header(output_dir, num_tokens, bits_per_token, parts, metadata)
        logger.info(
            f"Wrote {header['num_images']} latents ({header['bytes_per_image']} bytes each, {num_tokens} tokens x "
            f"{bits_per_token} bits) to {output_dir} in {time.time() - started:.1f}s; skipped records: "
            f"{skipped.summary()}"
        )
    end_run(accelerator)
    return header or {}


if __name__ == "__main__":
    main(parse_args())
