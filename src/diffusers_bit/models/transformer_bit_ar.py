# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""BinaryARTransformer: the Instella-T2I causal transformer that predicts 1D binary latents token by token, with a
KV cache for incremental decoding."""

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import FeedForward
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from ..utils.checks import StrictConfigMixin
from ..utils.remote_code import RemoteCodeMixin
from .attention import Attention, AttentionDispatchMixin, KVCacheLayer, joint_attention_mask
from .compilation import RegionalCompileMixin
from .gradient_checkpointing import run_block
from .lora import apply_lora_scale
from .normalization import RMSNorm
from .text_conditioning import TextConditioningMixin, TextKV, TextProjectionMixin


class BinaryARCache:
    r"""Per-block key/value cache of the image tokens for [`BinaryARTransformer`] incremental decoding.

    Allocate with [`BinaryARTransformer.allocate_kv_cache`]; `length` is the number of image positions (split token
    included) already processed.
    """

    def __init__(self, layers: list):
        self.layers = layers

    @property
    def length(self) -> int:
        return self.layers[0].length


class BinaryARBlock(TextProjectionMixin, nn.Module):
    r"""Pre-RMSNorm block: the normed image tokens get the block's learned position embedding and attend (causally
    among themselves, to all real text tokens) over `[text; image]`; then RMSNorm -> GELU MLP; plain residuals. The
    block projects its own text ([`~TextProjectionMixin.text_kv`])."""

    def __init__(self, dim: int, num_heads: int, text_embed_dim: int, num_tokens: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.norm1 = RMSNorm(dim, eps=eps)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, dim))
        self.context_embedder = nn.Linear(text_embed_dim, dim)
        self.attn = Attention(dim, num_heads, eps=eps)
        self.norm2 = RMSNorm(dim, eps=eps)
        self.ff = FeedForward(dim, dim_out=dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    def forward(
        self,
        hidden_states: torch.Tensor,
        text: Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]],
        attention_mask: Optional[torch.Tensor],
        position_offset: int = 0,
        kv_cache: Optional[KVCacheLayer] = None,
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`(B, n, C)`): Image tokens at positions `position_offset .. position_offset + n - 1`
                (position 0 is the split token).
            text: Raw text features `(B, T, C_text)` of this block's LLM layer, or their precomputed `(keys, values)`.
            attention_mask (`(B, 1, n, T + K)` bool, *optional*): Padding + causal mask.
            kv_cache ([`KVCacheLayer`], *optional*): Earlier image keys/values; this call's are appended.
        """
        text_kv = self.text_kv(text) if isinstance(text, torch.Tensor) else text
        n = hidden_states.shape[1]
        norm_hidden_states = self.norm1(hidden_states) + self.pos_embed[:, position_offset : position_offset + n]
        hidden_states = hidden_states + self.attn(
            norm_hidden_states, prefix_kv=text_kv, attention_mask=attention_mask, kv_cache=kv_cache
        )
        hidden_states = hidden_states + self.ff(self.norm2(hidden_states))
        if hidden_states.dtype == torch.float16:
            hidden_states = hidden_states.clip(-65504, 65504)
        return hidden_states


class BinaryARTransformer(
    AttentionDispatchMixin,
    RegionalCompileMixin,
    RemoteCodeMixin,
    StrictConfigMixin,
    ModelMixin,
    ConfigMixin,
    PeftAdapterMixin,
    TextConditioningMixin,
):
    r"""Causal transformer over 1D binary latents (Instella-T2I AR).

    The sequence is `[split; x_1 .. x_n]`: a learned split token followed by the embedded bit vectors. Output `i`
    holds the 64 independent bit logits of token `i + 1` (the split token predicts the first token). Image tokens
    attend causally among themselves and to every real text token; text conditioning follows [`BinaryDiT`] (one
    LLM layer per block, same routing rule, `text_kv` reusable).

    Incremental decoding: [`allocate_kv_cache`] then call `forward(..., kv_cache=cache)` with only the new tokens
    (`hidden_states=None` for the first call, which feeds the split token). The logits equal those of a full forward
    pass.

    The defaults are the released model (about 0.88B parameters).

    Parameters:
        in_channels (`int`, defaults to 64): Bits per latent token.
        num_layers (`int`, defaults to 16): Transformer blocks.
        num_attention_heads (`int`, defaults to 16): Attention heads.
        attention_head_dim (`int`, defaults to 128): Channels per head.
        num_tokens (`int`, defaults to 128): Latent tokens per image.
        text_embed_dim (`int`, defaults to 2048): Width of the text encoder's hidden states.
        text_num_layers (`int`, *optional*): Text-encoder layers given per call; defaults to `num_layers`.
        mlp_ratio (`float`, defaults to 4.0): MLP width over model width.
        norm_eps (`float`, defaults to 1e-6): Epsilon of every RMSNorm.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BinaryARBlock"]
    _repeated_blocks = ["BinaryARBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm", "split_token"]

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
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        self.x_embedder = nn.Linear(in_channels, dim)
        self.split_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.transformer_blocks = nn.ModuleList(
            [
                BinaryARBlock(dim, num_attention_heads, text_embed_dim, num_tokens, mlp_ratio, norm_eps)
                for _ in range(num_layers)
            ]
        )
        self.norm_out = RMSNorm(dim, eps=norm_eps)
        self.proj_out = nn.Linear(dim, in_channels)
        self.gradient_checkpointing = False

    def allocate_kv_cache(self, batch_size: int, max_length: Optional[int] = None) -> BinaryARCache:
        """An empty cache for `batch_size` rows and up to `max_length` image positions (default: split token + all
        `num_tokens` tokens), in the model's dtype and device."""
        max_length = self.config.num_tokens + 1 if max_length is None else max_length
        heads, head_dim = self.config.num_attention_heads, self.config.attention_head_dim
        shape = (batch_size, heads, max_length, head_dim)
        return BinaryARCache(
            [
                KVCacheLayer(
                    torch.empty(shape, device=self.device, dtype=self.dtype),
                    torch.empty(shape, device=self.device, dtype=self.dtype),
                )
                for _ in self.transformer_blocks
            ]
        )

    @apply_lora_scale
    def forward(
        self,
        hidden_states: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[Union[torch.Tensor, Sequence[torch.Tensor]]] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        text_kv: Optional[TextKV] = None,
        kv_cache: Optional[BinaryARCache] = None,
        batch_size: Optional[int] = None,
        return_dict: bool = True,
        attention_kwargs: Optional[dict] = None,
    ) -> Union[Transformer2DModelOutput, tuple]:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(B, n, in_channels)`, *optional*): Bits of tokens `1..n` (full
                pass), or of the new tokens only (with `kv_cache`). `None` feeds the split token alone.
            encoder_hidden_states, encoder_attention_mask, text_kv: Text conditioning, as in [`BinaryDiT`].
            kv_cache ([`BinaryARCache`], *optional*): Incremental decoding. When the cache is empty the split token is
                prepended to `hidden_states`; otherwise only `hidden_states` is processed.
            batch_size (`int`, *optional*): Batch size when `hidden_states` is `None` (default: the text batch).
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales the loaded LoRA adapters, as in
                [`BinaryDiT`].

        Returns:
            `sample` `(B, m, in_channels)`: bit logits for every processed position (`m = n + 1` when the split
            token is included, else `n`); the last row predicts the next token.
        """
        offset = 0 if kv_cache is None else kv_cache.length
        if hidden_states is not None:
            limit = self.config.num_tokens - max(offset - 1, 0)
            self._check_bits_input(hidden_states, limit, exact=False)
            batch = hidden_states.shape[0]
        elif batch_size is not None:
            batch = batch_size
        elif text_kv is not None:
            batch = text_kv.batch_size
        elif encoder_hidden_states is not None:
            batch = encoder_hidden_states[0].shape[0]
        else:
            raise ValueError("give `hidden_states`, `batch_size`, `text_kv` or `encoder_hidden_states`")
        if hidden_states is None and offset > 0:
            raise ValueError("`hidden_states` is required once the KV cache holds the split token")
        texts, text_mask, text_len = self._text_inputs(batch, encoder_hidden_states, encoder_attention_mask, text_kv)

        parts = [self.split_token.expand(batch, -1, -1)] if offset == 0 else []
        if hidden_states is not None:
            weight = self.x_embedder.weight
            parts.append(self.x_embedder(hidden_states.to(device=weight.device, dtype=weight.dtype)))
        tokens = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        num_new = tokens.shape[1]
        mask = joint_attention_mask(text_mask, text_len, num_new, offset + num_new, True, tokens.device)
        for index, (block, text) in enumerate(zip(self.transformer_blocks, texts)):
            if kv_cache is None:
                tokens = run_block(self, block, tokens, text, mask)
            else:
                tokens = block(tokens, text, mask, offset, kv_cache.layers[index])
        output = self.proj_out(self.norm_out(tokens))
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)
