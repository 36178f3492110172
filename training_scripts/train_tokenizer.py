#!/usr/bin/env python
# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Train the Instella-T2I 1D binary image tokenizer, one stage at a time.

    accelerate launch training_scripts/train_tokenizer.py --stage 1|2|3 \
        --preset instella-t2i | --pretrained_model_name_or_path <BinaryLatentTokenizer folder or repo> \
        --train_data_dir <images> | --dataset_name <hub data set> \
        --perceptual_model <LPIPS-VGG folder or repo> [--discriminator_backbone facebook/dino-vits16] \
        --output_dir <folder> [...]

The paper's recipe (Instella-T2I §2.1 "Multi-stage training", §4, Appendix B) is the default of each stage:

- stage 1: encoder and decoder at `--resolution` (512), smooth L1 + LPIPS (both images resized to 448, plus the
  same random 224 crop of both) + code loss, quantizer temperature 0.5, every parameter trained;
- stage 2: encoder at 512, decoder at a size drawn per step from the tokenizer's `sample_sizes` (512/768/1024), the
  target resized from the source image, temperature 0.1;
- stage 3: encoder frozen; quantizer, decoder and pixel head trained with the stage-2 losses plus a hinge adversarial
  loss against a discriminator on a frozen DINO ViT-S/16 (trainable heads, own AdamW), weighted adaptively by the
  gradient norms at the pixel head's last layer, from `--discriminator_start_step` on.

AdamW lr 1e-4, 1k warm-up steps, gradient clipping 1.0. The output folder holds the trained `BinaryLatentTokenizer`
(`from_pretrained(output_dir)`), a model card, tensorboard logs and the `checkpoint-<step>` folders (which also hold
the discriminator of stage 3; it is never part of the product).
"""

import argparse
import math
import os
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from diffusers_bit import BinaryLatentTokenizer
from diffusers_bit.metrics import load_perceptual_model
from diffusers_bit.metrics import psnr_signed as psnr
from diffusers_bit.presets import load_preset_config
from diffusers_bit.training import BatchDataset, build_source, upload_training_folder
from diffusers_bit.training.components import (
    check_resolution,
    image_tokenizer_config,
    load_image_tokenizer,
    plan_components,
)
from diffusers_bit.training.data import SkipSample, SkipStats, StreamSource
from diffusers_bit.training.discriminator import DEFAULT_BACKBONE, DinoDiscriminator, build_discriminator
from diffusers_bit.training.hub import render_tokenizer_card
from diffusers_bit.training.loop import MicroBatch, TrainingLoop, end_run, log_image_grid, optimizer_update
from diffusers_bit.training.script_utils import (
    add_checkpointing_args,
    add_ema_args,
    add_hub_args,
    add_logging_args,
    add_mixed_precision_args,
    add_optimization_args,
    check_common_args,
    common_hyperparameters,
    get_lr_scheduler,
    get_optimizer,
    make_accelerator,
    prepare_run,
    register_checkpoint_hooks,
    scalar_config,
)
from diffusers_bit.training.tokenizer_data import (
    TokenizerImageProcessor,
    collate_tokenizer_images,
    decode_target,
    load_validation_images,
    resize_images,
    sample_decode_size,
)
from diffusers_bit.training.tokenizer_objectives import (
    PIXEL_LOSSES,
    TokenizerLossWeights,
    discriminator_loss,
    last_decoder_layer,
    tokenizer_loss,
)
from diffusers_bit.training.tokenizer_stages import CROP_STREAM, QUANTIZER_STREAM, STAGES
from diffusers_bit.utils.image_grid import image_grid
from diffusers_bit.utils.pil_images import tensor_to_pil

logger = get_logger(__name__, log_level="INFO")


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], fromfile_prefix_chars="@")

    group = parser.add_argument_group("stage and model")
    group.add_argument(
        "--stage",
        type=int,
        required=True,
        choices=sorted(STAGES),
        help="1: reconstruction at one resolution (temperature 0.5); 2: multi-resolution decoding "
        "(temperature 0.1); 3: frozen encoder, adversarial training with a DINO discriminator.",
    )
    group.add_argument(
        "--preset",
        type=str,
        default=None,
        help="Start from random weights with this architecture (tiny, instella-t2i or a preset folder).",
    )
    group.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="Start from a saved BinaryLatentTokenizer (folder or Hub repo; a pipeline folder with an "
        "image_tokenizer/ subfolder works too), e.g. the previous stage's --output_dir. Required "
        "for stage 3.",
    )
    group.add_argument("--revision", type=str, default=None, help="Revision of --pretrained_model_name_or_path.")
    group.add_argument("--cache_dir", type=str, default=None, help="Cache of downloaded models and data sets.")
    group.add_argument(
        "--quantizer_temperature",
        type=float,
        default=None,
        help="Bernoulli temperature of the quantizer in training (default: 0.5 in stage 1, 0.1 in "
        "stages 2 and 3). Saved into the output config.",
    )
    group.add_argument(
        "--decode_sizes",
        type=int,
        nargs="+",
        default=None,
        help="Decoder output sizes, one drawn uniformly per step (default: --resolution in stage 1, the "
        "tokenizer's sample_sizes, e.g. 512 768 1024, in stages 2 and 3).",
    )

    group = parser.add_argument_group("losses")
    group.add_argument(
        "--pixel_loss",
        type=str,
        default="smooth_l1",
        choices=PIXEL_LOSSES,
        help="Pixel loss (paper: smooth_l1). On [-1, 1] pixels smooth L1 with beta 1 is half of MSE: "
        "mse gives small models a gradient twice as strong.",
    )
    group.add_argument(
        "--pixel_loss_weight",
        "--smooth_l1_weight",
        dest="smooth_l1_weight",
        type=float,
        default=1.0,
        help="Weight of the pixel loss (--smooth_l1_weight is the older name).",
    )
    group.add_argument("--smooth_l1_beta", type=float, default=1.0, help="Beta of the smooth L1 loss (torch default).")
    group.add_argument(
        "--foreground_weight",
        type=float,
        default=1.0,
        help="Weight of foreground pixels in the pixel loss: pixels farther than "
        "--foreground_threshold from the image's median colour (the weights are normalised to mean "
        "1 per image). 1 disables it. Small objects on plain backgrounds learn faster with 5.",
    )
    group.add_argument(
        "--foreground_threshold",
        type=float,
        default=0.1,
        help="Largest per-channel distance (pixels in [-1, 1]) from the median colour that still counts "
        "as background for --foreground_weight.",
    )
    group.add_argument("--perceptual_weight", type=float, default=1.0, help="Weight of the LPIPS term (0 disables it).")
    group.add_argument(
        "--perceptual_model",
        type=str,
        default=None,
        help="LPIPS-VGG weights: a folder/file/Hub repo with a VGG16 file (torchvision's "
        "vgg16-397923af.pth) and the LPIPS heads vgg.pth, or a LPIPS.save_pretrained folder; "
        "'tiny' or a JSON config builds a random network (tests only). Required unless "
        "--perceptual_weight 0.",
    )
    group.add_argument(
        "--perceptual_size",
        type=int,
        default=448,
        help="Both images are resized to this side for the global LPIPS term (paper: 448; 0 disables).",
    )
    group.add_argument(
        "--perceptual_crop",
        type=int,
        default=224,
        help="Side of the random crop (same window in both images, at the decode resolution) for the "
        "local LPIPS term (paper: 224; 0 disables). The perceptual loss is the mean of both terms.",
    )
    group.add_argument(
        "--code_loss_weight",
        type=float,
        default=0.1,
        help="Weight of the quantizer's code loss mean(p(1-p)), which pushes bit probabilities away "
        "from 1/2 (the paper gives no value).",
    )
    group.add_argument(
        "--adversarial_weight",
        type=float,
        default=0.1,
        help="Stage 3: factor on the adaptive weight of the generator's adversarial loss.",
    )
    group.add_argument(
        "--adaptive_weight_max",
        type=float,
        default=1e4,
        help="Stage 3: the adaptive weight ||g_rec|| / (||g_adv|| + 1e-4) is clamped to [0, this].",
    )
    group.add_argument(
        "--discriminator_start_step",
        type=int,
        default=0,
        help="Stage 3: optimizer step from which the discriminator trains and the adversarial loss "
        "is used (before it: reconstruction losses only, discriminator untouched).",
    )
    group.add_argument(
        "--discriminator_backbone",
        type=str,
        default=DEFAULT_BACKBONE,
        help="Stage 3: frozen ViT backbone (Hub name or folder of a transformers ViTModel; 'tiny' or a "
        "ViTConfig JSON builds a random one, tests only).",
    )
    group.add_argument(
        "--discriminator_layers",
        type=int,
        nargs="+",
        default=None,
        help="Stage 3: 0-based backbone blocks feeding a head (default: 4 evenly spaced, 2 5 8 11 for ViT-S).",
    )
    group.add_argument("--discriminator_head_channels", type=int, default=128)
    group.add_argument("--discriminator_learning_rate", type=float, default=None, help="Default: --learning_rate.")
    group.add_argument("--discriminator_adam_beta1", type=float, default=0.5)
    group.add_argument("--discriminator_adam_beta2", type=float, default=0.9)

    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A Hub data set (or anything datasets.load_dataset takes) with an image column.",
    )
    group.add_argument("--dataset_config_name", type=str, default=None)
    group.add_argument("--dataset_split", type=str, default="train")
    group.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="Local images: an imagefolder (captions not needed), webdataset .tar shards, or .parquet.",
    )
    group.add_argument("--image_column", type=str, default="image")
    group.add_argument(
        "--streaming", action="store_true", help="Stream the data set instead of downloading/indexing it."
    )
    group.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer of streamed data.")
    group.add_argument("--max_train_samples", type=int, default=None, help="Use only this many records (debugging).")
    group.add_argument(
        "--resolution",
        type=int,
        default=512,
        help="Encoder input size (paper: 512); must be one the tokenizer config supports.",
    )
    group.add_argument(
        "--min_image_size",
        type=int,
        default=None,
        help="Skip images whose shorter edge is smaller (default: half the largest of --resolution and "
        "the decode sizes, as in the paper; 0 keeps all).",
    )
    group.add_argument("--dataloader_num_workers", type=int, default=0)

    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=str, default="instella-tokenizer")
    group.add_argument(
        "--seed", type=int, default=None, help="Seed of weights, data order and noise (resume keeps it)."
    )
    group.add_argument(
        "--train_batch_size",
        type=int,
        default=16,
        help="Batch size per device (paper: 1024 global in stages 1-2, 800 in stage 3, on 8 GPUs).",
    )
    group.add_argument("--num_train_epochs", type=int, default=1)
    group.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Optimizer steps (paper: 50k, 10k, 200k); overrides --num_train_epochs (required with --streaming).",
    )
    add_optimization_args(
        group, max_grad_norm_help="Clipping of the tokenizer's and of the discriminator's gradients (0 disables)."
    )
    add_ema_args(group, use_ema_help="Keep an EMA of the tokenizer; the saved model uses it.")
    add_mixed_precision_args(group)

    group = parser.add_argument_group("logging, checkpoints, validation, Hub")
    add_logging_args(group, tracker_project_name="train_tokenizer")
    add_checkpointing_args(group)
    group.add_argument(
        "--validation_images",
        type=str,
        nargs="+",
        default=None,
        help="Image files reconstructed at every validation (default: the first "
        "--num_validation_images images of the training data).",
    )
    group.add_argument("--num_validation_images", type=int, default=4, help="0 disables validation.")
    group.add_argument("--validation_steps", type=int, default=500)
    add_hub_args(group)

    args = parser.parse_args(argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Cheap checks, before any model or data is loaded; errors name the flag."""
    sources = [name for name in ("dataset_name", "train_data_dir") if getattr(args, name)]
    if len(sources) != 1:
        raise ValueError(f"pass exactly one of --dataset_name, --train_data_dir (got {sources or 'none'})")
    if (args.preset is None) == (args.pretrained_model_name_or_path is None):
        raise ValueError(
            "pass exactly one of --preset (random weights) and --pretrained_model_name_or_path (a saved "
            "BinaryLatentTokenizer, e.g. the previous stage's output)"
        )
    if args.stage == 3 and args.pretrained_model_name_or_path is None:
        raise ValueError(
            "--stage 3 freezes the encoder, so it needs a trained tokenizer: pass "
            "--pretrained_model_name_or_path (the stage-2 output) instead of --preset"
        )
    check_common_args(
        args,
        positive=("discriminator_head_channels",),
        non_negative=(
            "perceptual_size",
            "perceptual_crop",
            "discriminator_start_step",
            "num_validation_images",
            "smooth_l1_weight",
            "perceptual_weight",
            "code_loss_weight",
            "foreground_threshold",
            "adversarial_weight",
            "adaptive_weight_max",
            "max_grad_norm",
        ),
    )
    if not args.foreground_weight >= 1:
        raise ValueError(f"--foreground_weight must be >= 1 (1 disables it), got {args.foreground_weight}")
    if args.smooth_l1_beta <= 0:
        raise ValueError(f"--smooth_l1_beta must be > 0, got {args.smooth_l1_beta}")
    if args.quantizer_temperature is not None and args.quantizer_temperature < 0:
        raise ValueError(f"--quantizer_temperature must be >= 0, got {args.quantizer_temperature}")
    if args.decode_sizes is not None and any(size < 1 for size in args.decode_sizes):
        raise ValueError(f"--decode_sizes must be positive, got {args.decode_sizes}")
    if args.perceptual_weight > 0:
        if args.perceptual_model is None:
            raise ValueError(
                "--perceptual_model is required with --perceptual_weight > 0: a folder, file or Hub repo "
                "with LPIPS-VGG weights (VGG16 vgg16-397923af.pth + LPIPS heads vgg.pth), or 'tiny' for "
                "a random test network; --perceptual_weight 0 trains without it"
            )
        if not args.perceptual_size and not args.perceptual_crop:
            raise ValueError("--perceptual_size and --perceptual_crop are both 0: set one, or --perceptual_weight 0")
    if args.stage != 3:
        changed = [
            flag
            for flag, default in (("discriminator_start_step", 0), ("discriminator_layers", None))
            if getattr(args, flag) != default
        ]
        if changed:
            raise ValueError(f"--{changed[0]} only applies to --stage 3 (the adversarial stage)")


# ----------------------------------------------------------------------------------------------------------------------
# Stage settings and models
# ----------------------------------------------------------------------------------------------------------------------
def read_tokenizer_config(args) -> tuple[dict, object]:
    r"""The starting tokenizer's config (read without loading weights) and, for `--pretrained_model_name_or_path`, the
    component plan that loads it."""
    if args.preset is not None:
        try:
            return load_preset_config(args.preset, "image_tokenizer"), None
        except ValueError as error:
            raise ValueError(f"--preset: {error}") from None
    plan = plan_components(
        "diffusion",
        image_tokenizer=args.pretrained_model_name_or_path,
        revision=args.revision,
        cache_dir=args.cache_dir,
        need_generator=False,
    )
    try:
        config = image_tokenizer_config(plan)
    except Exception as error:
        raise ValueError(
            f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path!r}: no BinaryLatentTokenizer "
            f"config found ({type(error).__name__}: {error})"
        ) from None
    if config.get("_class_name", "BinaryLatentTokenizer") != "BinaryLatentTokenizer":
        raise ValueError(
            f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path!r} holds a "
            f"{config.get('_class_name')}, not a BinaryLatentTokenizer"
        )
    return config, plan


def stage_settings(args, config: dict) -> dict:
    r"""Everything the stage decides, checked against the tokenizer config (errors name the flag):
    `temperature`, `decode_sizes`, `source_size` (the largest decode size when it differs from the encoder size),
    `min_image_size`."""
    stage = STAGES[args.stage]
    check_resolution(config, args.resolution, "--resolution")
    if args.decode_sizes is not None:
        decode_sizes = sorted(set(args.decode_sizes))
    elif stage.multi_resolution:
        if not config.get("sample_sizes"):
            raise ValueError(
                f"--stage {args.stage} decodes at several sizes but the tokenizer config lists no "
                "`sample_sizes`; pass --decode_sizes"
            )
        decode_sizes = sorted(int(s) for s in config["sample_sizes"])
    else:
        decode_sizes = [args.resolution]
    for size in decode_sizes:
        check_resolution(config, size, "--decode_sizes")
    if args.perceptual_weight and args.perceptual_crop and args.perceptual_crop > min(decode_sizes):
        raise ValueError(
            f"--perceptual_crop {args.perceptual_crop} is larger than the smallest decoded image "
            f"({min(decode_sizes)} px); small presets need e.g. --perceptual_size {min(decode_sizes)} "
            f"--perceptual_crop {min(decode_sizes) // 2}"
        )
    largest = max(decode_sizes)
    source_size = largest if any(size != args.resolution for size in decode_sizes) else None
    min_image_size = args.min_image_size if args.min_image_size is not None else max(args.resolution, largest) // 2
    temperature = stage.temperature if args.quantizer_temperature is None else args.quantizer_temperature
    return {
        "temperature": temperature,
        "decode_sizes": decode_sizes,
        "source_size": source_size,
        "min_image_size": min_image_size,
    }


def load_start_tokenizer(args, config: dict, plan) -> BinaryLatentTokenizer:
    """The tokenizer to train, float32, in training mode (random weights drawn from the global RNG for `--preset`)."""
    if plan is None:
        model = BinaryLatentTokenizer.from_config(config)
    else:
        model = load_image_tokenizer(plan)
    return model.to(dtype=torch.float32).train().requires_grad_(True)


def data_description(args, source, stats: SkipStats, settings: dict) -> str:
    if args.dataset_name:
        where = f"Hub data set `{args.dataset_name}`" + (
            f" ({args.dataset_config_name})" if args.dataset_config_name else ""
        )
    else:
        where = f"local data `{Path(args.train_data_dir).name}`"
    if hasattr(source, "__len__"):
        where += f", {len(source)} records"
    sizes = ", ".join(str(s) for s in settings["decode_sizes"])
    parts = [
        where,
        f"image column `{args.image_column}`",
        f"encoder input {args.resolution}px, decoded at {sizes}px (shorter edge resized, centre crop; images under "
        f"{settings['min_image_size']}px skipped)",
        f"skipped records: {stats.summary()}",
    ]
    return "; ".join(parts)


def first_valid_images(source, processor, count: int, seed: int) -> dict:
    """The first `count` usable records of the training data (in storage order), processed for validation."""
    samples = []
    if isinstance(source, StreamSource):
        records = source.iter_part(seed, 0, 0, 1)
    else:
        records = (source[i] for i in range(len(source)))
    for record in records:
        if len(samples) == count:
            break
        try:
            samples.append(processor(record))
        except SkipSample:
            continue
    return collate_tokenizer_images(samples) if samples else None


@torch.no_grad()
def log_validation(tokenizer, batch, lpips, args, settings, accelerator, step: int) -> dict:
    r"""Reconstruct the validation images (thresholded bits, no sampling) at every decode size; log one grid per size
    (targets on top, reconstructions below) and PSNR / LPIPS."""
    was_training = tokenizer.training
    tokenizer.eval()
    device = accelerator.device
    pixels = batch["pixel_values"].to(device)
    metrics = {}
    folder = Path(args.output_dir, args.logging_dir, "validation")
    folder.mkdir(parents=True, exist_ok=True)
    with accelerator.autocast():
        bits = tokenizer.encode(pixels, sample=False).bits
    for size in settings["decode_sizes"]:
        target = decode_target(batch, size, device)
        with accelerator.autocast():
            recon = tokenizer.decode(bits, height=size, width=size).sample.float()
        metrics[f"val/psnr_{size}"] = psnr(recon, target).mean().item()
        if lpips is not None:
            view = args.perceptual_size or size
            metrics[f"val/lpips_{size}"] = lpips(
                resize_images(recon.clamp(-1, 1), view, "bilinear"), resize_images(target, view, "bilinear")
            ).item()
        grid = image_grid(tensor_to_pil(target) + tensor_to_pil(recon), cols=len(target))
        log_image_grid(accelerator, f"validation/{size}px", grid, step)
        grid.save(folder / f"step-{step:08d}-{size}px.png")
    tokenizer.train(was_training)
    accelerator.log(metrics, step=step)
    logger.info(f"validation at step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict:
    started = time.time()
    output_dir = Path(args.output_dir)
    stage = STAGES[args.stage]
    accelerator = make_accelerator(args, output_dir)
    if accelerator.state.deepspeed_plugin is not None:
        raise ValueError(
            "train_tokenizer.py runs with plain data parallelism (the paper shards nothing for the "
            "tokenizer, and stage 3 has two models with two optimizers): launch without a DeepSpeed "
            "config, e.g. `accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16`"
        )

    # == where everything comes from; checked before anything heavy is loaded ==
    config, plan = read_tokenizer_config(args)
    settings = stage_settings(args, config)
    decode_sizes, temperature = settings["decode_sizes"], settings["temperature"]
    if args.preset is not None and args.stage == 2:
        logger.warning("--stage 2 from random weights: the paper starts stage 2 from the stage-1 tokenizer")
    with accelerator.main_process_first():  # the main process prepares the `datasets` cache, the others reuse it
        source = build_source(
            args.dataset_name,
            args.train_data_dir,
            args.dataset_config_name,
            args.dataset_split,
            args.image_column,
            None,
            args.streaming,
            args.cache_dir,
            args.shuffle_buffer_size,
            args.max_train_samples,
        )
    processor = TokenizerImageProcessor(
        args.resolution, settings["source_size"], args.image_column, settings["min_image_size"]
    )
    validation_batch = None
    if args.validation_images:
        validation_batch = load_validation_images(args.validation_images, processor)

    # == output folder, resume point, seed, Hub repo ==
    resume_path, seed, repo_id = prepare_run(accelerator, output_dir, args)

    # == models ==
    device = accelerator.device
    tokenizer = load_start_tokenizer(args, config, plan)
    if args.gradient_checkpointing:
        tokenizer.enable_gradient_checkpointing()
    if not stage.train_encoder:
        tokenizer.encoder.requires_grad_(False)
        tokenizer.encoder.gradient_checkpointing = False  # no graph is built through a frozen encoder
    lpips = None
    if args.perceptual_weight > 0:
        lpips = load_perceptual_model(args.perceptual_model, cache_dir=args.cache_dir).to(device)
    discriminator = None
    if stage.adversarial:
        discriminator = build_discriminator(
            args.discriminator_backbone,
            args.discriminator_layers,
            args.discriminator_head_channels,
            cache_dir=args.cache_dir,
        )
        discriminator.train()
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(
            tokenizer.parameters(), decay=args.ema_decay, model_cls=BinaryLatentTokenizer, model_config=tokenizer.config
        )

    # checkpoints hold the tokenizer (and its EMA) and the discriminator as `save_pretrained` folders
    register_checkpoint_hooks(
        accelerator,
        {"tokenizer": BinaryLatentTokenizer, "discriminator": DinoDiscriminator},
        ema_model,
        ema_subfolder="tokenizer_ema",
    )

    trainable = [p for p in tokenizer.parameters() if p.requires_grad]
    optimizer = get_optimizer(args, trainable)

    def make_dataset(epoch: int, start_index: int = 0) -> BatchDataset:
        return BatchDataset(
            source,
            processor,
            collate_tokenizer_images,
            args.train_batch_size,
            seed,
            epoch,
            accelerator.process_index,
            accelerator.num_processes,
            start_index=start_index,
        )

    streaming = args.streaming
    items_per_epoch = None if streaming else len(make_dataset(0))
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * math.ceil(items_per_epoch / args.gradient_accumulation_steps)

    lr_scheduler = get_lr_scheduler(args, optimizer, accelerator.num_processes)
    if discriminator is not None:
        d_optimizer = torch.optim.AdamW(
            list(discriminator.head_parameters()),
            lr=args.discriminator_learning_rate or args.learning_rate,
            betas=(args.discriminator_adam_beta1, args.discriminator_adam_beta2),
            weight_decay=args.adam_weight_decay,
            eps=args.adam_epsilon,
        )
        # steps only when the discriminator trains: its warm-up starts then
        d_scheduler = get_lr_scheduler(args, d_optimizer, accelerator.num_processes)
        model, optimizer, lr_scheduler, discriminator, d_optimizer, d_scheduler = accelerator.prepare(
            tokenizer, optimizer, lr_scheduler, discriminator, d_optimizer, d_scheduler
        )
        models = (model, discriminator)
    else:
        model, optimizer, lr_scheduler = accelerator.prepare(tokenizer, optimizer, lr_scheduler)
        models = (model,)
    tokenizer = accelerator.unwrap_model(model)
    last_layer = last_decoder_layer(tokenizer)
    if ema_model is not None:
        ema_model.to(device)

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=scalar_config(vars(args)))
        if validation_batch is None and args.num_validation_images:
            validation_batch = first_valid_images(source, processor, args.num_validation_images, seed)

    loop = TrainingLoop(
        accelerator,
        output_dir,
        args,
        seed,
        make_dataset,
        models=models,
        ema_model=ema_model,
        ema_target=tokenizer,
        lr_scheduler=lr_scheduler,
        meters={"loss_ema": "loss", "rec_ema": "reconstruction", "d_loss_ema": "d_loss"},
        progress=lambda logs: {"loss": f"{logs['loss']:.4f}", "size": logs["decode_size"]},
        extra_state={"decode_sizes_seen": {}, "discriminator_steps": 0, "stage": args.stage},
        data_hint="check the data, --image_column and --min_image_size",
    )
    state = loop.resume(resume_path)
    if state["stage"] != args.stage:
        raise ValueError(
            f"--resume_from_checkpoint {resume_path} was written by --stage {state['stage']}, not --stage {args.stage}"
        )
    sizes_seen = Counter({int(k): v for k, v in state["decode_sizes_seen"].items()})

    num_trainable = sum(p.numel() for p in trainable)
    logger.info(f"***** Tokenizer stage {args.stage}: {stage.summary} *****")
    logger.info(
        f"  Tokenizer = {sum(p.numel() for p in tokenizer.parameters()) / 1e6:.2f}M parameters, "
        f"{num_trainable / 1e6:.2f}M trained; temperature {temperature}"
    )
    logger.info(f"  Encoder input {args.resolution}px; decode sizes {decode_sizes}")
    logger.info(f"  Data = {'streaming' if streaming else f'{items_per_epoch} batches per epoch per process'}")
    logger.info(
        f"  Batch size per device = {args.train_batch_size}, total (parallel, distributed & accumulation) = "
        f"{loop.total_batch_size}"
    )
    logger.info(f"  Total optimization steps = {args.max_train_steps} (starting at {loop.global_step})")

    d_module = accelerator.unwrap_model(discriminator) if discriminator is not None else None
    weights = TokenizerLossWeights.from_args(args)
    reduce_weight = (lambda w: accelerator.reduce(w, reduction="mean")) if accelerator.num_processes > 1 else None

    def train_step(batch: dict, micro: MicroBatch) -> dict:
        # every random draw of this micro-batch is a function of (seed, [process,] epoch, batch): resume-exact
        size = sample_decode_size(decode_sizes, seed, micro.epoch, micro.index)
        pixels = batch["pixel_values"].to(device, non_blocking=True)
        target = decode_target(batch, size, device)
        adversarial = stage.adversarial and micro.global_step >= args.discriminator_start_step
        # -- tokenizer (generator) update --
        with accelerator.autocast():
            loss, metrics, recon = tokenizer_loss(
                model,
                pixels,
                target,
                size,
                temperature,
                micro.torch_generator(QUANTIZER_STREAM),
                lpips,
                micro.numpy_rng(CROP_STREAM),
                weights,
                d_module if adversarial else None,
                last_layer,
                reduce_weight,
            )
        optimizer_update(loss, model.parameters(), optimizer, lr_scheduler, args.max_grad_norm, accelerator)
        # -- discriminator update (hinge), on its own optimizer --
        if adversarial:
            with accelerator.autocast():
                d_loss, d_metrics = discriminator_loss(discriminator, target, recon)
            optimizer_update(
                d_loss, discriminator.parameters(), d_optimizer, d_scheduler, args.max_grad_norm, accelerator
            )
            metrics.update(d_metrics)
            if accelerator.sync_gradients:
                loop.state["discriminator_steps"] += 1
        sizes_seen[size] += 1
        loop.state["decode_sizes_seen"] = {str(k): v for k, v in sizes_seen.items()}
        micro.info.update(decode_size=size)
        micro.history_info.update(target_size=int(target.shape[-1]), discriminator_trained=adversarial)
        return {"loss": loss, **metrics}

    def validate(step: int) -> dict:
        return log_validation(tokenizer, validation_batch, lpips, args, settings, accelerator, step)

    loop.run(train_step, validate if validation_batch is not None else None)

    # == summary, final tokenizer, model card, upload ==
    total_skips = loop.finish()
    history = list(loop.history)
    results = {
        "global_step": loop.global_step,
        "final_loss": loop.meters["loss_ema"].value,
        "final_reconstruction_loss": loop.meters["rec_ema"].value,
        "skipped": dict(total_skips.counts),
        "images_seen": loop.state["images_seen"],
        "train_time": loop.state["train_time"],
        "steps_per_second": (loop.global_step - loop.first_step) / max(loop.run_seconds, 1e-9),
        "history": history,
        "loss_history": [(h["step"], h["loss"]) for h in history],
        "decode_sizes_seen": dict(sizes_seen),
        "discriminator_steps": loop.state["discriminator_steps"],
        "validation": loop.validation_metrics,
        "seed": seed,
        "temperature": temperature,
        "decode_sizes": decode_sizes,
    }
    if accelerator.is_main_process:
        final = loop.final_weights(model)
        final.register_to_config(quantizer_temperature=temperature)
        final.save_pretrained(str(output_dir))
        hyperparameters = {
            "stage": args.stage,
            "start": f"preset {args.preset}" if args.preset else f"`{args.pretrained_model_name_or_path}`",
            "trained parameters": "all" if stage.train_encoder else "quantizer, decoder, pixel head (encoder frozen)",
            "quantizer temperature": temperature,
            "encoder resolution": args.resolution,
            "decode sizes (one drawn per step)": ", ".join(str(s) for s in decode_sizes),
            **common_hyperparameters(args, accelerator, loop.total_batch_size),
            "pixel loss": f"{args.pixel_loss}, weight {args.smooth_l1_weight}"
            + (f", beta {args.smooth_l1_beta}" if args.pixel_loss == "smooth_l1" else "")
            + (
                f", foreground x{args.foreground_weight:g} (threshold {args.foreground_threshold:g})"
                if args.foreground_weight != 1
                else ""
            ),
            "perceptual (LPIPS-VGG)": (
                f"weight {args.perceptual_weight}, resize {args.perceptual_size}, crop "
                f"{args.perceptual_crop}, model `{args.perceptual_model}`"
                if lpips is not None
                else "off"
            ),
            "code loss weight": args.code_loss_weight,
            "seed": seed,
        }
        if stage.adversarial:
            hyperparameters.update(
                {
                    "discriminator": f"frozen `{args.discriminator_backbone}` + heads on blocks {d_module.feature_layers} "
                    f"({args.discriminator_head_channels} channels, spectral norm), hinge loss",
                    "discriminator optimizer": f"AdamW lr {args.discriminator_learning_rate or args.learning_rate}, betas "
                    f"({args.discriminator_adam_beta1}, {args.discriminator_adam_beta2})",
                    "adversarial weight": f"{args.adversarial_weight} x adaptive (clamped to [0, {args.adaptive_weight_max:g}])",
                    "discriminator_start_step": args.discriminator_start_step,
                }
            )
        metrics = loop.card_metrics(
            total_skips,
            {"final train loss (EMA 0.9 over steps)": "loss_ema", "final reconstruction loss (EMA 0.9)": "rec_ema"},
        )
        metrics["steps per decode size (micro-batches)"] = ", ".join(
            f"{k}px: {v}" for k, v in sorted(sizes_seen.items())
        )
        if stage.adversarial:
            metrics["discriminator steps"] = loop.state["discriminator_steps"]
            if loop.meters["d_loss_ema"].count:
                metrics["final discriminator loss (EMA 0.9)"] = f"{loop.meters['d_loss_ema'].value:.4f}"
        for name, value in loop.validation_metrics.items():
            metrics[f"validation {name.split('/', 1)[-1]}"] = f"{value:.4f}"
        training = {
            "script": "train_tokenizer.py",
            "data": data_description(args, source, total_skips, settings),
            "steps": loop.global_step,
            "hyperparameters": hyperparameters,
            "metrics": metrics,
        }
        card_repo = repo_id or args.hub_model_id or output_dir.resolve().name
        start = args.pretrained_model_name_or_path
        base_model = start if start and not os.path.exists(start) else None
        card = render_tokenizer_card(
            final,
            card_repo,
            args.stage,
            training,
            base_model=base_model,
            description=f"Instella-T2I binary image tokenizer, stage {args.stage}, trained with diffusers-bit.",
        )
        (output_dir / "README.md").write_text(card, encoding="utf-8")
        if args.push_to_hub:
            upload_training_folder(output_dir, repo_id, token=args.hub_token, commit_message="End of training")
            logger.info(f"Uploaded {output_dir} to {repo_id}")
        logger.info(f"Saved the tokenizer to {output_dir} in {time.time() - started:.1f}s")
    end_run(accelerator)
    return results


if __name__ == "__main__":
    main(parse_args())
