# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Convert the authors' Instella-T2I checkpoints (`bae/model.safetensors`, `diffusion.pt`, `ar.pt`) into diffusers
component folders (`config.json` + `diffusion_pytorch_model.safetensors`).

The `.pt` files are DeepSpeed-style dicts whose model state dict sits under `module`. They are read ONLY with
`torch.load(..., weights_only=True)`: a file that needs unrestricted unpickling (which can run arbitrary code) is
refused. Every key of the checkpoint must map onto the target model and every parameter of the model must be
covered; otherwise a `ValueError` lists the missing / unexpected keys and shape mismatches, before anything is
written.
"""

import os
import pickle
import re
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file

from .models import BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer
from .presets import load_preset_config
from .utils.checks import check_safetensors_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

# (official key pattern, our key template), applied in order, first match wins
_BLOCK_RULES = [
    (r"attn\.q_proj\.", "attn.to_q."),
    (r"attn\.k_proj\.", "attn.to_k."),
    (r"attn\.v_proj\.", "attn.to_v."),
    (r"attn\.o_proj\.", "attn.to_out."),
    (r"input_layernorm\.", "norm1."),
    (r"post_attention_layernorm\.", "norm2."),
    (r"proj_cond\.", "context_embedder."),
    (r"pos_emb$", "pos_embed"),
]
KEY_RULES = {
    "image_tokenizer": [
        (r"^encoder\.patch_embedder\.", "encoder.patch_embed."),
        (r"^(encoder|decoder)\.transformer_blocks\.(\d+)\.mlp\.", r"\1.blocks.\2.ff."),
        (r"^(encoder|decoder)\.transformer_blocks\.", r"\1.blocks."),
        (r"^encoder\.down_layers\.", "encoder.downsamplers."),
        (r"^decoder\.up_layers\.", "decoder.upsamplers."),
        (r"^decoder\.input_layer\.0\.", "decoder.norm_in."),
        (r"^decoder\.input_layer\.1\.", "decoder.proj_in."),
        (r"^decoder\.mask_tokens$", "decoder.mask_token"),
        (r"^to_pixel\.", "pixel_head.proj."),
        (r"^quantizer\.proj\.0\.", "quantizer.proj."),
    ],
    "transformer": [],
    "ar_transformer": [(r"^(transformer_blocks\.\d+)\.mlp\.", r"\1.ff.")],
}
# official parameters with no counterpart, dropped on purpose
IGNORED_KEYS = {
    "image_tokenizer": [r"^decoder\.repa_proj\."],  # training-only REPA alignment head
    "transformer": [],
    "ar_transformer": [r"^time_embed\."],  # built but never called by the authors' AR forward
}
MODEL_CLASSES = {
    "image_tokenizer": BinaryLatentTokenizer,
    "transformer": BinaryDiT,
    "ar_transformer": BinaryARTransformer,
}


def load_official_state_dict(path: Union[str, os.PathLike]) -> dict:
    r"""Read an official checkpoint: `.safetensors`, or a `.pt` file loaded with `weights_only=True` whose state
    dict is the `module` entry (DeepSpeed layout) or the whole file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        check_safetensors_file(path)
        return load_file(str(path))
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a forbidden class: the pickle stream itself is broken
            raise ValueError(f"{str(path)!r} is not a readable torch checkpoint (corrupt or not a .pt file)") from None
        raise ValueError(
            f"refusing to load {str(path)!r}: it needs unrestricted unpickling, which can execute arbitrary code. "
            "Only checkpoints readable with torch.load(weights_only=True) are converted; re-save the bare state dict "
            f"(torch.save(model.state_dict(), ...)) in an environment you trust. Details: {err}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable torch checkpoint: {err}") from None
    state_dict = obj.get("module", obj) if isinstance(obj, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{str(path)!r} holds no state dict (expected a dict of tensors, or one under 'module')")
    return dict(state_dict)


def convert_state_dict(state_dict: dict, component: str) -> dict:
    """Rename the official keys of `component` (`image_tokenizer`, `transformer`, `ar_transformer`) to ours, dropping
    the parameters listed in `IGNORED_KEYS`."""
    out = {}
    for key, value in state_dict.items():
        if any(re.search(p, key) for p in IGNORED_KEYS[component]):
            continue
        new = key
        for pattern, repl in KEY_RULES[component]:
            if re.search(pattern, new):
                new = re.sub(pattern, repl, new)
                break
        for pattern, repl in _BLOCK_RULES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def _count(state_dict: dict, prefix: str) -> int:
    indices = {int(m.group(1)) for k in state_dict for m in [re.match(re.escape(prefix) + r"(\d+)\.", k)] if m}
    return max(indices) + 1 if indices else 0


def _require(state_dict: dict, key: str, component: str) -> torch.Tensor:
    if key not in state_dict:
        raise ValueError(f"the {component} checkpoint has no {key!r}; is it an Instella-T2I {component} checkpoint?")
    return state_dict[key]


def infer_config(state_dict: dict, component: str, base_config: dict) -> dict:
    """`base_config` with every size that the official checkpoint determines (depths, widths, heads, token and bit
    counts) read from the tensor shapes. Settings no tensor reveals (resampling block indices, rotary axes and
    reference size, supported sizes, `text_num_layers`) come from `base_config`."""
    sd, cfg = state_dict, dict(base_config)
    if component == "image_tokenizer":
        enc_dim, in_channels, patch, _ = _require(sd, "encoder.patch_embedder.weight", component).shape
        enc_head = sd["encoder.transformer_blocks.0.attn.norm_q.weight"].shape[0]
        dec_dim = _require(sd, "decoder.mask_tokens", component).shape[-1]
        dec_head = sd["decoder.transformer_blocks.0.attn.norm_q.weight"].shape[0]
        cfg.update(
            in_channels=in_channels,
            patch_size=patch,
            num_latent_tokens=sd["encoder.latent_tokens"].shape[1],
            bits_per_token=sd["quantizer.proj.0.weight"].shape[0],
            encoder_layers=_count(sd, "encoder.transformer_blocks."),
            encoder_head_dim=enc_head,
            encoder_num_heads=enc_dim // enc_head,
            decoder_layers=_count(sd, "decoder.transformer_blocks."),
            decoder_head_dim=dec_head,
            decoder_num_heads=dec_dim // dec_head,
            mlp_ratio=sd["encoder.transformer_blocks.0.mlp.gate_proj.weight"].shape[0] / enc_dim,
        )
        for name, prefix in (
            ("encoder_downsample_blocks", "encoder.down_layers."),
            ("decoder_upsample_blocks", "decoder.up_layers."),
        ):
            if len(cfg[name]) != _count(sd, prefix):
                raise ValueError(
                    f"the checkpoint has {_count(sd, prefix)} {prefix[:-1]} but the config's `{name}` lists "
                    f"{list(cfg[name])}; pass the right `{name}` in the config overrides"
                )
    else:
        dim = _require(sd, "x_embedder.weight", component).shape[0]
        head = _require(sd, "transformer_blocks.0.attn.norm_q.weight", component).shape[0]
        layers = _count(sd, "transformer_blocks.")
        ff_key = (
            "transformer_blocks.0.ff.net.0.proj.weight"
            if component == "transformer"
            else "transformer_blocks.0.mlp.net.0.proj.weight"
        )
        num_tokens = sd["transformer_blocks.0.pos_emb"].shape[1] - (component == "ar_transformer")
        cfg.update(
            in_channels=sd["x_embedder.weight"].shape[1],
            num_layers=layers,
            attention_head_dim=head,
            num_attention_heads=dim // head,
            num_tokens=num_tokens,
            text_embed_dim=sd["transformer_blocks.0.proj_cond.weight"].shape[1],
            mlp_ratio=_require(sd, ff_key, component).shape[0] / dim,
        )
    return cfg


def check_state_dict(model: torch.nn.Module, state_dict: dict, component: str) -> None:
    """Raise a `ValueError` listing missing / unexpected keys and shape mismatches between `state_dict` (our key
    layout) and `model`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or mismatched:
        show = lambda keys: ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")  # noqa
        parts = [
            f"{name}: {show(keys)}"
            for name, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        raise ValueError(f"the {component} checkpoint does not match {type(model).__name__}; " + "; ".join(parts))


def convert_component(
    checkpoint: Union[str, os.PathLike, dict],
    component: str,
    output_dir: Optional[Union[str, os.PathLike]] = None,
    config_overrides: Optional[dict] = None,
    base_preset: str = "instella-t2i",
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
):
    r"""Convert one official checkpoint into our model.

    Args:
        checkpoint: Path of the official file (or an already loaded official state dict).
        component (`str`): `"image_tokenizer"` (`bae/model.safetensors`), `"transformer"` (`diffusion.pt`) or
            `"ar_transformer"` (`ar.pt`).
        output_dir (*optional*): When given, the model is written there with `save_pretrained` (refused if the folder
            already holds files, unless `overwrite`).
        config_overrides (`dict`, *optional*): Config entries that no tensor shape reveals (e.g.
            `encoder_downsample_blocks`, `axes_dims_rope`, `rope_reference_size`, `sample_sizes`).
        base_preset (`str`): Preset whose config supplies the remaining settings.
        dtype (`torch.dtype`, *optional*): Cast the weights (default: keep the checkpoint's dtype).

    Returns:
        The loaded model, in eval mode.
    """
    if component not in MODEL_CLASSES:
        raise ValueError(f"`component` must be one of {list(MODEL_CLASSES)}, got {component!r}")
    if output_dir is not None and not overwrite and Path(output_dir).is_dir() and any(Path(output_dir).iterdir()):
        raise ValueError(f"`output_dir` {str(output_dir)!r} is not empty; pass overwrite=True to replace its files")
    official = checkpoint if isinstance(checkpoint, dict) else load_official_state_dict(checkpoint)
    base = {k: v for k, v in load_preset_config(base_preset, component).items() if not k.startswith("_")}
    overrides = dict(config_overrides or {})
    cls = MODEL_CLASSES[component]
    valid = sorted(cls._get_init_keys(cls) - {"self", "kwargs"})
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown {component} config overrides {unknown}; valid keys: {valid}")
    if component != "image_tokenizer":
        # the authors' generators read one LLM layer per block
        base["text_num_layers"] = _count(official, "transformer_blocks.")
    config = infer_config(official, component, {**base, **overrides})
    for key, value in overrides.items():
        if config.get(key) != value:
            raise ValueError(
                f"config override {key}={value!r} contradicts the checkpoint, which implies {config[key]!r}"
            )
    state_dict = convert_state_dict(official, component)
    with torch.device("meta"):
        model = cls.from_config(config)
    check_state_dict(model, state_dict, component)
    if dtype is not None:
        state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


OFFICIAL_FILES = {"image_tokenizer": "bae/model.safetensors", "transformer": "diffusion.pt", "ar_transformer": "ar.pt"}


def convert_checkpoint_dir(
    checkpoint_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    config_overrides: Optional[dict] = None,
    base_preset: str = "instella-t2i",
    dtype: Optional[torch.dtype] = None,
    overwrite: bool = False,
) -> dict:
    r"""Convert every official file found in `checkpoint_dir` (a download of `amd/Instella-T2I`) into component
    folders `output_dir/{image_tokenizer,transformer,ar_transformer}`, plus `output_dir/scheduler`.

    Args:
        config_overrides (`dict`, *optional*): `{component: {config overrides}}`.

    Returns:
        `{component: folder}` of what was written.
    """
    from .schedulers import BernoulliScheduler

    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    found = {c: checkpoint_dir / f for c, f in OFFICIAL_FILES.items() if (checkpoint_dir / f).is_file()}
    if not found:
        raise ValueError(f"`checkpoint_dir` {str(checkpoint_dir)!r} holds none of {list(OFFICIAL_FILES.values())}")
    targets = [output_dir / c for c in [*found, "scheduler"]]
    busy = [str(t) for t in targets if t.is_dir() and any(t.iterdir())]
    if busy and not overwrite:
        raise ValueError(f"refusing to overwrite existing folders {busy}; pass overwrite=True")
    # convert (and validate) everything in memory first so a bad file leaves nothing half-written
    models = {
        c: convert_component(p, c, None, (config_overrides or {}).get(c), base_preset, dtype) for c, p in found.items()
    }
    written = {}
    for component, model in models.items():
        model.save_pretrained(output_dir / component)
        written[component] = str(output_dir / component)
    BernoulliScheduler.from_config(load_preset_config(base_preset, "scheduler")).save_pretrained(
        output_dir / "scheduler"
    )
    written["scheduler"] = str(output_dir / "scheduler")
    return written


PIPELINE_FOLDERS = {"transformer": "instella-t2i-diffusion", "ar_transformer": "instella-t2i-ar"}


def convert_to_pipelines(
    checkpoint_dir: Union[str, os.PathLike],
    output_dir: Union[str, os.PathLike],
    text_encoder: Union[str, os.PathLike] = "amd/AMD-OLMo-1B",
    config_overrides: Optional[dict] = None,
    base_preset: str = "instella-t2i",
    dtype: Optional[torch.dtype] = None,
    max_sequence_length: int = 128,
    overwrite: bool = False,
) -> dict:
    r"""Convert the authors' release into complete pipeline folders, ready for `from_pretrained`:
    `output_dir/instella-t2i-diffusion` ([`InstellaT2IPipeline`], if `diffusion.pt` is present) and
    `output_dir/instella-t2i-ar` ([`InstellaARPipeline`], if `ar.pt` is present), each with the image tokenizer and
    the text encoder + tokenizer loaded from `text_encoder` (a Hub id such as `amd/AMD-OLMo-1B`, or a local folder).

    The text tokenizer is saved with `model_max_length=max_sequence_length` and left padding, as the authors use it.

    Returns:
        `{pipeline class name: folder}`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .pipelines import InstellaARPipeline, InstellaT2IPipeline
    from .schedulers import BernoulliScheduler

    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if not (checkpoint_dir / OFFICIAL_FILES["image_tokenizer"]).is_file():
        raise ValueError(f"`checkpoint_dir` {str(checkpoint_dir)!r} has no {OFFICIAL_FILES['image_tokenizer']}")
    generators = [c for c in PIPELINE_FOLDERS if (checkpoint_dir / OFFICIAL_FILES[c]).is_file()]
    if not generators:
        raise ValueError(f"`checkpoint_dir` {str(checkpoint_dir)!r} holds neither diffusion.pt nor ar.pt")
    targets = [output_dir / PIPELINE_FOLDERS[c] for c in generators]
    busy = [str(t) for t in targets if t.is_dir() and any(t.iterdir())]
    if busy and not overwrite:
        raise ValueError(f"refusing to overwrite existing folders {busy}; pass overwrite=True")
    overrides = config_overrides or {}
    convert = lambda c: convert_component(  # noqa: E731
        checkpoint_dir / OFFICIAL_FILES[c], c, None, overrides.get(c), base_preset, dtype
    )
    image_tokenizer = convert("image_tokenizer")
    models = {c: convert(c) for c in generators}
    tokenizer = AutoTokenizer.from_pretrained(
        str(text_encoder), model_max_length=max_sequence_length, padding_side="left"
    )
    llm = AutoModelForCausalLM.from_pretrained(str(text_encoder), dtype=dtype or "auto").eval()
    written = {}
    for component, model in models.items():
        if component == "transformer":
            scheduler = BernoulliScheduler.from_config(load_preset_config(base_preset, "scheduler"))
            pipe = InstellaT2IPipeline(tokenizer, llm, image_tokenizer, model, scheduler)
        else:
            pipe = InstellaARPipeline(tokenizer, llm, image_tokenizer, model)
        target = output_dir / PIPELINE_FOLDERS[component]
        pipe.save_pretrained(target)
        written[type(pipe).__name__] = str(target)
    return written
