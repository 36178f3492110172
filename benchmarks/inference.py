r"""Inference sections of the benchmark suite. Each `run_<section>(args)` builds its models from the preset (random
weights, nothing downloaded), times them with [`common.measure`] and returns `{key: measurement record}`.

- `diffusion`: BinaryDiT denoising step with classifier-free guidance (one batch of 2B rows) and the scheduler step,
  with the text keys/values projected once per image (what the pipeline does) and re-projected at every step (what
  the authors' sampler does); seconds per image for `--steps` steps (measured, or extrapolated from one step with
  `--per_step_only`).
- `official`: the same step with the authors' model (`INSTELLA_OFFICIAL_REPO`), then ours with their weights on the
  same inputs in the same process (the pair behind the step-time target), and the largest flip-logit difference.
- `pixart`: the same step for diffusers' `PixArtTransformer2DModel` at the PixArt-alpha XL/2 1024 config (4096
  latent tokens, 120 text tokens, random weights); the scheduler step and the VAE decode are not included.
- `ar`: seconds per image and tokens per second with the KV cache and with the full-forward loop.
- `tokenizer`: encode at the smallest size, decode at every supported size.
- `efficiency`: FLOPs of one diffusion step (counted with `FlopCounterMode` on the meta device and analytically), its
  achieved FLOP/s, and the dtype's matmul peak measured in the same process.

The text encoder is never timed (it runs once per prompt); per-layer text features are random.

Speed switches (`--attention_backend NAME`, `--compile`) apply to our models (BinaryDiT, BinaryARTransformer,
BinaryLatentTokenizer), never to the authors' model or PixArt: `set_attention_backend(NAME)`, then regional compilation
(`compile_repeated_blocks()`, inductor) with one extra untimed call before every measurement so that compilation is
not timed. Every record says what applied to the model it measures (`compiled`, `attention_backend`).
"""

import argparse

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusers_bit import BernoulliScheduler, BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer, load_preset_config
from diffusers_bit.utils.dtypes import dtype_from_name, dtype_name
from diffusers_bit.utils.hardware import describe_cpu, preferred_dtype

from .common import cfg_text_features, measure, param_count, record, time_record

GUIDANCE_SCALE, TEMPERATURE = 5.0, 0.6  # the diffusion pipeline's defaults
AR_GUIDANCE_SCALE = 8.5

# PixArt-alpha XL/2 at 1024 px (`PixArt-alpha/PixArt-XL-2-1024-MS`, transformer/config.json; these are also the
# defaults of diffusers' `PixArtTransformer2DModel`, whose `sample_size=128` switches on the resolution and aspect
# ratio conditions of the 1024 model): 28 blocks of 16 heads x 72 = 1152, patch 2 on a 128 x 128 x 4 latent = 4096
# tokens, T5-XXL captions (4096 wide, 120 tokens).
PIXART_ALPHA_1024 = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 28,
    "cross_attention_dim": 1152,
    "attention_bias": True,
    "sample_size": 128,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 4096,
    "use_additional_conditions": True,
}
PIXART_CONFIGS = {
    "instella-t2i": (PIXART_ALPHA_1024, 1024, 120),  # (config, image side, text tokens)
    "tiny": (
        {
            **PIXART_ALPHA_1024,
            "num_attention_heads": 2,
            "attention_head_dim": 24,
            "num_layers": 2,
            "cross_attention_dim": 48,
            "sample_size": 16,
            "caption_channels": 32,
        },
        128,
        8,
    ),
}


def _context(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    torch.manual_seed(args.seed)
    return torch.device(args.device), dtype_from_name(args.dtype)


def _timing(args: argparse.Namespace, fn, device, repeats=None, warmup=None) -> dict:
    if getattr(args, "compile", False):
        fn()  # compiles (or recompiles for new shapes) outside the timed runs and the time budget
    return measure(
        fn,
        device,
        repeats=args.repeats if repeats is None else repeats,
        warmup=args.warmup if warmup is None else warmup,
        budget_s=args.time_budget_s,
    )


def speed_switches(args: argparse.Namespace) -> dict:
    """The `--compile` / `--attention_backend` settings as recorded in the records of a model they apply to."""
    return {
        "compiled": bool(getattr(args, "compile", False)),
        "frozen_weights": bool(getattr(args, "compile", False) and getattr(args, "freeze_weights", False)),
        "attention_backend": getattr(args, "attention_backend", None),
    }


# records of models the switches never touch
NOT_SWITCHED = {"compiled": False, "frozen_weights": False, "attention_backend": None}


def apply_speed_switches(model, args: argparse.Namespace):
    """`--attention_backend` (`set_attention_backend`), then `--compile` (`compile_repeated_blocks`) on one of our
    models; returns the model."""
    if getattr(args, "attention_backend", None):
        model.set_attention_backend(args.attention_backend)
    if getattr(args, "compile", False):
        model.compile_repeated_blocks(freeze_weights=bool(getattr(args, "freeze_weights", False)))
    return model


def tag_records(out: dict, switches: dict) -> dict:
    """Record in every measurement of `out` which speed switches applied (and say so in the notes when any did)."""
    said = "; ".join(
        ([f"attention backend {switches['attention_backend']}"] if switches["attention_backend"] else [])
        + (
            [f"regional torch.compile{' with frozen weights' if switches.get('frozen_weights') else ''}"]
            if switches["compiled"]
            else []
        )
    )
    for rec in out.values():
        rec.update(switches)
        if said and rec["unit"] not in ("params", "FLOP", "B"):  # counts: the same whatever the switches
            rec["note"] = f"{rec['note']}; {said}" if rec.get("note") else said
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Guided sampling, shared by our model and the authors'
# ----------------------------------------------------------------------------------------------------------------------
class GuidedSampler:
    r"""The pipeline's denoising loop around any `forward(bits (2B, N, K), t (2B,)) -> flip logits`: conditional and
    unconditional rows in one batch, guidance on the logits, then [`BernoulliScheduler.step`].

    Args:
        preset (`str`): Supplies the scheduler config.
        shape (`tuple`): `(B, N, K)` of the bits.
        steps (`int`): Denoising steps per image.
    """

    def __init__(self, preset: str, shape: tuple, steps: int, device: torch.device):
        self.scheduler = BernoulliScheduler.from_config(load_preset_config(preset, "scheduler"))
        self.shape, self.steps, self.device = shape, steps, device
        self.scheduler.set_timesteps(steps, device=device)
        self.bits = self.scheduler.initial_sample(shape, device=device)

    def _step(self, forward, bits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = bits.shape[0]
        logits = forward(torch.cat([bits, bits]), t.expand(2 * batch)).float()
        cond, uncond = logits.chunk(2)
        guided = uncond + GUIDANCE_SCALE * (cond - uncond)
        return self.scheduler.step(guided, t, bits, temperature=TEMPERATURE).prev_sample

    def one_step(self, forward) -> torch.Tensor:
        """One step from the middle of the schedule (a step costs the same at every time)."""
        self.scheduler.set_timesteps(self.steps, device=self.device)
        index = self.steps // 2
        self.scheduler.set_begin_index(index)
        return self._step(forward, self.bits, self.scheduler.timesteps[index])

    def sample(self, forward) -> torch.Tensor:
        """The whole loop from pure noise."""
        self.scheduler.set_timesteps(self.steps, device=self.device)
        bits = self.scheduler.initial_sample(self.shape, device=self.device)
        for t in self.scheduler.timesteps:
            bits = self._step(forward, bits, t)
        return bits


def build_dit(preset: str, device, dtype, meta: bool = False) -> BinaryDiT:
    """Our diffusion transformer with random weights, eval mode (`meta=True`: on the meta device, for counting)."""
    config = load_preset_config(preset, "transformer")
    if meta:
        with torch.device("meta"):
            return BinaryDiT.from_config(config).eval()
    return BinaryDiT.from_config(config).to(device, dtype).eval()


def dit_inputs(model: BinaryDiT, args, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.config
    return cfg_text_features(
        cfg.text_num_layers or cfg.num_layers, args.batch_size, args.text_len, cfg.text_embed_dim, device, dtype
    )


def _per_image(args, step: dict, prepare_s: float = 0.0) -> tuple[float, str]:
    return prepare_s + args.steps * step["seconds"], f"{args.steps} x the measured step" + (
        " + the text K/V projection" if prepare_s else ""
    )


# ----------------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def run_diffusion(args: argparse.Namespace) -> dict:
    device, dtype = _context(args)
    dit = apply_speed_switches(build_dit(args.preset, device, dtype), args)
    feats, mask = dit_inputs(dit, args, device, dtype)
    sampler = GuidedSampler(
        args.preset, (args.batch_size, dit.config.num_tokens, dit.config.in_channels), args.steps, device
    )
    text_kv = dit.prepare_text_kv(feats, mask)
    cached = lambda z, t: dit(z, t, text_kv=text_kv).sample  # noqa: E731
    reprojected = lambda z, t: dit(z, t, feats, mask).sample  # noqa: E731
    note = f"batch {args.batch_size} (+{args.batch_size} unconditional), {args.text_len} text tokens, {args.dtype}"

    out = {"diffusion.params": record(param_count(dit), "params", "BinaryDiT parameters")}
    prepare = _timing(args, lambda: dit.prepare_text_kv(feats, mask), device)
    out["diffusion.prepare_text_kv_s"] = time_record("text K/V projection (once per image)", prepare, note)
    step = _timing(args, lambda: sampler.one_step(cached), device)
    out["diffusion.step_s"] = time_record("denoising step, text K/V cached (ours)", step, note)
    step_reprojected = _timing(args, lambda: sampler.one_step(reprojected), device)
    out["diffusion.step_text_reprojected_s"] = time_record(
        "denoising step, text re-projected every step", step_reprojected, note
    )
    if args.per_step_only:
        seconds, how = _per_image(args, step, prepare["seconds"])
        out["diffusion.image_s"] = record(
            seconds, "s", f"{args.steps} steps per image (no decode)", note, extrapolated=how
        )
    else:
        loop = _timing(args, lambda: _sample_with_projection(dit, sampler, feats, mask), device)
        out["diffusion.image_s"] = time_record(f"{args.steps} steps per image (no decode)", loop, note)
    return tag_records(out, speed_switches(args))


def _sample_with_projection(dit: BinaryDiT, sampler: GuidedSampler, feats, mask) -> torch.Tensor:
    """The pipeline's loop: project the text keys/values once, then every step reuses them."""
    text_kv = dit.prepare_text_kv(feats, mask)
    return sampler.sample(lambda z, t: dit(z, t, text_kv=text_kv).sample)


def _seconds(timing: dict) -> float:
    return timing["seconds"]


@torch.no_grad()
def run_official(args: argparse.Namespace) -> dict:
    from diffusers_bit.conversion import convert_state_dict

    from .official import build_official_diffusion

    device, dtype = _context(args)
    config = load_preset_config(args.preset, "transformer")
    official = build_official_diffusion(config, device, dtype)  # raises OfficialUnavailable -> "not measured"
    feats, mask = cfg_text_features(
        config["num_layers"], args.batch_size, args.text_len, config["text_embed_dim"], device, dtype
    )
    layers = list(feats)
    sampler = GuidedSampler(
        args.preset, (args.batch_size, config["num_tokens"], config["in_channels"]), args.steps, device
    )

    captured = {}

    def theirs(z, t):
        logits = official(hidden_states=z.to(dtype), llm_features=layers, text_mask=mask, timestep=t.to(dtype))
        captured["theirs"] = logits
        return logits

    note = f"batch {args.batch_size} (+{args.batch_size} unconditional), {args.text_len} text tokens, {args.dtype}"
    out = {"official.params": record(param_count(official), "params", "authors' diffusion model parameters")}

    def time_step(forward) -> dict:
        return _timing(args, lambda: sampler.one_step(forward), device)

    their_timings = [time_step(theirs)]

    # our model with their weights, timed right after theirs in this process on the same inputs (`one_step` always
    # starts from the same bits and time): the same-process pair behind the step-time target, and the check that
    # both compute the same logits
    model = BinaryDiT.from_config(config).to(dtype)
    model.load_state_dict(convert_state_dict(official.state_dict(), "transformer"))
    model = model.to(device).eval()
    text_kv = model.prepare_text_kv(feats, mask)

    def ours(z, t):
        logits = model(z, t, text_kv=text_kv).sample
        captured["ours"] = logits
        return logits

    eager_timings = []
    if speed_switches(args) != NOT_SWITCHED:  # ours without the switches too, so that the eager ratio stays visible
        eager_timings.append(time_step(ours))
        their_timings.append(time_step(theirs))
        eager_timings.append(time_step(ours))
        model = apply_speed_switches(model, args)  # after the last weight change (frozen weights are constants)
    # two rounds, theirs then ours, each model's fastest kept: a slow spell of this shared machine hits both
    our_timings = [time_step(ours)]
    their_timings.append(time_step(theirs))
    our_timings.append(time_step(ours))
    step, ours_step = min(their_timings, key=_seconds), min(our_timings, key=_seconds)
    out["official.step_s"] = time_record("denoising step, authors' model (SDPA in place of flash-attn)", step, note)
    seconds, how = _per_image(args, step)
    out["official.image_s"] = record(seconds, "s", f"{args.steps} steps per image (no decode)", note, extrapolated=how)
    if eager_timings:
        eager = min(eager_timings, key=_seconds)
        out["official.ours_eager_step_s"] = time_record(
            "denoising step, ours with the authors' weights, eager (no speed switches)", eager, note
        )
        out["official.ours_eager_step_s"].update(peak_memory_gib=None, memory=None)
        out["official.ours_eager_vs_theirs"] = record(
            eager["seconds"] / step["seconds"], "x", "eager step time / the authors' step", note
        )
    out["official.ours_step_s"] = time_record(
        "denoising step, ours with the authors' weights (text K/V cached)", ours_step, note
    )
    out["official.ours_step_s"].update(peak_memory_gib=None, memory=None)  # both models are resident here
    theirs_logits, ours_logits = captured["theirs"].float(), captured["ours"].float()
    diff = (theirs_logits - ours_logits).abs().max().item()
    scale = theirs_logits.abs().max().item()
    out["official.max_abs_diff_vs_ours"] = record(
        diff,
        "abs",
        "largest flip-logit difference, ours vs the authors' (same weights and inputs)",
        note=f"largest logit {scale:.3g}, {args.dtype}",
    )
    our_keys = ("official.ours_step_s", "official.max_abs_diff_vs_ours")  # the switches act on our model only
    tag_records({k: v for k, v in out.items() if k not in our_keys}, NOT_SWITCHED)
    tag_records({k: out[k] for k in our_keys}, speed_switches(args))
    return out


@torch.no_grad()
def run_pixart(args: argparse.Namespace) -> dict:
    from diffusers import PixArtTransformer2DModel

    device, dtype = _context(args)
    config, image_size, text_len = PIXART_CONFIGS[args.preset]
    full_layers = config["num_layers"]
    layers = min(args.pixart_layers or full_layers, full_layers)
    model = PixArtTransformer2DModel(**{**config, "num_layers": layers}).to(device, dtype).eval()
    rows = 2 * args.batch_size
    side = config["sample_size"]
    latents = torch.randn(rows, config["in_channels"], side, side, device=device, dtype=dtype)
    captions, caption_mask = cfg_text_features(1, args.batch_size, text_len, config["caption_channels"], device, dtype)
    conditions = {
        "resolution": torch.tensor([[image_size, image_size]] * rows, device=device, dtype=dtype),
        "aspect_ratio": torch.ones(rows, 1, device=device, dtype=dtype),
    }
    timestep = torch.full((rows,), 500, device=device, dtype=torch.long)

    def step():
        out = model(
            latents,
            encoder_hidden_states=captions[0],
            encoder_attention_mask=caption_mask,
            timestep=timestep,
            added_cond_kwargs=conditions,
            return_dict=False,
        )[0]
        cond, uncond = out[:, : config["in_channels"]].float().chunk(2)  # the other channels: learned variance
        return uncond + 4.5 * (cond - uncond)

    tokens = (side // config["patch_size"]) ** 2
    block_params = param_count(model.transformer_blocks[0])
    note = (
        f"{tokens} latent tokens, {text_len} text tokens, batch {args.batch_size} (+{args.batch_size} "
        f"unconditional), {args.dtype}; scheduler step and VAE decode not included"
    )
    out = {
        "pixart.params": record(
            param_count(model) + (full_layers - layers) * block_params,
            "params",
            "PixArt-alpha transformer parameters (random weights)",
        )
    }
    captured = {}

    def grab(module, block_args, block_kwargs):
        captured.setdefault("inputs", (block_args, block_kwargs))

    handle = model.transformer_blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    timing = _timing(args, step, device)
    handle.remove()
    if layers == full_layers:
        out["pixart.step_s"] = time_record("PixArt-alpha denoising step (transformer)", timing, note)
        estimate, how = timing["seconds"], f"{args.steps} x the measured step"
    else:
        block_args, block_kwargs = captured["inputs"]  # the first block's inputs in the timed step
        block = model.transformer_blocks[0]
        block_timing = _timing(args, lambda: block(*block_args, **block_kwargs), device)
        out["pixart.block_s"] = time_record("one PixArt block", block_timing, note)
        blocks_how = (
            f"{layers} of {full_layers} blocks timed in the model, the other {full_layers - layers} as "
            "copies of one timed block"
        )
        estimate = timing["seconds"] + (full_layers - layers) * block_timing["seconds"]
        out["pixart.step_s"] = record(
            estimate,
            "s",
            "PixArt-alpha denoising step (transformer)",
            note,
            extrapolated=blocks_how,
            peak_memory_gib=timing["peak_memory_gib"],
            memory=f"{timing['memory']} of the {layers}-block model",
        )
        how = f"{args.steps} x the step ({blocks_how})"
    out["pixart.image_s"] = record(
        args.steps * estimate,
        "s",
        f"{args.steps} steps per {image_size} px image (transformer only)",
        note,
        extrapolated=how,
    )
    return tag_records(out, NOT_SWITCHED)


@torch.no_grad()
def run_ar(args: argparse.Namespace) -> dict:
    device, dtype = _context(args)
    ar = BinaryARTransformer.from_config(load_preset_config(args.preset, "ar_transformer")).to(device, dtype).eval()
    ar = apply_speed_switches(ar, args)
    cfg = ar.config
    b = args.batch_size
    feats, mask = cfg_text_features(
        cfg.text_num_layers or cfg.num_layers, b, args.text_len, cfg.text_embed_dim, device, dtype
    )
    text_kv = ar.prepare_text_kv(feats, mask)
    n_tokens, channels = cfg.num_tokens, cfg.in_channels
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def sample_token(logits: torch.Tensor) -> torch.Tensor:
        cond, uncond = logits.float().chunk(2)
        probs = torch.sigmoid((uncond + AR_GUIDANCE_SCALE * (cond - uncond)) / TEMPERATURE)
        return (torch.rand(probs.shape, generator=generator, device=device) < probs).float()[:, None]

    def generate(use_cache: bool, tokens: int) -> torch.Tensor:
        """The AR pipeline's loop: with the cache each forward sees the new token only, without it the whole prefix."""
        cache = ar.allocate_kv_cache(2 * b) if use_cache else None
        bits = torch.zeros(b, 0, channels, device=device)
        logits = ar(None, text_kv=text_kv, kv_cache=cache, batch_size=2 * b).sample[:, -1]
        for i in range(tokens):
            new = sample_token(logits)
            bits = torch.cat([bits, new], dim=1)
            if i + 1 < tokens:
                x = torch.cat([new, new]) if use_cache else torch.cat([bits, bits])
                logits = ar(x, text_kv=text_kv, kv_cache=cache).sample[:, -1]
        return bits

    note = f"batch {b} (+{b} unconditional), {n_tokens} tokens, {args.text_len} text tokens, {args.dtype}"
    out = {"ar.params": record(param_count(ar), "params", "BinaryARTransformer parameters")}
    cached = _timing(args, lambda: generate(True, n_tokens), device)
    out["ar.image_kv_cache_s"] = time_record("seconds per image, KV cache", cached, note)
    tokens_per_s = b * n_tokens / cached["seconds"]
    out["ar.tokens_per_s_kv_cache"] = record(tokens_per_s, "tokens/s", "tokens per second, KV cache", note)
    unswitched, fractions = streaming_bound(ar, args, device, dtype, tokens_per_s, note)
    out.update(fractions)

    full_tokens = min(args.ar_full_tokens or n_tokens, n_tokens)
    partial = _timing(args, lambda: generate(False, full_tokens), device, repeats=1)
    if full_tokens == n_tokens:
        out["ar.image_full_forward_s"] = time_record("seconds per image, full forward every token", partial, note)
    else:
        # forwards of the no-cache loop see 0..N-1 earlier tokens; those after the first `full_tokens` are interpolated
        lengths = np.unique(np.linspace(full_tokens, n_tokens - 1, max(2, args.ar_full_samples)).round().astype(int))
        times = []
        for length in lengths:
            prefix = torch.randint(0, 2, (2 * b, int(length), channels), device=device).float()
            times.append(
                _timing(
                    args, lambda: sample_token(ar(prefix, text_kv=text_kv).sample[:, -1]), device, repeats=1, warmup=0
                )["seconds"]
            )
        rest = float(np.interp(np.arange(full_tokens, n_tokens), lengths, times).sum())
        how = (
            f"{full_tokens} of {n_tokens} tokens generated; the other {n_tokens - full_tokens} forwards "
            f"interpolated from {len(lengths)} timed prefix lengths {lengths.tolist()}"
        )
        out["ar.image_full_forward_s"] = record(
            partial["seconds"] + rest,
            "s",
            "seconds per image, full forward every token",
            note,
            extrapolated=how,
            peak_memory_gib=partial["peak_memory_gib"],
            memory=partial["memory"],
        )
        same = _timing(args, lambda: generate(True, full_tokens), device)
        out["ar.kv_cache_speedup_same_tokens"] = record(
            partial["seconds"] / same["seconds"],
            "x",
            f"KV cache speed-up over the first {full_tokens} tokens (both measured)",
            note,
        )
    full = out["ar.image_full_forward_s"]
    out["ar.tokens_per_s_full_forward"] = record(
        b * n_tokens / full["value"],
        "tokens/s",
        "tokens per second, full forward every token",
        note,
        extrapolated=full["extrapolated"],
    )
    return {**tag_records(out, speed_switches(args)), **tag_records(unswitched, NOT_SWITCHED)}


def decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one KV-cache decoding forward reads: every parameter except the text projections
    (`context_embedder`, used once per prompt by `prepare_text_kv`) and the position tables (one row per token)."""
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if "context_embedder" not in name and "pos_embed" not in name
    )


def memory_bandwidth(device: torch.device, size_mib: int = 1024, repeats: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of `repeats` sums over a `size_mib` float32 tensor (larger than the
    caches), the streaming speed a memory-bound kernel can at best reach."""
    x = torch.ones(size_mib * 2**20 // 4, device=device)
    seconds = measure(lambda: x.sum(), device, repeats=repeats, warmup=1)["seconds"]
    return x.numel() * 4 / seconds


def matvec_bandwidth(model: torch.nn.Module, rows: int, device: torch.device, repeats: int = 3) -> float:
    """Bytes/s of the matrix-vector products of decoding: `rows` vectors through the first MLP linear of every
    block (the model's own weights, in its dtype, together larger than the caches), called eagerly (no compiled
    block involved)."""
    layers = [block.ff.net[0].proj for block in model.transformer_blocks]
    x = torch.randn(rows, 1, layers[0].in_features, device=device, dtype=layers[0].weight.dtype)
    seconds = measure(lambda: [layer(x) for layer in layers], device, repeats=repeats, warmup=1)["seconds"]
    return sum(layer.weight.numel() * layer.weight.element_size() for layer in layers) / seconds


def streaming_bound(model, args, device, dtype, tokens_per_s: float, note: str) -> tuple[dict, dict]:
    r"""KV-cache decoding against its memory-streaming bound: every forward reads the weights once
    ([`decode_weight_bytes`]) and yields one token per image, so at most `batch x bandwidth / weight bytes`
    tokens/s; with the measured matrix-vector speed instead of the streaming speed, the bound the kernels allow.

    Returns:
        `(bounds, fractions)`: the weight bytes, bandwidths and streaming bound (no speed switch applies to them:
        plain reads and the model's linears called eagerly), and the measured `tokens_per_s` as fractions of both
        bounds.
    """
    weight_bytes = decode_weight_bytes(model)
    bandwidth = memory_bandwidth(device)
    matvec = matvec_bandwidth(model, 2 * args.batch_size, device)
    bound = args.batch_size * bandwidth / weight_bytes
    kernel_bound = args.batch_size * matvec / weight_bytes
    bounds = {
        "ar.decode_weight_bytes": record(weight_bytes, "B", "weights read per decoding forward", note),
        "ar.memory_bandwidth": record(bandwidth, "B/s", "memory read bandwidth (sum of a 1 GiB tensor)"),
        "ar.matvec_bandwidth": record(
            matvec, "B/s", f"{dtype_name(dtype)} matrix-vector bandwidth (MLP weights of every block)", note
        ),
        "ar.streaming_bound_tokens_per_s": record(
            bound, "tokens/s", "streaming bound: batch x bandwidth / weight bytes", note
        ),
    }
    fractions = {
        "ar.fraction_of_streaming_bound": record(
            tokens_per_s / bound, "ratio", "KV-cache tokens/s / streaming bound", note
        ),
        "ar.fraction_of_matvec_bound": record(
            tokens_per_s / kernel_bound,
            "ratio",
            "KV-cache tokens/s / the bound at the measured matrix-vector bandwidth",
            f"{kernel_bound:.3g} tokens/s at that bandwidth; {note}",
        ),
    }
    return bounds, fractions


@torch.no_grad()
def run_tokenizer(args: argparse.Namespace) -> dict:
    device, dtype = _context(args)
    tok = BinaryLatentTokenizer.from_config(load_preset_config(args.preset, "image_tokenizer")).to(device, dtype).eval()
    tok = apply_speed_switches(tok, args)
    b = args.batch_size
    bits = torch.randint(0, 2, (b, tok.config.num_latent_tokens, tok.config.bits_per_token), device=device)
    sizes = tok.supported_sizes or [tok.default_size]
    note = f"batch {b}, {args.dtype}"
    out = {"tokenizer.params": record(param_count(tok), "params", "BinaryLatentTokenizer parameters")}
    images = torch.rand(b, 3, min(sizes), min(sizes), device=device, dtype=dtype) * 2 - 1
    timing = _timing(args, lambda: tok.encode(images), device)
    out[f"tokenizer.encode_{min(sizes)}_s"] = time_record(f"encode {min(sizes)} px", timing, note)
    for size in sizes:
        timing = _timing(args, lambda: tok.decode(bits, size, size), device)
        out[f"tokenizer.decode_{size}_s"] = time_record(f"decode {size} px", timing, note)
    return tag_records(out, speed_switches(args))


# ----------------------------------------------------------------------------------------------------------------------
# Efficiency
# ----------------------------------------------------------------------------------------------------------------------
def matmul_peak(device: torch.device, dtype: torch.dtype, max_size: int, repeats: int, target_s: float = 0.25) -> dict:
    r"""The dtype's matmul throughput on square matrices: for each operand layout (`a @ b`, and `a @ b.T`, the layout
    of `nn.Linear`, which some CPU kernels run much faster), the side doubles from 256 until one product takes
    `target_s` or the side reaches `max_size`; then the best of `repeats` products. The peak is the best layout.

    Returns:
        `{"peak_flops", "layouts": {layout: {"size", "flops"}}}`.
    """

    def product(size: int, transposed: bool):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        b = b.t() if transposed else b
        return lambda: torch.matmul(a, b)

    layouts = {}
    for layout in ("a @ b", "a @ b.T"):
        size = 256
        while True:
            fn = product(size, layout == "a @ b.T")
            fn()  # warm-up at this size
            first = measure(fn, device, repeats=1, warmup=0)["seconds"]
            if first >= target_s or size >= max_size:
                break
            size *= 2
        best = min(first, measure(fn, device, repeats=repeats, warmup=0, budget_s=4 * target_s)["seconds"])
        layouts[layout] = {"size": size, "flops": 2 * size**3 / best}
    return {"peak_flops": max(v["flops"] for v in layouts.values()), "layouts": layouts}


def count_step_flops(preset: str, batch_size: int, text_len: int) -> int:
    r"""FLOPs of one guided BinaryDiT forward (2B rows, text K/V cached) counted by `FlopCounterMode` on the meta
    device: no computation, and attention is counted through SDPA's reference decomposition (CPU's fused SDPA kernel
    is not registered with the counter)."""
    model = build_dit(preset, None, None, meta=True)
    cfg = model.config
    rows = 2 * batch_size
    feats = torch.empty(cfg.text_num_layers or cfg.num_layers, rows, text_len, cfg.text_embed_dim, device="meta")
    bits = torch.empty(rows, cfg.num_tokens, cfg.in_channels, device="meta")
    t = torch.empty(rows, device="meta")
    with torch.no_grad():
        text_kv = model.prepare_text_kv(feats)  # no mask: a padding mask changes no FLOP count
        with FlopCounterMode(display=False) as counter:
            model(bits, t, text_kv=text_kv)
    return int(counter.get_total_flops())


def analytic_step_flops(config: dict, batch_size: int, text_len: int) -> int:
    r"""FLOPs of one guided BinaryDiT forward with cached text K/V, from the architecture (multiply-adds x 2):
    input and output projections, time embedding and the AdaLN linears, per block q/k/v/out, attention over
    `text_len + N` keys and the MLP."""
    rows, n, c = 2 * batch_size, config["num_tokens"], config["in_channels"]
    d = config["num_attention_heads"] * config["attention_head_dim"]
    hidden = int(d * config.get("mlp_ratio", 4.0))
    per_block = 2 * rows * (6 * d * d + n * (4 * d * d + 2 * d * hidden + 2 * (text_len + n) * d))
    outside = 2 * rows * (n * c * d + (d + d * d) + 2 * d * d + n * d * c)
    return config["num_layers"] * per_block + outside


def efficiency_dtypes(device: torch.device, dtype: torch.dtype) -> list[torch.dtype]:
    """The dtypes the efficiency section compares: float32 and bfloat16 (the two a CPU host chooses between; GPUs
    add float16), plus the run's `--dtype`."""
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else []) + [dtype]
    return list(dict.fromkeys(dtypes))


def _cached_step_timing(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict:
    """Timing of one guided denoising step of a fresh random BinaryDiT in `dtype` (text K/V cached, speed switches
    applied)."""
    dit = apply_speed_switches(build_dit(args.preset, device, dtype), args)
    feats, mask = dit_inputs(dit, args, device, dtype)
    sampler = GuidedSampler(
        args.preset, (args.batch_size, dit.config.num_tokens, dit.config.in_channels), args.steps, device
    )
    text_kv = dit.prepare_text_kv(feats, mask)
    timing = _timing(args, lambda: sampler.one_step(lambda z, t: dit(z, t, text_kv=text_kv).sample), device)
    if getattr(args, "compile", False):
        torch._dynamo.reset()  # compiled code with frozen weights holds its own copy of them: free it for the next dtype
    return timing


@torch.no_grad()
def run_efficiency(args: argparse.Namespace) -> dict:
    r"""The paper-size diffusion step in every dtype of [`efficiency_dtypes`], each dtype's square-matmul peak, and
    the fastest step's achieved FLOP/s over the best peak of any dtype (a slow dtype cannot flatter its own peak)."""
    device, run_dtype = _context(args)
    counted = count_step_flops(args.preset, args.batch_size, args.text_len)
    analytic = analytic_step_flops(load_preset_config(args.preset, "transformer"), args.batch_size, args.text_len)
    shape = f"batch {args.batch_size} (+{args.batch_size} unconditional), {args.text_len} text tokens"
    out = {
        "efficiency.step_flops": record(counted, "FLOP", "FLOPs of one diffusion step (FlopCounterMode)", shape),
        "efficiency.step_flops_analytic": record(analytic, "FLOP", "FLOPs of one diffusion step (analytic)", shape),
    }
    unswitched = list(out)
    peaks, steps = {}, {}
    for dtype in efficiency_dtypes(device, run_dtype):
        name = dtype_name(dtype)
        peak = matmul_peak(
            device, dtype, args.peak_max_size or (8192 if device.type == "cuda" else 4096), args.peak_repeats
        )
        layouts = ", ".join(f"{k}: {v['flops'] / 1e9:.1f} GFLOP/s at {v['size']}" for k, v in peak["layouts"].items())
        out[f"efficiency.matmul_peak_flops.{name}"] = record(
            peak["peak_flops"], "FLOP/s", f"{name} matmul peak (square, best layout)", layouts, layouts=peak["layouts"]
        )
        unswitched.append(f"efficiency.matmul_peak_flops.{name}")
        step = _cached_step_timing(args, device, dtype)
        out[f"efficiency.step_s.{name}"] = time_record(f"denoising step, text K/V cached, {name}", step, shape)
        out[f"efficiency.achieved_flops.{name}"] = record(
            counted / step["seconds"], "FLOP/s", f"achieved FLOP/s of the diffusion step, {name}", shape
        )
        peaks[name], steps[name] = peak["peak_flops"], step["seconds"]
    best_peak = max(peaks, key=peaks.get)
    fastest = min(steps, key=steps.get)
    achieved = counted / steps[fastest]
    out["efficiency.fraction_of_peak"] = record(
        achieved / peaks[best_peak],
        "ratio",
        "fastest diffusion step's FLOP/s / best matmul peak of any dtype",
        f"step in {fastest} ({achieved / 1e9:.0f} GFLOP/s), peak in {best_peak} ({peaks[best_peak] / 1e9:.0f} "
        f"GFLOP/s); {shape}",
        fastest_dtype=fastest,
        peak_dtype=best_peak,
    )
    auto = dtype_name(preferred_dtype(device))
    out["efficiency.fastest_dtype_matches_auto"] = record(
        float(fastest == auto),
        "yes/no",
        "the fastest step's dtype is the one --dtype auto picks",
        f"fastest: {fastest}; auto: {auto}" + (f" ({describe_cpu()})" if device.type == "cpu" else ""),
    )
    unswitched.append("efficiency.fastest_dtype_matches_auto")
    tag_records({k: out[k] for k in unswitched}, NOT_SWITCHED)  # counts, plain matmuls, the dtype check
    tag_records({k: v for k, v in out.items() if k not in unswitched}, speed_switches(args))
    return out


SECTIONS = {
    "efficiency": run_efficiency,
    "diffusion": run_diffusion,
    "official": run_official,
    "pixart": run_pixart,
    "ar": run_ar,
    "tokenizer": run_tokenizer,
}
