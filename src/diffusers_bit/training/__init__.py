# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Reusable machinery of the training scripts in `training_scripts/` (generators and tokenizer stages): data sources
and deterministic resumable batching, the packed latent store, atomic checkpoints, component loading, objectives,
model cards and Hub upload. The scripts' common plumbing (shared flags, `Accelerator` set-up, run start, checkpoint
hooks) is in `diffusers_bit.training.script_utils`, imported from there."""

from ..metrics import LPIPS, load_perceptual_model  # the tokenizer stages' perceptual loss
from .checkpointing import (
    atomic_write_json,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temp_dirs,
    resolve_resume_checkpoint,
    save_checkpoint,
)
from .data import (
    BatchDataset,
    ImageCaptionProcessor,
    MapSource,
    SkipSample,
    SkipStats,
    StreamSource,
    build_source,
    collate_images,
    derive_seed,
    identity_collate,
    load_image,
    lookup_image,
    preprocess_image,
    synchronized_items,
)
from .discriminator import (
    DinoDiscriminator,
    adaptive_adversarial_weight,
    build_discriminator,
    hinge_discriminator_loss,
    hinge_generator_loss,
)
from .hub import create_hub_repo, upload_training_folder, write_model_card
from .latent_store import LatentStore, LatentStoreWriter, collate_latents, process_latent_record, write_header
from .objectives import (
    TextFeatureCache,
    apply_prompt_dropout,
    autoregressive_loss,
    diffusion_loss,
    encode_text,
    generator_loss,
)
