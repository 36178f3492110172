# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""The adversarial part of tokenizer stage 3 (Instella-T2I §2.1 "Multi-stage training"): a discriminator built on a
frozen DINO ViT-S backbone with trainable heads, hinge losses, and the adaptive weight that balances the adversarial
loss against the reconstruction loss.

Discriminator ([`DinoDiscriminator`]), in the spirit of projected / StyleGAN-T discriminators:

1. images in [-1, 1] are mapped to [0, 1], resized (bilinear, antialiased) to the backbone's `image_size` (224 for
   DINO ViT-S/16) and normalised with the ImageNet mean and std (the DINO preprocessing);
2. the frozen backbone (`transformers.ViTModel`, the `facebook/dino-vits16` layout: hidden 384, 12 layers, 6 heads,
   patch 16) runs once; the patch tokens (CLS dropped) of a few blocks (default 4, evenly spaced and ending at the
   last: blocks 2, 5, 8, 11 of ViT-S) are laid back on their `h x w` grid;
3. one trainable head per selected block: 1x1 conv (backbone width -> `head_channels`), LeakyReLU(0.2), a residual
   3x3 conv + LeakyReLU(0.2), and a 1x1 conv to one logit per patch, all spectrally normalised by default.

The logits of all heads are concatenated: `(B, sum_k h*w)`. The backbone never trains (`requires_grad=False`, always
in eval mode) but gradients flow through it to the images, which is how the generator gets its adversarial signal.
"""

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BACKBONE = "facebook/dino-vits16"
# a random ViT small enough for CPU tests (the layout of DINO ViT-S, narrower and shallower, 32 px input)
TINY_BACKBONE_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
}
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def default_feature_layers(num_layers: int, count: int = 4) -> list[int]:
    """`count` block indices (0-based) evenly spaced over `num_layers`, ending at the last (ViT-S: 2, 5, 8, 11)."""
    return sorted({max(0, round((i + 1) * num_layers / count) - 1) for i in range(count)})


class DiscriminatorHead(nn.Module):
    r"""Patch tokens `(B, h*w, C)` on an `h x w` grid -> one logit per patch `(B, h*w)`."""

    def __init__(self, in_channels: int, channels: int, spectral_norm: bool = True):
        super().__init__()
        norm = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda module: module)
        self.conv_in = norm(nn.Conv2d(in_channels, channels, kernel_size=1))
        self.conv_mid = norm(nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        self.conv_out = norm(nn.Conv2d(channels, 1, kernel_size=1))

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = tokens.transpose(1, 2).unflatten(2, (height, width))
        x = F.leaky_relu(self.conv_in(x), 0.2)
        x = x + F.leaky_relu(self.conv_mid(x), 0.2)
        return self.conv_out(x).flatten(1)


class DinoDiscriminator(nn.Module):
    r"""Frozen ViT (DINO) backbone + trainable per-block heads.

    Args:
        backbone (`transformers.ViTModel`): The feature network; frozen here.
        feature_layers (`list[int]`, *optional*): 0-based blocks whose outputs feed a head (default: 4 evenly spaced,
            see [`default_feature_layers`]).
        head_channels (`int`, defaults to 128): Width of every head.
        spectral_norm (`bool`, defaults to `True`): Spectral normalisation of the head convolutions.
        backbone_source (`str`, *optional*): Where the backbone came from (recorded in `save_pretrained`'s config).
    """

    def __init__(
        self,
        backbone,
        feature_layers: Optional[Sequence[int]] = None,
        head_channels: int = 128,
        spectral_norm: bool = True,
        backbone_source: Optional[str] = None,
    ):
        super().__init__()
        config = backbone.config
        num_layers = config.num_hidden_layers
        self.feature_layers = list(feature_layers) if feature_layers else default_feature_layers(num_layers)
        if any(not 0 <= i < num_layers for i in self.feature_layers):
            raise ValueError(f"`feature_layers` {self.feature_layers} must index blocks 0..{num_layers - 1}")
        self.head_channels = head_channels
        self.spectral_norm = spectral_norm
        self.backbone_source = backbone_source
        self.image_size = int(config.image_size if isinstance(config.image_size, int) else config.image_size[0])
        self.patch_size = int(config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0])
        self.backbone = backbone.requires_grad_(False).eval()
        self.heads = nn.ModuleList(
            [DiscriminatorHead(config.hidden_size, head_channels, spectral_norm) for _ in self.feature_layers]
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "DinoDiscriminator":
        super().train(mode)
        self.backbone.eval()  # frozen: never in training mode
        return self

    def head_parameters(self):
        """The trainable parameters (the heads')."""
        return self.heads.parameters()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """`[-1, 1]` images -> ImageNet-normalised `(B, 3, image_size, image_size)`."""
        x = (images.float() + 1) / 2
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r"""
        Args:
            images (`torch.Tensor` of shape `(B, 3, H, W)`): Images in [-1, 1], any size.

        Returns:
            `(B, N)` logits (float32), `N = len(feature_layers) * (image_size / patch_size) ** 2`.
        """
        pixels = self.preprocess(images).to(self.backbone.dtype)
        hidden_states = self.backbone(pixel_values=pixels, output_hidden_states=True).hidden_states
        grid = self.image_size // self.patch_size
        logits = []
        for head, layer in zip(self.heads, self.feature_layers):
            tokens = hidden_states[layer + 1][:, -grid * grid :]  # drop the CLS token
            logits.append(head(tokens, grid, grid).float())
        return torch.cat(logits, dim=1)

    # -- construction / saving -----------------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {
            "_class_name": type(self).__name__,
            "backbone_config": self.backbone.config.to_dict(),
            "backbone_source": self.backbone_source,
            "feature_layers": self.feature_layers,
            "head_channels": self.head_channels,
            "spectral_norm": self.spectral_norm,
        }

    def save_pretrained(self, folder: Union[str, os.PathLike]) -> None:
        r"""`config.json` (backbone config + head settings) and `model.safetensors` (backbone and heads, so a resumed
        run never depends on re-downloading the backbone)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2, default=str))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_NAME))

    @classmethod
    def from_pretrained(cls, folder: Union[str, os.PathLike]) -> "DinoDiscriminator":
        """A discriminator written by [`save_pretrained`]."""
        from safetensors.torch import load_file
        from transformers import ViTConfig, ViTModel

        folder = Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text())
        backbone = ViTModel(ViTConfig.from_dict(config["backbone_config"]), add_pooling_layer=False)
        model = cls(
            backbone,
            config["feature_layers"],
            config["head_channels"],
            config["spectral_norm"],
            config.get("backbone_source"),
        )
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return model


def build_backbone(spec: str = DEFAULT_BACKBONE, cache_dir: Optional[str] = None, seed: int = 0):
    r"""The frozen ViT backbone a training flag names:

    - a Hub name or local folder of a `ViTModel` (default `facebook/dino-vits16`): pretrained weights;
    - `"tiny"`: a random small ViT ([`TINY_BACKBONE_CONFIG`]) for tests;
    - a `.json` file: a random ViT with that `ViTConfig` (e.g. `{"hidden_size": 384, "num_hidden_layers": 12,
      "num_attention_heads": 6, "intermediate_size": 1536, "patch_size": 16, "image_size": 224}` is DINO ViT-S/16).

    Random backbones are drawn from `seed` without touching the global RNG.
    """
    from transformers import ViTConfig, ViTModel

    if spec == "tiny" or str(spec).endswith(".json"):
        values = dict(TINY_BACKBONE_CONFIG) if spec == "tiny" else json.loads(Path(spec).read_text())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = ViTModel(ViTConfig(**values), add_pooling_layer=False)
        logger.warning("discriminator: a RANDOM ViT backbone (%s); only for tests and smoke runs", spec)
        return backbone
    from ..utils.hub import hub_offline

    kwargs = {"cache_dir": cache_dir} if not os.path.isdir(spec) else {}
    if not os.path.isdir(spec) and hub_offline():
        kwargs["local_files_only"] = True
    return ViTModel.from_pretrained(spec, add_pooling_layer=False, **kwargs)


def build_discriminator(
    backbone: str = DEFAULT_BACKBONE,
    feature_layers: Optional[Sequence[int]] = None,
    head_channels: int = 128,
    spectral_norm: bool = True,
    cache_dir: Optional[str] = None,
) -> DinoDiscriminator:
    """[`DinoDiscriminator`] on the backbone [`build_backbone`] gives for `backbone`; the heads are drawn from the
    global RNG (seed it first)."""
    return DinoDiscriminator(
        build_backbone(backbone, cache_dir), feature_layers, head_channels, spectral_norm, backbone
    )


# ----------------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------------
def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    r"""`mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))`, halved (so a perfect discriminator gives 0 and a blind one,
    all logits 0, gives 1)."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """`-mean(D(fake))`: the generator side of the hinge GAN."""
    return -fake_logits.float().mean()


def adaptive_adversarial_weight(
    reconstruction_loss: torch.Tensor,
    adversarial_loss: torch.Tensor,
    last_layer_weight: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> torch.Tensor:
    r"""The adaptive weight that balances the adversarial loss against the reconstruction loss by their gradient norms
    at the generator's last layer (the VQGAN rule):

        w = clamp(||d L_rec / d W_last|| / (||d L_adv / d W_last|| + eps), 0, max_weight)

    Both gradients are taken with `torch.autograd.grad(..., retain_graph=True)`, so nothing is accumulated into
    `.grad` and the graph stays usable for the real backward pass. The result is detached (a float32 scalar).
    """
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer_weight, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial_loss, last_layer_weight, retain_graph=True)[0]
    weight = rec_grad.float().norm() / (adv_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
