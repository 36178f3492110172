r"""Training section of the benchmark suite: samples per second of one optimizer step (forward, backward, gradient
clipping at 1.0, AdamW) of each generator and each tokenizer stage, at the tiny and paper configs, with and without
gradient checkpointing.

- `dit`, `ar`: precomputed latents (random bits) and precomputed per-layer text features (random, with left padding
  of random length), `diffusers_bit.training.objectives.generator_loss` and `optimizer_update`: the functions
  `train_t2i.py`'s step calls.
- `dit-lora`, `ar-lora`: the same step of `train_t2i.py --use_lora`: a LoRA adapter of rank `--train_lora_rank`
  (alpha = rank) on the default target modules (attention and feed-forward linears of every block), added by
  `diffusers_bit.training.lora.add_lora_adapter` (the base frozen in the training dtype, the adapter in float32 and
  the only parameters AdamW sees). Its peak memory beside the full fine-tuning step's is the point of the task; the
  report derives their ratio.
- `tokenizer-stage1/2/3`: the step of `training_scripts/train_tokenizer.py`, through the same functions
  (`diffusers_bit.training.tokenizer_objectives.tokenizer_loss` / `discriminator_loss` and
  `diffusers_bit.training.loop.optimizer_update`; smooth L1 + LPIPS + code loss; stage 3 adds the DINO discriminator with
  its adaptive weight and the discriminator's own update), with randomly initialised LPIPS-VGG and ViT backbones of
  the real sizes (tiny ones for the tiny preset). The encoder sees the smallest supported size; stage 1 decodes at
  that size, stages 2 and 3 at the largest size up to `--train_decode_size` (default: the largest, their most
  expensive draw).

Precision (`--train_precision`): `mixed` keeps float32 weights and runs the step under autocast to `--dtype`
(accelerate's `--mixed_precision`, what the training scripts do: 16 bytes per trained parameter with AdamW); `pure`
keeps the trained model's weights, gradients and AdamW states in `--dtype` (8 bytes per parameter; the frozen LPIPS
and discriminator networks stay float32 under the same autocast); `auto` takes `mixed` when it fits in the available
memory and `pure` otherwise. Each record names the precision used.

Batch sizes (`--train_batch_size KEY=N ...`): `KEY` is a preset (`tiny`), a preset and model (`instella-t2i.dit`) or
a preset and model family (`instella-t2i.tokenizer`); the most specific key wins. On a GPU an out-of-memory step halves
the batch and retries.
"""

import argparse
import contextlib
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np
import torch

from diffusers_bit import BernoulliScheduler, BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer, load_preset_config
from diffusers_bit.metrics import LPIPS
from diffusers_bit.models.lora import DEFAULT_LORA_TARGET_MODULES, matched_lora_modules
from diffusers_bit.training import DinoDiscriminator, generator_loss, load_perceptual_model
from diffusers_bit.training.loop import optimizer_update
from diffusers_bit.training.lora import DEFAULT_RANK as DEFAULT_LORA_RANK
from diffusers_bit.training.lora import add_lora_adapter
from diffusers_bit.training.tokenizer_objectives import (
    TokenizerLossWeights,
    discriminator_loss,
    last_decoder_layer,
    tokenizer_loss,
)
from diffusers_bit.training.tokenizer_stages import STAGES
from diffusers_bit.utils.dtypes import dtype_from_name as resolve_dtype

from .common import (
    PAPER_PRESET,
    available_memory_gib,
    batch_size_for,
    measure,
    param_count,
    parse_batch_sizes,
    record,
)

# DINO ViT-S/16 (`facebook/dino-vits16`), the stage-3 discriminator backbone, with random weights
VIT_S16 = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "intermediate_size": 1536,
    "patch_size": 16,
    "image_size": 224,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}
LEARNING_RATE, MAX_GRAD_NORM, CODE_LOSS_WEIGHT, ADVERSARIAL_WEIGHT = 1e-4, 1.0, 0.1, 0.1


# ----------------------------------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------------------------------
class TrainingJob:
    r"""One model's training step.

    Attributes:
        model (`ModelMixin`): The trained model.
        trainable (`list`): Its trained parameters.
        make_inputs (`Callable[[int], dict]`): A batch of the given size on the device.
        step (`Callable[[dict], None]`): Forward, backward, clipping and optimizer step(s).
        frozen_encoder (`bool`): Tokenizer stage 3: the encoder builds no graph, so it is never checkpointed.
        decode_size (`int`, *optional*): Tokenizer stages: the decoded image side.
    """

    def __init__(
        self,
        model,
        trainable: list,
        make_inputs: Callable,
        step: Callable,
        frozen_encoder: bool = False,
        decode_size: Optional[int] = None,
    ):
        self.model, self.trainable, self.make_inputs, self.step = model, trainable, make_inputs, step
        self.frozen_encoder, self.decode_size = frozen_encoder, decode_size

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """As the training scripts do: the whole model, except a frozen tokenizer encoder."""
        if not enabled:
            self.model.disable_gradient_checkpointing()
            return
        self.model.enable_gradient_checkpointing()
        if self.frozen_encoder:
            self.model.encoder.gradient_checkpointing = False


def _autocast(device: torch.device, dtype: torch.dtype):
    """Autocast to the benchmark dtype (both precisions: it also runs the float32 LPIPS/discriminator in `dtype`)."""
    if dtype != torch.float32:
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def _text_batch(model, batch: int, text_len: int, device, dtype, rng: np.random.Generator):
    """Random per-layer text features `(L, B, T, C)` and a left-padded mask with random prompt lengths."""
    cfg = model.config
    feats = torch.randn(
        cfg.text_num_layers or cfg.num_layers, batch, text_len, cfg.text_embed_dim, device=device, dtype=dtype
    )
    lengths = rng.integers(max(1, text_len // 4), text_len + 1, size=batch)
    mask = (torch.arange(text_len)[None, :] >= torch.as_tensor(text_len - lengths)[:, None]).long().to(device)
    return feats, mask


def generator_config(preset: str, model_name: str, blocks: Optional[int] = None) -> tuple[type, dict, int]:
    """`(class, config, full depth)` of a generator; with `blocks` below the preset's depth, the config keeps only that
    many blocks (and text layers), every width unchanged."""
    cls, component = (BinaryDiT, "transformer") if model_name == "dit" else (BinaryARTransformer, "ar_transformer")
    config = load_preset_config(preset, component)
    depth = config["num_layers"]
    if blocks is not None and blocks < depth:
        config.update(num_layers=blocks, text_num_layers=blocks)
    return cls, config, depth


def lora_settings(args) -> SimpleNamespace:
    """The `train_t2i.py --use_lora` flags of the LoRA tasks: rank `--train_lora_rank`, alpha = rank, the default
    target modules."""
    rank = getattr(args, "train_lora_rank", None) or DEFAULT_LORA_RANK
    return SimpleNamespace(
        rank=rank, lora_alpha=float(rank), lora_dropout=0.0, lora_target_modules=list(DEFAULT_LORA_TARGET_MODULES)
    )


def generator_job(preset: str, model_name: str, device, dtype, precision: str, args, lora: bool = False) -> TrainingJob:
    """BinaryDiT (`dit`) or BinaryARTransformer (`ar`) on precomputed latents and text features (`--train_blocks`:
    a model with fewer blocks); with `lora`, only a LoRA adapter trains (see the module docstring)."""
    cls, config, _ = generator_config(preset, model_name, args.train_blocks)
    model = cls.from_config(config)
    if lora:  # as train_t2i.py --use_lora: base frozen in the training dtype, adapter in float32 (`pure`: in dtype)
        model = model.to(device)
        params = add_lora_adapter(model, lora_settings(args), dtype)
        if precision == "pure":
            for param in params:
                param.data = param.data.to(dtype)
        model.train()
    else:
        model = model.to(device, dtype if precision == "pure" else torch.float32).train()
        params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=1e-2)
    scheduler = BernoulliScheduler.from_config(load_preset_config(preset, "scheduler"))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    def make_inputs(batch: int) -> dict:
        cfg = model.config
        bits = torch.randint(0, 2, (batch, cfg.num_tokens, cfg.in_channels), device=device).float()
        feats, mask = _text_batch(model, batch, args.text_len, device, dtype, rng)  # text encoder output dtype
        return {"bits": bits, "feats": feats, "mask": mask}

    def step(inputs: dict) -> None:  # what train_t2i.py's step does, without accelerate
        with _autocast(device, dtype):
            loss, _ = generator_loss(
                "diffusion" if model_name == "dit" else "ar",
                model,
                scheduler,
                inputs["bits"],
                inputs["feats"],
                inputs["mask"],
                generator,
            )
        optimizer_update(loss, params, optimizer, max_grad_norm=MAX_GRAD_NORM)

    return TrainingJob(model, params, make_inputs, step)


def _perceptual(preset: str, device, seed: int) -> LPIPS:
    """LPIPS with random weights: the narrow test network for small presets, VGG16 widths for the paper preset."""
    if preset != PAPER_PRESET:
        lpips = load_perceptual_model("tiny", seed=seed)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lpips = LPIPS()
    return lpips.to(device)


def _discriminator(preset: str, device, seed: int) -> DinoDiscriminator:
    """The stage-3 discriminator on a random ViT: ViT-S/16 for the paper preset, the tests' tiny ViT otherwise."""
    from transformers import ViTConfig, ViTModel

    from diffusers_bit.training.discriminator import TINY_BACKBONE_CONFIG

    values, head_channels = (VIT_S16, 128) if preset == PAPER_PRESET else (TINY_BACKBONE_CONFIG, 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        disc = DinoDiscriminator(ViTModel(ViTConfig(**values), add_pooling_layer=False), head_channels=head_channels)
    return disc.to(device).train()


def tokenizer_job(preset: str, stage: int, device, dtype, precision: str, args) -> TrainingJob:
    """One step of tokenizer training stage `stage` (see the module docstring)."""
    settings = STAGES[stage]
    tokenizer = BinaryLatentTokenizer.from_config(load_preset_config(preset, "image_tokenizer"))
    tokenizer = tokenizer.to(device, dtype if precision == "pure" else torch.float32).train()
    sizes = sorted(tokenizer.supported_sizes or [tokenizer.default_size])
    resolution = sizes[0]
    cap = args.train_decode_size or sizes[-1]  # stages 2/3 decode at the largest supported size up to the cap
    allowed = [size for size in sizes if size <= cap]
    if not allowed:
        raise ValueError(f"--train_decode_size {cap} is below every size of the {preset} tokenizer {sizes}")
    decode = resolution if not settings.multi_resolution else allowed[-1]
    global_size, crop = (448, 224) if preset == PAPER_PRESET else (resolution, resolution // 2)
    if not settings.train_encoder:
        tokenizer.encoder.requires_grad_(False)
    params = [p for p in tokenizer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=1e-2)
    lpips = _perceptual(preset, device, args.seed)
    disc = d_params = d_optimizer = None
    if settings.adversarial:
        disc = _discriminator(preset, device, args.seed)
        d_params = list(disc.head_parameters())
        d_optimizer = torch.optim.AdamW(d_params, lr=LEARNING_RATE, betas=(0.5, 0.9), weight_decay=1e-2)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    image_dtype = dtype if precision == "pure" else torch.float32

    def make_inputs(batch: int) -> dict:
        pixels = torch.rand(batch, 3, resolution, resolution, device=device, dtype=image_dtype) * 2 - 1
        target = pixels if decode == resolution else torch.rand(batch, 3, decode, decode, device=device) * 2 - 1
        return {"pixels": pixels, "target": target.float()}

    weights = TokenizerLossWeights(
        perceptual_size=global_size,
        perceptual_crop=crop,
        code_loss_weight=CODE_LOSS_WEIGHT,
        adversarial_weight=ADVERSARIAL_WEIGHT,
    )
    last_layer = last_decoder_layer(tokenizer)

    def step(inputs: dict) -> None:  # what train_tokenizer.py's step does, without accelerate
        target = inputs["target"]
        with _autocast(device, dtype):
            loss, _, recon = tokenizer_loss(
                tokenizer,
                inputs["pixels"],
                target,
                decode,
                settings.temperature,
                generator,
                lpips,
                rng,
                weights,
                disc,
                last_layer,
            )
        optimizer_update(loss, params, optimizer, max_grad_norm=MAX_GRAD_NORM)
        if disc is not None:
            with _autocast(device, dtype):
                d_loss, _ = discriminator_loss(disc, target, recon)
            optimizer_update(d_loss, d_params, d_optimizer, max_grad_norm=MAX_GRAD_NORM)

    return TrainingJob(
        tokenizer, params, make_inputs, step, frozen_encoder=not settings.train_encoder, decode_size=decode
    )


def generator_name(model: str) -> Optional[str]:
    """`dit` / `ar` for a generator task (`dit`, `ar`, `dit-lora`, `ar-lora`), else `None`."""
    name = model.removesuffix("-lora")
    return name if name in ("dit", "ar") else None


def _build_job(preset: str, model: str, device, dtype, precision: str, args) -> TrainingJob:
    if generator_name(model):
        return generator_job(preset, generator_name(model), device, dtype, precision, args, model.endswith("-lora"))
    return tokenizer_job(preset, int(model[-1]), device, dtype, precision, args)


def _param_counts(
    preset: str, model: str, blocks: Optional[int] = None, lora_rank: int = DEFAULT_LORA_RANK
) -> tuple[int, int]:
    """`(trained, frozen)` parameter counts of a task, from models built on the meta device (no memory)."""
    with torch.device("meta"):
        if generator_name(model):
            cls, config, _ = generator_config(preset, generator_name(model), blocks)
            generator = cls.from_config(config)
            if not model.endswith("-lora"):
                return param_count(generator), 0
            modules = dict(generator.named_modules())
            adapter = sum(
                lora_rank * (modules[name].in_features + modules[name].out_features)
                for name in matched_lora_modules(generator, DEFAULT_LORA_TARGET_MODULES)
            )
            return adapter, param_count(generator)
        tokenizer = BinaryLatentTokenizer.from_config(load_preset_config(preset, "image_tokenizer"))
        stage = STAGES[int(model[-1])]
        trained = param_count(tokenizer) - (0 if stage.train_encoder else param_count(tokenizer.encoder))
        frozen = param_count(tokenizer) - trained + param_count(_perceptual(preset, "meta", 0))
        if stage.adversarial:
            disc = _discriminator(preset, "meta", 0)
            trained += sum(p.numel() for p in disc.head_parameters())
            frozen += param_count(disc.backbone)
    return trained, frozen


def choose_precision(
    requested: str,
    preset: str,
    model: str,
    device: torch.device,
    dtype: torch.dtype,
    blocks: Optional[int] = None,
    lora_rank: int = DEFAULT_LORA_RANK,
) -> str:
    """`mixed`/`pure` as requested; `auto`: `mixed` if its weights, gradients and AdamW states (16 bytes per trained
    parameter, 4 per frozen one) plus a quarter for activations fit in the available memory. In float32 both are the
    same (`mixed`: float32 weights, no autocast)."""
    if dtype == torch.float32:
        return "mixed"
    if requested != "auto":
        return requested
    trainable, frozen = _param_counts(preset, model, blocks, lora_rank)
    available = available_memory_gib(device)
    needed = 1.25 * (16 * trainable + 4 * frozen) / 2**30
    return "mixed" if available is None or needed < available else "pure"


# ----------------------------------------------------------------------------------------------------------------------
# Section
# ----------------------------------------------------------------------------------------------------------------------
def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_training_task(args: argparse.Namespace, task: str) -> dict:
    r"""One `preset/model` task: gradient checkpointing on, then off (the order keeps the second peak honest when
    the allocator holds on to freed memory), each timed after one warm-up step. Keys:
    `training.<preset>.<model>.<ckpt|no_ckpt>.samples_per_s`.

    In `--train_dtype` (default `--dtype`). With `--train_blocks N` a generator keeps N of its blocks and its step
    time is scaled by `depth / N` (blocks hold all but ~1% of the parameters and FLOPs); the record says so and its
    peak memory is that of the smaller model.
    """
    preset, model = task.split("/")
    torch.manual_seed(args.seed)
    dtype_name = args.train_dtype or args.dtype
    device, dtype = torch.device(args.device), resolve_dtype(dtype_name)
    blocks, scale, extrapolated = None, 1.0, None
    lora_rank = lora_settings(args).rank
    if generator_name(model):
        _, config, depth = generator_config(preset, generator_name(model), args.train_blocks)
        if config["num_layers"] < depth:
            blocks, scale = config["num_layers"], depth / config["num_layers"]
            extrapolated = f"{blocks} of {depth} blocks built; step time scaled by {depth}/{blocks}"
    precision = choose_precision(args.train_precision, preset, model, device, dtype, blocks, lora_rank)
    job = _build_job(preset, model, device, dtype, precision, args)
    batch = batch_size_for(preset, model, device.type, parse_batch_sizes(args.train_batch_size))
    out = {}
    for checkpointing in (True, False):
        job.set_gradient_checkpointing(checkpointing)
        while True:
            inputs = job.make_inputs(batch)
            try:
                timing = measure(
                    lambda: job.step(inputs),
                    device,
                    repeats=args.repeats,
                    warmup=max(1, args.warmup),
                    budget_s=args.time_budget_s,
                )
                break
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if device.type != "cuda" or batch == 1 or not _is_oom(error):
                    raise
                del inputs
                job.model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                batch //= 2
        name = "ckpt" if checkpointing else "no_ckpt"
        precision_text = "float32" if dtype == torch.float32 else f"{precision} precision ({dtype_name})"
        note = f"batch {batch}, {precision_text}, gradient checkpointing {'on' if checkpointing else 'off'}"
        if generator_name(model):
            note += f", {args.text_len} text tokens"
            if model.endswith("-lora"):
                note += f", LoRA rank {lora_rank} on {', '.join(DEFAULT_LORA_TARGET_MODULES)} (base frozen)"
        elif STAGES[int(model[-1])].multi_resolution:
            note += f", decode at {job.decode_size} px"
        step_s = timing["seconds"] * scale
        out[f"training.{preset}.{model}.{name}.samples_per_s"] = record(
            batch / step_s,
            "samples/s",
            f"{preset} {model} training step, {'with' if checkpointing else 'without'} gradient checkpointing",
            note,
            extrapolated=extrapolated,
            timing=timing,
            batch_size=batch,
            precision=precision_text,
            step_s=step_s,
            trained_params=sum(p.numel() for p in job.trainable),
        )
        if blocks is not None:
            out[f"training.{preset}.{model}.{name}.samples_per_s"]["memory"] += f" of the {blocks}-block model"
    return out
