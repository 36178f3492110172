# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""BinaryDiT: the Instella-T2I diffusion transformer over 1D binary latents, conditioned on every layer of a frozen
LLM."""

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero

from ..utils.checks import StrictConfigMixin
from ..utils.remote_code import RemoteCodeMixin
from .attention import Attention, AttentionDispatchMixin, joint_attention_mask
from .compilation import RegionalCompileMixin
from .gradient_checkpointing import run_block
from .lora import apply_lora_scale
from .text_conditioning import TextConditioningMixin, TextKV, TextProjectionMixin


class BinaryDiTBlock(TextProjectionMixin, nn.Module):
    r"""AdaLN-Zero block with joint attention: image tokens are the only queries, keys/values are `[text; image]`.

    The image tokens are modulated by `norm1` (shift/scale from the time embedding), get the block's own learned
    position embedding, and attend over the projected text of this block's LLM layer and themselves; the MLP branch
    is a LayerNorm modulated by `(1 + scale_mlp), shift_mlp`; both residuals are gated. The block projects its own
    text ([`~TextProjectionMixin.text_kv`]).
    """

    def __init__(self, dim: int, num_heads: int, text_embed_dim: int, num_tokens: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        self.context_embedder = nn.Linear(text_embed_dim, dim)
        self.attn = Attention(dim, num_heads, eps=eps)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, dim_out=dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        text: Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]],
        attention_mask: Optional[torch.Tensor],
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`(B, N, C)`): Image tokens.
            temb (`(B, C)`): Time embedding.
            text: Raw text features `(B, T, C_text)` of this block's LLM layer, or their precomputed `(keys, values)`.
            attention_mask (`(B, 1, N, T + N)` bool, *optional*): Key padding mask.
        """
        text_kv = self.text_kv(text) if isinstance(text, torch.Tensor) else text
        norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        norm_hidden_states = norm_hidden_states + self.pos_embed
        attn_output = self.attn(norm_hidden_states, prefix_kv=text_kv, attention_mask=attention_mask)
        hidden_states = hidden_states + gate_msa[:, None] * attn_output
        norm_hidden_states = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        hidden_states = hidden_states + gate_mlp[:, None] * self.ff(norm_hidden_states)
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states


class BinaryDiT(
    AttentionDispatchMixin,
    RegionalCompileMixin,
    RemoteCodeMixin,
    StrictConfigMixin,
    ModelMixin,
    ConfigMixin,
    PeftAdapterMixin,
    TextConditioningMixin,
):
    r"""Diffusion transformer in 1D binary latent space (Instella-T2I).

    Input: noisy bits `z_t` `(B, num_tokens, in_channels)` and the continuous time `t` in [0, 1] (1 = pure noise),
    embedded raw (no sinusoidal projection). Output: one **flip logit** per bit, `p(flip) = sigmoid(output)`, so
    `p(z_0 = 1) = z_t * (1 - p) + (1 - z_t) * p` (see [`BernoulliScheduler`]).

    Text conditioning: every block projects the hidden state of "its" text-encoder layer and attends over it. With
    `D = num_layers` blocks and `L = text_num_layers` layers, block `i` reads layer `round((i + 1) * L / D) - 1`
    (halves rounded up), i.e. layer `i` when `D == L` as in the released model. The projected text keys/values
    depend only on the prompt, so [`~TextConditioningMixin.prepare_text_kv`] computes them once and `text_kv=`
    reuses them at every denoising step.

    The defaults are the released model (about 1.29B parameters, conditioned on AMD-OLMo-1B).

    Parameters:
        in_channels (`int`, defaults to 64): Bits per latent token.
        num_layers (`int`, defaults to 16): Transformer blocks `D`.
        num_attention_heads (`int`, defaults to 16): Attention heads.
        attention_head_dim (`int`, defaults to 128): Channels per head.
        num_tokens (`int`, defaults to 128): Latent tokens per image.
        text_embed_dim (`int`, defaults to 2048): Width of the text encoder's hidden states.
        text_num_layers (`int`, *optional*): Text-encoder layers `L` given per call; defaults to `num_layers`.
        mlp_ratio (`float`, defaults to 4.0): MLP width over model width.
        norm_eps (`float`, defaults to 1e-6): Epsilon of the q/k RMSNorms and the output norm.
        zero_init_modulation (`bool`, defaults to `False`): Initialisation for training from scratch. `False` is the
            authors' (Xavier-uniform on every linear layer, including the AdaLN-Zero modulations and the output
            projection, so blocks do not start as the identity: initial loss ~0.99 > ln 2 and gradient norms ~30 on
            a small model). `True` zeroes the AdaLN modulation layers of every block and of the output norm and the
            output projection, as in the DiT paper's AdaLN-Zero: every block starts as the identity and the model
            starts at flip logit 0 (loss ln 2). Only the initial weights differ; loading weights ignores it.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BinaryDiTBlock"]
    _repeated_blocks = ["BinaryDiTBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]
    _optional_config_keys = ("zero_init_modulation",)

    @register_to_config
    def __init__(
        self,
        in_channels: int = 64,
        num_layers: int = 16,
        num_attention_heads: int = 16,
        attention_head_dim: int = 128,
        num_tokens: int = 128,
        text_embed_dim: int = 2048,
        text_num_layers: Optional[int] = None,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        zero_init_modulation: bool = False,
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.time_embed = TimestepEmbedding(in_channels=1, time_embed_dim=dim)
        self.x_embedder = nn.Linear(in_channels, dim)
        self.transformer_blocks = nn.ModuleList(
            [
                BinaryDiTBlock(dim, num_attention_heads, text_embed_dim, num_tokens, mlp_ratio, norm_eps)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=norm_eps)
        self.proj_out = nn.Linear(dim, in_channels)
        self.gradient_checkpointing = False
        self.apply(_xavier_init)
        if zero_init_modulation:
            zero = [block.norm1.linear for block in self.transformer_blocks] + [self.norm_out.linear, self.proj_out]
            for layer in zero:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @apply_lora_scale
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float],
        encoder_hidden_states: Optional[Union[torch.Tensor, Sequence[torch.Tensor]]] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        text_kv: Optional[TextKV] = None,
        return_dict: bool = True,
        attention_kwargs: Optional[dict] = None,
    ) -> Union[Transformer2DModelOutput, tuple]:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(B, num_tokens, in_channels)`): Noisy bits `z_t` in {0, 1}.
            timestep (`torch.Tensor` of shape `(B,)` or a float): `t` in [0, 1], 1 = pure noise.
            encoder_hidden_states: `text_num_layers` tensors `(B, T, text_embed_dim)` (the text encoder's hidden states
                after the embedding output), or a stacked `(L, B, T, text_embed_dim)` tensor. Not needed with `text_kv`.
            encoder_attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
            text_kv ([`TextKV`], *optional*): From [`~TextConditioningMixin.prepare_text_kv`]; skips the text
                projections.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` multiplies the output of the loaded LoRA adapters
                by `s` for this call (diffusers' convention; 0 gives the base model's output).

        Returns:
            [`~models.modeling_outputs.Transformer2DModelOutput`] whose `sample` `(B, num_tokens, in_channels)` holds
            the flip logits, or a tuple `(sample,)`.
        """
        self._check_bits_input(hidden_states, self.config.num_tokens, exact=True)
        batch, num_tokens = hidden_states.shape[:2]
        texts, text_mask, text_len = self._text_inputs(batch, encoder_hidden_states, encoder_attention_mask, text_kv)

        hidden_states = self.x_embedder(hidden_states.to(device=self.device, dtype=self.x_embedder.weight.dtype))
        timestep = torch.as_tensor(timestep, device=hidden_states.device).reshape(-1)
        if timestep.numel() not in (1, batch):
            raise ValueError(f"`timestep` must be a scalar or have one entry per row ({batch}), got {timestep.numel()}")
        timestep = timestep.expand(batch)
        temb = self.time_embed(timestep.to(hidden_states.dtype)[:, None])
        mask = joint_attention_mask(text_mask, text_len, num_tokens, num_tokens, False, hidden_states.device)
        for block, text in zip(self.transformer_blocks, texts):
            hidden_states = run_block(self, block, hidden_states, temb, text, mask)
        output = self.proj_out(self.norm_out(hidden_states, temb))
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)


def _xavier_init(module: nn.Module) -> None:
    """Xavier-uniform linear weights and zero biases, the authors' initialisation of their generators."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
