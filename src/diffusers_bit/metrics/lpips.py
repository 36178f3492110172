# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""LPIPS perceptual distance (Zhang et al. 2018, "The unreasonable effectiveness of deep features as a perceptual
metric") with a VGG16 backbone, written in plain torch: no torchvision, no `lpips` package.

The module is laid out so that the published weights load without conversion:

- `features.{i}.*` is the VGG16 convolution stack with the indices of torchvision's `vgg16().features` (conv layers
  at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28). A torchvision state dict (`vgg16-397923af.pth`, keys
  `features.{i}.weight|bias` and `classifier.*`), a `vgg16().features` state dict (keys `{i}.weight|bias`) and the
  `lpips` package's full-model state dict (keys `net.slice{k}.{i}.weight|bias`) are all accepted.
- `lin{k}.model.1.weight` (`k = 0..4`, shape `(1, C_k, 1, 1)`) are the five learned LPIPS heads, the key layout of the
  official `lpips/weights/v0.1/vgg.pth` (`lins.{k}.model.1.weight`, the `lpips` package's alias, is accepted too).
- `scaling_layer.shift` / `scaling_layer.scale`: the LPIPS input scaling. Inputs are in [-1, 1]; `(x - shift) / scale`
  with `shift = 2 * mean - 1` and `scale = 2 * std` of ImageNet, i.e. exactly ImageNet normalisation of `(x + 1) / 2`.

Distance: features are taken after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, unit-normalised over channels,
their squared difference is weighted per channel by the heads, averaged over space and summed over the five layers.

[`LPIPS.from_pretrained`] loads, from a local folder or file or a Hub repository laid out the same way:

1. a folder written by [`LPIPS.save_pretrained`] (`config.json` + `model.safetensors`), or
2. a VGG16 weights file **and** an LPIPS heads file: any `*.pth` / `*.pt` / `*.bin` / `*.safetensors` whose name
   starts with `vgg16` (e.g. torchvision's `vgg16-397923af.pth`) and the official heads file named `vgg.pth` (or
   `lpips_vgg*.pth|.safetensors`), or
3. a single file with both (the `lpips` package's full state dict).

Tests build random networks with [`LPIPS.from_config`] (narrow channels) so they run offline.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..utils.hub import resolve_snapshot

logger = logging.getLogger(__name__)

VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
VGG16_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS input scaling for images in [-1, 1] (= ImageNet mean/std mapped from [0, 1] to [-1, 1])
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def vgg16_layout(convs_per_stage: Sequence[int] = VGG16_CONVS_PER_STAGE) -> tuple[list[int], list[int]]:
    r"""Indices of torchvision's `vgg16().features`: `(conv_indices, tap_indices)`, the taps being the ReLU after the
    last convolution of each stage (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 = 3, 8, 15, 22, 29)."""
    convs, taps, index = [], [], 0
    for stage, count in enumerate(convs_per_stage):
        if stage:
            index += 1  # the max-pool that opens every stage after the first
        for _ in range(count):
            convs.append(index)
            index += 2  # conv, relu
        taps.append(index - 1)
    return convs, taps


@dataclass
class LPIPSConfig:
    r"""Architecture of the LPIPS network.

    Args:
        channels (`list[int]`, defaults to VGG16's `[64, 128, 256, 512, 512]`): Width of each of the five stages.
            Narrow widths give a small random network for tests; real weights need the default.
        eps (`float`, defaults to 1e-10): Added to the feature norm before unit-normalising (as in LPIPS).
    """

    channels: list = field(default_factory=lambda: list(VGG16_CHANNELS))
    eps: float = 1e-10

    @classmethod
    def from_dict(cls, config: dict) -> "LPIPSConfig":
        unknown = set(config) - {"channels", "eps", "_class_name"}
        if unknown:
            raise ValueError(f"unknown LPIPS config keys {sorted(unknown)}; expected `channels`, `eps`")
        channels = list(config.get("channels", VGG16_CHANNELS))
        if len(channels) != 5 or any(int(c) < 1 for c in channels):
            raise ValueError(f"LPIPS `channels` must be five positive widths, got {channels}")
        return cls(channels=[int(c) for c in channels], eps=float(config.get("eps", 1e-10)))


class _ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.shift.to(images.dtype)) / self.scale.to(images.dtype)


class _LinearHead(nn.Module):
    """`model = [Dropout, Conv1x1(C -> 1, no bias)]`: the key layout `lin{k}.model.1.weight` of LPIPS."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(p=0.0), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    r"""LPIPS-VGG perceptual distance between two batches of images in [-1, 1].

    Always frozen: `requires_grad=False` on every parameter and eval mode (`train()` is a no-op); gradients still
    flow to the *inputs*, which is what a perceptual loss needs.

    Args:
        config ([`LPIPSConfig`] or `dict`, *optional*): Architecture (default: VGG16 widths).
    """

    def __init__(self, config: Optional[Union[LPIPSConfig, dict]] = None):
        super().__init__()
        if config is None:
            config = LPIPSConfig()
        elif isinstance(config, dict):
            config = LPIPSConfig.from_dict(config)
        self.config = config
        conv_indices, self.tap_indices = vgg16_layout()
        layers, in_channels, conv = [], 3, 0
        stage_of_conv = [s for s, n in enumerate(VGG16_CONVS_PER_STAGE) for _ in range(n)]
        for index in range(self.tap_indices[-1] + 1):
            if index in conv_indices:
                out_channels = config.channels[stage_of_conv[conv]]
                layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
                in_channels, conv = out_channels, conv + 1
            elif index - 1 in conv_indices:
                layers.append(nn.ReLU(inplace=False))
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.scaling_layer = _ScalingLayer()
        self.features = nn.Sequential(*layers)
        for k, channels in enumerate(config.channels):
            self.add_module(f"lin{k}", _LinearHead(channels))
            # until real heads are loaded: equal non-negative weights (LPIPS heads are non-negative, so the distance
            # is >= 0 and a random test network is still a proper, if untrained, perceptual distance)
            nn.init.constant_(getattr(self, f"lin{k}").model[1].weight, 1.0 / channels)
        self.requires_grad_(False)
        super().train(False)

    # -- always frozen ----------------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    @property
    def heads(self) -> list[nn.Module]:
        return [getattr(self, f"lin{k}") for k in range(5)]

    # -- forward -------------------------------------------------------------------------------------------------------
    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.scaling_layer(images)
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.tap_indices:
                taps.append(x)
        return taps

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.config.eps)

    def forward(self, input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        r"""
        Args:
            input (`torch.Tensor` of shape `(B, 3, H, W)`): Images in [-1, 1] (e.g. reconstructions; differentiable).
            target (`torch.Tensor` of the same shape): Reference images in [-1, 1]; no gradient is taken w.r.t. them
                (their features are computed under `torch.no_grad`).
            reduction (`str`): `"mean"` (scalar), `"sum"` or `"none"` (`(B,)` per-image distances).

        Returns:
            The LPIPS distance, float32. Exactly 0 for identical inputs.
        """
        if input.shape != target.shape or input.ndim != 4 or input.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (B, 3, H, W) batches of the same shape, got {tuple(input.shape)} and "
                f"{tuple(target.shape)}"
            )
        weight_dtype = self.features[0].weight.dtype
        with torch.no_grad():
            target_taps = self._taps(target.to(weight_dtype))
        input_taps = self._taps(input.to(weight_dtype))
        distance = 0.0
        for head, a, b in zip(self.heads, input_taps, target_taps):
            diff = (self._normalise(a) - self._normalise(b)).pow(2)
            distance = distance + head(diff.to(head.model[1].weight.dtype)).float().mean(dim=(1, 2, 3))
        if reduction == "none":
            return distance
        if reduction == "sum":
            return distance.sum()
        if reduction == "mean":
            return distance.mean()
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}")

    # -- weights ---------------------------------------------------------------------------------------------------------
    def vgg_state_dict_from(self, state_dict: dict) -> dict:
        r"""The `features.{i}.*` entries of this module from a torchvision `vgg16()` state dict, a `vgg16().features`
        state dict or an `lpips` full-model state dict (`net.slice{k}.{i}.*`). Other keys are ignored."""
        out = {}
        for key, value in state_dict.items():
            parts = key.split(".")
            if parts[0] == "features" and len(parts) == 3 and parts[1].isdigit():
                index, name = int(parts[1]), parts[2]
            elif len(parts) == 2 and parts[0].isdigit():
                index, name = int(parts[0]), parts[1]
            elif len(parts) == 4 and parts[0] == "net" and parts[1].startswith("slice") and parts[2].isdigit():
                index, name = int(parts[2]), parts[3]
            else:
                continue
            if index <= self.tap_indices[-1] and name in ("weight", "bias"):
                out[f"features.{index}.{name}"] = value
        return out

    def heads_state_dict_from(self, state_dict: dict) -> dict:
        r"""The `lin{k}.model.1.weight` entries from an LPIPS heads file (`lin{k}.model.1.weight`, or the alias
        `lins.{k}.model.1.weight`). Other keys are ignored."""
        out = {}
        for k in range(5):
            for key in (f"lin{k}.model.1.weight", f"lins.{k}.model.1.weight"):
                if key in state_dict:
                    out[f"lin{k}.model.1.weight"] = state_dict[key]
                    break
        return out

    def load_weights(self, vgg_state_dict: Optional[dict] = None, heads_state_dict: Optional[dict] = None) -> None:
        r"""Load the VGG16 features and/or the LPIPS heads from state dicts with the published key names (see the
        module docstring). Every expected tensor must be present with the right shape."""
        own = self.state_dict()
        for what, source, convert, prefix in (
            ("VGG16", vgg_state_dict, self.vgg_state_dict_from, "features."),
            ("LPIPS heads", heads_state_dict, self.heads_state_dict_from, "lin"),
        ):
            if source is None:
                continue
            converted = convert(source)
            expected = [k for k in own if k.startswith(prefix)]
            missing = [k for k in expected if k not in converted]
            if missing:
                raise ValueError(
                    f"the {what} weights lack {len(missing)} tensors, e.g. {missing[:4]}; found keys like "
                    f"{list(source)[:6]}"
                )
            wrong = {
                k: (tuple(converted[k].shape), tuple(own[k].shape))
                for k in expected
                if tuple(converted[k].shape) != tuple(own[k].shape)
            }
            if wrong:
                raise ValueError(
                    f"the {what} weights do not fit this LPIPS config ({self.config.channels}): "
                    f"(found, expected) shapes {dict(list(wrong.items())[:4])}"
                )
            self.load_state_dict({k: converted[k].to(own[k].dtype) for k in expected}, strict=False)

    # -- construction ----------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Optional[Union[LPIPSConfig, dict, str, os.PathLike]] = None) -> "LPIPS":
        """A randomly initialised network from a config (dataclass, dict or JSON file): for tests only."""
        if isinstance(config, (str, os.PathLike)):
            config = json.loads(Path(config).read_text())
        return cls(config)

    def save_pretrained(self, folder: Union[str, os.PathLike]) -> None:
        """`config.json` + `model.safetensors` (every tensor: VGG, heads and scaling)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"_class_name": "LPIPS", **asdict(self.config)}, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: Union[str, os.PathLike],
        cache_dir: Optional[str] = None,
        revision: Optional[str] = None,
    ) -> "LPIPS":
        r"""Load real LPIPS-VGG weights from a local folder or file, or a Hub repository laid out the same way (see the
        module docstring for the accepted files). Raises `ValueError` listing what was found when nothing fits."""
        path = Path(name_or_path)
        if not path.exists():
            path = _download(str(name_or_path), cache_dir, revision)
        if path.is_file():
            state = load_state_dict_file(path)
            model = cls()
            model.load_weights(state, state)
            return model
        if (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
            config = json.loads((path / CONFIG_NAME).read_text())
            model = cls(LPIPSConfig.from_dict(config))
            state = load_state_dict_file(path / WEIGHTS_NAME)
            model.load_weights(state, state)
            return model
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
        vgg = [p for p in files if p.name.lower().startswith("vgg16")]
        heads = [
            p for p in files if p.name.lower() in ("vgg.pth", "vgg.safetensors") or p.name.lower().startswith("lpips")
        ]
        if len(vgg) > 1 or len(heads) > 1:
            raise ValueError(
                f"{str(path)!r} holds several candidate weight files ({[p.name for p in vgg + heads]}); "
                "keep one VGG16 file and one LPIPS heads file"
            )
        if not vgg and len(heads) == 1:  # an lpips full-model file holds both
            vgg = heads
        if not vgg or not heads:
            raise ValueError(
                f"{str(path)!r} is not an LPIPS-VGG folder: expected `config.json` + `model.safetensors` (from "
                "`LPIPS.save_pretrained`), or a VGG16 weights file named `vgg16*` (e.g. torchvision's "
                "`vgg16-397923af.pth`) plus the LPIPS heads file `vgg.pth` (lpips/weights/v0.1/vgg.pth); found "
                f"{[p.name for p in files] or 'no weight files'}"
            )
        model = cls()
        model.load_weights(load_state_dict_file(vgg[0]), load_state_dict_file(heads[0]))
        return model


def load_state_dict_file(path: Union[str, os.PathLike]) -> dict:
    """A state dict from `.safetensors` or a `torch.save` file (loaded with `weights_only=True`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict")
    return state


def _download(repo_id: str, cache_dir: Optional[str], revision: Optional[str]) -> Path:
    """The snapshot of an LPIPS Hub repo (its JSON and weight files only)."""
    try:
        return resolve_snapshot(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            argument="name_or_path",
            allow_patterns=["*.json", *(f"*{suffix}" for suffix in _WEIGHT_SUFFIXES)],
        )
    except Exception as error:
        raise ValueError(
            f"{repo_id!r} is neither a local path nor a reachable Hub repository ({type(error).__name__}: {error})"
        ) from None


def load_perceptual_model(spec: str, cache_dir: Optional[str] = None, seed: int = 0) -> LPIPS:
    r"""The LPIPS network a training flag names:

    - `"tiny"`: a random narrow network (channels 8/16/32/32/32), for tests and smoke runs;
    - a `.json` file: a random network with that [`LPIPSConfig`] (tests);
    - anything else: [`LPIPS.from_pretrained`] (local folder/file or Hub repo).

    Random networks are drawn from `seed` without touching the global RNG, so a resumed run rebuilds the same one.
    """
    if spec == "tiny" or str(spec).endswith(".json"):
        config = {"channels": [8, 16, 32, 32, 32]} if spec == "tiny" else json.loads(Path(spec).read_text())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LPIPS.from_config(config)
        logger.warning("perceptual loss: a RANDOM LPIPS network (%s); only for tests and smoke runs", spec)
        return model
    return LPIPS.from_pretrained(spec, cache_dir=cache_dir)
