#!/usr/bin/env python
# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Train an Instella-T2I text-to-image generator in the 1D binary latent space.

    accelerate launch training_scripts/train_t2i.py --model diffusion|ar \
        --pretrained_model_name_or_path <instella pipeline> --preset instella-t2i \
        --train_data_dir <images> | --dataset_name <hub data set> | --latents_dir <precomputed store> \
        --output_dir <folder> [...]

The paper's recipe (Instella-T2I §2.2, §2.3, §4, Appendix B) is the default: frozen AMD-OLMo-1B text encoder (every
layer's hidden states), frozen binary image tokenizer, AdamW lr 1e-4 with 1k warm-up steps, gradient clipping 1.0,
prompts dropped to "" with probability 0.1, logit-normal timesteps and the flip-logit BCE for diffusion, next-token
BCE over the 64 bits (with the split token) for AR. bf16, ZeRO-2 and gradient checkpointing come from the accelerate
config and flags (see training_scripts/README.md).

The output folder holds a complete pipeline (`InstellaT2IPipeline` / `InstellaARPipeline`, `from_pretrained`-able),
a model card, tensorboard logs and the `checkpoint-<step>` folders.
"""

import argparse
import math
import os
import time
from pathlib import Path

import torch
from accelerate.logging import get_logger
from diffusers.training_utils import EMAModel

from diffusers_bit import BernoulliScheduler, InstellaARPipeline, InstellaT2IPipeline, unpack_bits
from diffusers_bit.presets import load_preset_config, preset_path
from diffusers_bit.training import (
    BatchDataset,
    ImageCaptionProcessor,
    LatentStore,
    TextFeatureCache,
    apply_prompt_dropout,
    build_source,
    collate_images,
    collate_latents,
    encode_text,
    generator_loss,
    process_latent_record,
    upload_training_folder,
    write_model_card,
)
from diffusers_bit.training.components import (
    GENERATOR_CLASSES,
    build_generator,
    check_resolution,
    image_tokenizer_config,
    load_image_tokenizer,
    load_text_components,
    plan_components,
    resolve_pretrained,
    text_encoder_dims,
)
from diffusers_bit.training.data import SkipStats
from diffusers_bit.training.latent_store import HEADER as LATENT_STORE_HEADER
from diffusers_bit.training.loop import MicroBatch, TrainingLoop, end_run, log_image_grid, optimizer_update
from diffusers_bit.training.lora import (
    TrainableParameters,
    add_lora_adapter,
    add_lora_args,
    check_lora_args,
    check_lora_targets,
    lora_summary,
    register_lora_checkpoint_hooks,
    save_adapter,
    trainable_names,
    write_lora_model_card,
)
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
from diffusers_bit.utils.checks import read_json_file
from diffusers_bit.utils.dtypes import mixed_precision_dtype
from diffusers_bit.utils.image_grid import image_grid

logger = get_logger(__name__, log_level="INFO")

NOISE_STREAM, DROPOUT_STREAM = 1, 2  # random streams of a micro-batch (timesteps and noise; prompt dropout)


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], fromfile_prefix_chars="@")

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        type=str,
        default="diffusion",
        choices=["diffusion", "ar"],
        help="Generator to train: Bernoulli diffusion (BinaryDiT) or autoregressive (BinaryARTransformer).",
    )
    group.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        default=None,
        help="A saved InstellaT2IPipeline/InstellaARPipeline (folder or Hub repo id). Provides the image "
        "tokenizer and text encoder, and without --preset the generator to fine-tune.",
    )
    group.add_argument("--revision", type=str, default=None, help="Revision of --pretrained_model_name_or_path.")
    group.add_argument(
        "--preset",
        type=str,
        default=None,
        help="Train the generator from scratch with this architecture (tiny, instella-t2i or a preset "
        "folder). Components no pipeline provides come from the preset (random weights).",
    )
    group.add_argument(
        "--text_encoder",
        type=str,
        default=None,
        help="Frozen text encoder: any transformers model with hidden states. Default: the pipeline's, "
        "else the preset's, else amd/AMD-OLMo-1B.",
    )
    group.add_argument(
        "--image_tokenizer",
        type=str,
        default=None,
        help="A BinaryLatentTokenizer folder or repo (overrides the pipeline's image tokenizer).",
    )
    group.add_argument("--max_sequence_length", type=int, default=128, help="Prompt truncation (paper: 128).")
    group.add_argument(
        "--cache_text_features",
        action="store_true",
        help="Encode each distinct caption once and reuse its features (BERT-style encoders with right "
        "padding only; exact there, refused for decoder-only LMs). Saves the text encoder's time "
        "when captions repeat.",
    )
    group.add_argument("--cache_dir", type=str, default=None, help="Cache of downloaded models and data sets.")

    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A Hub data set (or anything datasets.load_dataset takes) with images and captions.",
    )
    group.add_argument("--dataset_config_name", type=str, default=None)
    group.add_argument("--dataset_split", type=str, default="train")
    group.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="Local data: an imagefolder with metadata.jsonl, webdataset .tar shards, or .parquet files.",
    )
    group.add_argument(
        "--latents_dir",
        type=str,
        default=None,
        help="A latent store written by precompute_latents.py (skips the image tokenizer).",
    )
    group.add_argument("--image_column", type=str, default="image")
    group.add_argument(
        "--caption_column",
        type=str,
        default="text",
        help="Caption column (a string, or a list of strings of which one is drawn per epoch).",
    )
    group.add_argument(
        "--streaming", action="store_true", help="Stream the data set instead of downloading/indexing it."
    )
    group.add_argument("--shuffle_buffer_size", type=int, default=1000, help="Shuffle buffer of streamed data.")
    group.add_argument("--max_train_samples", type=int, default=None, help="Use only this many records (debugging).")
    group.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Training resolution; must be one the image tokenizer encodes (512/768/1024 for the paper's). "
        "Default: the latent store's with --latents_dir, else 512.",
    )
    group.add_argument(
        "--min_image_size",
        type=int,
        default=None,
        help="Skip images whose shorter edge is smaller (default: resolution / 2 as in the paper; 0 keeps all).",
    )
    group.add_argument("--dataloader_num_workers", type=int, default=0)
    group.add_argument(
        "--prompt_dropout",
        type=float,
        default=0.1,
        help="Probability of replacing a caption by '' (classifier-free guidance; paper: 0.1).",
    )

    group = parser.add_argument_group("training")
    group.add_argument("--output_dir", type=str, default="instella-t2i-model")
    group.add_argument(
        "--seed", type=int, default=None, help="Seed of weights, data order and noise (resume keeps it)."
    )
    group.add_argument(
        "--train_batch_size",
        type=int,
        default=16,
        help="Batch size per device (paper: 512 per MI300X, global 4096 on 8 GPUs).",
    )
    group.add_argument("--num_train_epochs", type=int, default=1)
    group.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Optimizer steps; overrides --num_train_epochs (required with --streaming).",
    )
    add_optimization_args(group, lr_scheduler_help="Learning-rate schedule (paper: constant after a linear warm-up).")
    add_ema_args(group, use_ema_help="Keep an EMA of the weights; the saved pipeline uses it.")
    add_mixed_precision_args(group)

    group = parser.add_argument_group("LoRA (fine-tune an adapter of the pretrained generator)")
    add_lora_args(group)

    group = parser.add_argument_group("logging, checkpoints, validation, Hub")
    add_logging_args(group, tracker_project_name="train_t2i")
    add_checkpointing_args(group)
    group.add_argument("--validation_prompts", type=str, nargs="+", default=None)
    group.add_argument("--validation_steps", type=int, default=500)
    group.add_argument("--validation_inference_steps", type=int, default=20, help="Diffusion sampling steps.")
    group.add_argument("--validation_guidance_scale", type=float, default=None, help="Default: the pipeline's.")
    group.add_argument("--validation_temperature", type=float, default=None, help="Default: the pipeline's.")
    add_hub_args(group)

    args = parser.parse_args(argv)
    validate_args(args)
    return args


def validate_args(args: argparse.Namespace) -> None:
    """Cheap checks, before any model or data is loaded; errors name the flag."""
    sources = [name for name in ("dataset_name", "train_data_dir", "latents_dir") if getattr(args, name)]
    if len(sources) != 1:
        raise ValueError(
            f"pass exactly one of --dataset_name, --train_data_dir, --latents_dir (got {sources or 'none'})"
        )
    if args.pretrained_model_name_or_path is None and args.preset is None:
        raise ValueError("pass --preset (train from scratch) and/or --pretrained_model_name_or_path")
    check_lora_args(args)
    if args.latents_dir and args.streaming:
        raise ValueError("--streaming does not apply to --latents_dir (a latent store is memory-mapped)")
    if args.latents_dir:  # the store fixes the resolution the latents were encoded at
        if not Path(args.latents_dir).is_dir():
            raise ValueError(
                f"--latents_dir {args.latents_dir!r} is not a folder (write one with precompute_latents.py)"
            )
        header = Path(args.latents_dir, LATENT_STORE_HEADER)
        if not header.is_file():
            raise ValueError(
                f"--latents_dir {args.latents_dir!r} is not a complete latent store (no {LATENT_STORE_HEADER}; "
                "an interrupted precompute_latents.py run?)"
            )
        stored = read_json_file(header, "the latent store header")
        stored = stored.get("resolution") if isinstance(stored, dict) else None
        if args.resolution is not None and stored is not None and args.resolution != stored:
            raise ValueError(f"--resolution {args.resolution} differs from the {stored}px of the --latents_dir store")
        args.resolution = args.resolution or stored
    args.resolution = args.resolution or 512
    check_common_args(args, positive=("max_sequence_length", "validation_inference_steps"))
    if not 0.0 <= args.prompt_dropout <= 1.0:
        raise ValueError(f"--prompt_dropout must be in [0, 1], got {args.prompt_dropout}")
    if args.min_image_size is None:
        args.min_image_size = args.resolution // 2


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------
def make_pipeline(model, tokenizer, text_encoder, image_tokenizer, transformer, scheduler):
    if model == "diffusion":
        pipe = InstellaT2IPipeline(tokenizer, text_encoder, image_tokenizer, transformer, scheduler)
    else:
        pipe = InstellaARPipeline(tokenizer, text_encoder, image_tokenizer, transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_noise_scheduler(plan, preset) -> BernoulliScheduler:
    if plan.pretrained is not None:
        folder = resolve_pretrained(plan) / "scheduler"
        if folder.is_dir():
            return BernoulliScheduler.from_pretrained(str(folder))
    if preset is not None and (preset_path(preset) / "scheduler").is_dir():
        return BernoulliScheduler.from_config(load_preset_config(preset, "scheduler"))
    return BernoulliScheduler()


def log_validation(pipe, args, accelerator, step: int, seed: int) -> None:
    logger.info(f"Running validation at step {step}: {len(args.validation_prompts)} prompts")
    kwargs = {"height": args.resolution, "width": args.resolution, "output_type": "pil"}
    if args.model == "diffusion":
        kwargs["num_inference_steps"] = args.validation_inference_steps
    if args.validation_guidance_scale is not None:
        kwargs["guidance_scale"] = args.validation_guidance_scale
    if args.validation_temperature is not None:
        kwargs["temperature"] = args.validation_temperature
    # the same noise at every validation, independent of the training RNG
    generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = pipe.transformer.training
    pipe.transformer.eval()
    with torch.no_grad(), accelerator.autocast():
        images = pipe(list(args.validation_prompts), generator=generator, **kwargs).images
    pipe.transformer.train(was_training)
    grid = image_grid(images, cols=len(images))
    log_image_grid(accelerator, "validation", grid, step, caption=" | ".join(args.validation_prompts))
    folder = Path(args.output_dir, args.logging_dir, "validation")
    folder.mkdir(parents=True, exist_ok=True)
    grid.save(folder / f"step-{step:08d}.png")


def data_description(args, source, stats: SkipStats) -> str:
    if args.latents_dir:
        where = f"precomputed latent store `{args.latents_dir}` ({len(source)} images)"
    elif args.dataset_name:
        where = f"Hub data set `{args.dataset_name}`" + (
            f" ({args.dataset_config_name})" if args.dataset_config_name else ""
        )
    else:
        where = f"local data `{Path(args.train_data_dir).name}`"
    if not args.latents_dir and hasattr(source, "__len__"):
        where += f", {len(source)} records"
    parts = [where, f"columns image=`{args.image_column}` caption=`{args.caption_column}`"]
    if not args.latents_dir:
        parts.append(
            f"{args.resolution}px (shorter edge resized, centre crop; images under {args.min_image_size}px skipped)"
        )
    parts.append(f"skipped records: {stats.summary()}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> dict:
    started = time.time()
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args, output_dir)

    # == where everything comes from; checked before anything heavy is loaded ==
    plan = plan_components(
        args.model,
        args.pretrained_model_name_or_path,
        args.preset,
        args.text_encoder,
        args.image_tokenizer,
        args.revision,
        args.cache_dir,
    )
    tokenizer_config = image_tokenizer_config(plan)
    check_resolution(tokenizer_config, args.resolution)
    if args.use_lora:  # the target modules against the pretrained generator's architecture (a meta-device skeleton)
        args.lora_target_modules = check_lora_targets(plan, args.model, args.lora_target_modules)
    num_tokens, bits_per_token = tokenizer_config["num_latent_tokens"], tokenizer_config["bits_per_token"]

    if args.latents_dir:
        source = LatentStore(args.latents_dir)
        if (source.num_tokens, source.bits_per_token) != (num_tokens, bits_per_token):
            raise ValueError(
                f"--latents_dir holds {source.num_tokens} x {source.bits_per_token}-bit latents but the "
                f"image tokenizer makes {num_tokens} x {bits_per_token}"
            )
        process_fn, collate_fn = process_latent_record, collate_latents
    else:
        with accelerator.main_process_first():  # the main process prepares the `datasets` cache, the others reuse it
            source = build_source(
                args.dataset_name,
                args.train_data_dir,
                args.dataset_config_name,
                args.dataset_split,
                args.image_column,
                args.caption_column,
                args.streaming,
                args.cache_dir,
                args.shuffle_buffer_size,
                args.max_train_samples,
            )
        process_fn = ImageCaptionProcessor(args.resolution, args.image_column, args.caption_column, args.min_image_size)
        collate_fn = collate_images

    # == output folder, resume point, seed, Hub repo ==
    resume_path, seed, repo_id = prepare_run(accelerator, output_dir, args)

    # == models ==
    weight_dtype = mixed_precision_dtype(accelerator.mixed_precision)
    tokenizer, text_encoder = load_text_components(plan, dtype=weight_dtype)
    text_encoder.to(accelerator.device)
    image_tokenizer = load_image_tokenizer(plan, dtype=weight_dtype).to(accelerator.device)
    transformer = build_generator(plan, args.model, tokenizer_config, text_encoder_dims(text_encoder))
    # what trains: every parameter, or (--use_lora) the adapter's, the base frozen in the training dtype
    trainable = add_lora_adapter(transformer, args, weight_dtype) if args.use_lora else list(transformer.parameters())
    transformer.train()
    noise_scheduler = load_noise_scheduler(plan, args.preset) if args.model == "diffusion" else None
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    model_cls = GENERATOR_CLASSES[args.model]
    pipeline_cls = InstellaT2IPipeline if args.model == "diffusion" else InstellaARPipeline
    ema_model = None
    if args.use_lora:  # checkpoints hold the adapter (and its EMA) in diffusers' LoRA format
        if args.use_ema:
            ema_model = EMAModel(trainable, decay=args.ema_decay)
        register_lora_checkpoint_hooks(accelerator, pipeline_cls, ema_model, trainable_names(transformer))
    else:
        if args.use_ema:
            ema_model = EMAModel(
                transformer.parameters(), decay=args.ema_decay, model_cls=model_cls, model_config=transformer.config
            )
        # checkpoints hold the transformer (and its EMA) as `save_pretrained` folders
        register_checkpoint_hooks(accelerator, {"transformer": model_cls}, ema_model, ema_subfolder="transformer_ema")

    optimizer = get_optimizer(args, trainable)

    def make_dataset(epoch: int, start_index: int = 0) -> BatchDataset:
        return BatchDataset(
            source,
            process_fn,
            collate_fn,
            args.train_batch_size,
            seed,
            epoch,
            accelerator.process_index,
            accelerator.num_processes,
            start_index=start_index,
        )

    streaming = args.streaming
    items_per_epoch = None if streaming else len(make_dataset(0))
    if items_per_epoch == 0:
        raise ValueError("the training data is empty: check --dataset_name/--train_data_dir/--latents_dir")
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * math.ceil(items_per_epoch / args.gradient_accumulation_steps)
    lr_scheduler = get_lr_scheduler(args, optimizer, accelerator.num_processes)
    if accelerator.state.deepspeed_plugin is not None:  # no dataloader goes through prepare()
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_batch_size
    transformer, optimizer, lr_scheduler = accelerator.prepare(transformer, optimizer, lr_scheduler)
    if ema_model is not None:
        ema_model.to(accelerator.device)

    if accelerator.is_main_process:
        accelerator.init_trackers(args.tracker_project_name, config=scalar_config(vars(args)))

    pipe = make_pipeline(
        args.model, tokenizer, text_encoder, image_tokenizer, accelerator.unwrap_model(transformer), noise_scheduler
    )

    loop = TrainingLoop(
        accelerator,
        output_dir,
        args,
        seed,
        make_dataset,
        models=(transformer,),
        ema_model=ema_model,
        ema_target=TrainableParameters(trainable) if args.use_lora else transformer,
        lr_scheduler=lr_scheduler,
        meters={"loss_ema": "train_loss", "accuracy_ema": "bit_accuracy"},
        loss_key="train_loss",
        progress=lambda logs: {"loss": f"{logs['train_loss']:.4f}", "acc": f"{logs['bit_accuracy']:.3f}"},
        data_hint="check the data, --image_column/--caption_column and --min_image_size",
    )
    loop.resume(resume_path)

    logger.info("***** Running training *****")
    logger.info(
        f"  Generator = {args.model} ({model_cls.__name__}, "
        f"{sum(p.numel() for p in transformer.parameters()) / 1e6:.2f}M parameters)"
    )
    if args.use_lora:
        logger.info(
            f"  LoRA = rank {args.rank}, alpha {args.lora_alpha:g} on {args.lora_target_modules}: "
            f"{sum(p.numel() for p in trainable) / 1e6:.3f}M trained parameters"
        )
    logger.info(f"  Components = {plan.describe()}")
    logger.info(
        f"  Data = {'latent store' if args.latents_dir else 'images, tokenized on the fly'}, "
        f"{'streaming' if streaming else f'{items_per_epoch} batches per epoch per process'}"
    )
    logger.info(
        f"  Batch size per device = {args.train_batch_size}, total (parallel, distributed & accumulation) = "
        f"{loop.total_batch_size}"
    )
    logger.info(f"  Gradient accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {args.max_train_steps} (starting at {loop.global_step})")

    device = accelerator.device
    if args.cache_text_features:
        text_features = TextFeatureCache(pipe, device, args.max_sequence_length)
    else:
        text_features = lambda captions: encode_text(pipe, captions, device, args.max_sequence_length)  # noqa: E731

    def train_step(batch: dict, micro: MicroBatch) -> dict:
        # every random draw of this micro-batch is a function of (seed, process, epoch, batch): resume-exact
        noise_generator = micro.torch_generator(NOISE_STREAM)
        dropout_rng = micro.numpy_rng(DROPOUT_STREAM)
        with torch.no_grad():
            if args.latents_dir:
                bits = unpack_bits(batch["packed"].to(device), num_tokens, bits_per_token)
            else:
                pixels = batch["pixel_values"].to(device, dtype=weight_dtype, non_blocking=True)
                bits = image_tokenizer.encode(pixels, sample=False).bits.float()
            captions = apply_prompt_dropout(batch["captions"], args.prompt_dropout, dropout_rng)
            text_embeds, text_mask = text_features(captions)
        loss, metrics = generator_loss(
            args.model, transformer, noise_scheduler, bits, text_embeds, text_mask, noise_generator
        )
        optimizer_update(loss, trainable, optimizer, lr_scheduler, args.max_grad_norm, accelerator)
        return {"train_loss": loss, "bit_accuracy": metrics["bit_accuracy"]}

    def validate(step: int) -> None:
        log_validation(pipe, args, accelerator, step, seed)

    loop.run(train_step, validate if args.validation_prompts else None)

    # == summary, final pipeline, model card, upload ==
    total_skips = loop.finish()
    results = {
        "global_step": loop.global_step,
        "final_loss": loop.meters["loss_ema"].value,
        "bit_accuracy": loop.meters["accuracy_ema"].value,
        "skipped": dict(total_skips.counts),
        "images_seen": loop.state["images_seen"],
        "train_time": loop.state["train_time"],
        "loss_history": [(h["step"], h["train_loss"]) for h in loop.history],
        "seed": seed,
    }
    if accelerator.is_main_process:
        model = loop.final_weights(transformer)
        if args.use_lora:  # the adapter only: pytorch_lora_weights.safetensors
            weight_file = save_adapter(pipeline_cls, model, output_dir)
            results.update(lora_weights=str(weight_file), transformer=model)  # the in-memory adapted model
        else:
            if (
                weight_dtype != torch.float32
            ):  # save the frozen models in their original precision, not the compute dtype
                tokenizer, text_encoder = load_text_components(plan)
                image_tokenizer = load_image_tokenizer(plan)
            final = make_pipeline(args.model, tokenizer, text_encoder, image_tokenizer, model, noise_scheduler)
            final.save_pretrained(str(output_dir))
        hyperparameters = {
            "generator": f"{args.model} ({model_cls.__name__})",
            **common_hyperparameters(args, accelerator, loop.total_batch_size),
            "prompt_dropout": args.prompt_dropout,
            "max_sequence_length": args.max_sequence_length,
            "resolution": args.resolution,
            "seed": seed,
            "text_encoder": "{}:{}".format(*plan.text),
            "image_tokenizer": "{}:{}".format(*plan.image_tokenizer),
        }
        if noise_scheduler is not None:
            hyperparameters["timesteps"] = noise_scheduler.config.timestep_distribution
        metrics = loop.card_metrics(
            total_skips,
            {"final train loss (EMA 0.9 over steps)": "loss_ema", "final bit accuracy (EMA 0.9)": "accuracy_ema"},
        )
        training = {
            "script": "train_t2i.py",
            "data": data_description(args, source, total_skips),
            "steps": loop.global_step,
            "hyperparameters": hyperparameters,
            "metrics": metrics,
        }
        card_repo = repo_id or args.hub_model_id or output_dir.resolve().name
        base_model = plan.pretrained if plan.pretrained and not os.path.isdir(plan.pretrained) else None
        if args.use_lora:
            lora = lora_summary(args, trainable, weight_file)
            hyperparameters.update(
                {
                    "LoRA": f"rank {args.rank}, alpha {args.lora_alpha:g}, dropout {args.lora_dropout:g}",
                    "LoRA target modules": ", ".join(args.lora_target_modules),
                    "trained parameters": lora["parameters"],
                }
            )
            write_lora_model_card(
                output_dir,
                pipeline_cls.__name__,
                card_repo,
                plan.pretrained,
                lora,
                training,
                description=f"LoRA adapter of an Instella-T2I {args.model} generator, trained with diffusers-bit.",
            )
        else:
            write_model_card(
                final,
                output_dir,
                card_repo,
                training,
                base_model=base_model,
                description=f"Instella-T2I {args.model} generator trained with diffusers-bit.",
            )
        if args.push_to_hub:
            upload_training_folder(output_dir, repo_id, token=args.hub_token, commit_message="End of training")
            logger.info(f"Uploaded {output_dir} to {repo_id}")
        logger.info(
            f"Saved the {'LoRA adapter' if args.use_lora else 'pipeline'} to {output_dir} in "
            f"{time.time() - started:.1f}s"
        )
    end_run(accelerator)
    return results


if __name__ == "__main__":
    main(parse_args())
