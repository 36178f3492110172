# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Attention shared by the tokenizer and the two generators: multi-head attention with per-head q/k RMSNorm, an
optional rotary embedding, optional prefix (text) keys/values and an optional KV cache, plus the key mask of the
generators' joint `[text; image]` attention.

The attention product goes through diffusers' attention dispatcher (`dispatch_attention_fn`), so the models'
`set_attention_backend(name)` / `reset_attention_backend()`, the `attention_backend(name)` context manager and the
`DIFFUSERS_ATTN_BACKEND` environment variable choose the kernel; the default, `"native"`, is
`torch.nn.functional.scaled_dot_product_attention` on exactly the tensors this module always gave it.

Shapes use `B` batch, `S` sequence, `H` heads, `D` head dim, `C` channels, `T` text tokens.
"""

from typing import Optional

import torch
import torch.nn as nn
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, dispatch_attention_fn
from diffusers.utils.constants import DIFFUSERS_ATTN_BACKEND

from .embeddings import apply_rotary_emb
from .normalization import RMSNorm

# Backends that read a mask as per-row key *lengths* (varlen kernels keep the first `mask.sum()` keys of each row and
# drop the query axis). The generators' masks hide keys in the middle of `[text; image]` (text padding) and, in the AR
# model, per query (causality): such a backend would silently attend to the wrong keys, so masked calls refuse it.
KEY_LENGTH_ONLY_BACKENDS = frozenset(name for name in AttentionBackendName if "varlen" in name.value)


class KVCacheLayer:
    r"""Pre-allocated key/value cache of one attention layer for incremental (autoregressive) decoding.

    Keys and values of shape `(B, H, max_length, D)` are filled left to right; `length` counts the filled positions.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys = keys
        self.values = values
        self.length = 0

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append `(B, H, n, D)` keys/values; return every cached key/value so far, `(B, H, length, D)`."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache overflow: {end} positions requested, capacity {self.keys.shape[2]}")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class BitAttnProcessor:
    r"""Processor of [`Attention`]: projections, q/k norms, rotary embedding, KV cache and prefix keys/values in this
    module's `(B, H, S, D)` layout, then the attention product through diffusers' `dispatch_attention_fn`.

    `dispatch_attention_fn` takes `(B, S, H, D)` tensors; the processor hands it transposed *views* of its
    `(B, H, S, D)` tensors, and the native backend transposes them back, so `scaled_dot_product_attention` receives
    the very tensors (same values, same strides) it always did and the output is bit-identical to a direct call. The
    mask (boolean, `True` = attend, or additive) goes through as `attn_mask`, broadcastable to `(B, H, S, T + S_keys)`.
    The KV cache and the text keys/values stay in the `(B, H, S, D)` layout.

    `_attention_backend` is set by `set_attention_backend` (`None`: the active backend, `"native"` unless changed
    with the `attention_backend` context manager or `DIFFUSERS_ATTN_BACKEND`).
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "Attention",
        hidden_states: torch.Tensor,
        rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        prefix_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        kv_cache: Optional[KVCacheLayer] = None,
    ) -> torch.Tensor:
        query, keys, values = attn.project_qkv(hidden_states)
        if rotary_emb is not None:
            cos, sin = rotary_emb
            query = apply_rotary_emb(query, cos, sin)
            keys = apply_rotary_emb(keys, cos, sin)
        if kv_cache is not None:
            keys, values = kv_cache.update(keys, values)
        if prefix_kv is not None:
            keys = torch.cat([prefix_kv[0].to(keys.dtype), keys], dim=2)
            values = torch.cat([prefix_kv[1].to(values.dtype), values], dim=2)
        if attention_mask is not None:
            backend = self._attention_backend
            backend = _AttentionBackendRegistry.get_active_backend()[0] if backend is None else backend
            if backend in KEY_LENGTH_ONLY_BACKENDS:
                raise ValueError(
                    f"attention backend {AttentionBackendName(backend).value!r} reads a mask as key lengths, which "
                    "cannot express this model's mask (padded text keys inside `[text; image]`, or causality); use a "
                    "backend that takes an arbitrary mask (e.g. 'native', '_native_math', '_native_efficient', 'flex')"
                )
        out = dispatch_attention_fn(
            query.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=attention_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        return attn.to_out(out.flatten(2).to(query.dtype))


def _drop_fused_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook of [`Attention`]: a fused module saves the unfused layout (`to_qkv` is a derived copy of
    `to_q`/`to_k`/`to_v`, which stay in the state dict), so checkpoints load into unfused models."""
    for name in ("weight", "bias"):
        state_dict.pop(f"{prefix}to_qkv.{name}", None)
    getattr(state_dict, "_metadata", {}).pop(f"{prefix}to_qkv", None)


def _fill_fused_weights(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Load-state-dict pre-hook of [`Attention`]: loading an unfused state dict into a fused module also refreshes its
    `to_qkv` copy, so that the fused projection never runs stale weights."""
    names = [f"{prefix}to_{part}.weight" for part in "qkv"]
    if getattr(module, "to_qkv", None) is not None and all(name in state_dict for name in names):
        state_dict.setdefault(f"{prefix}to_qkv.weight", torch.cat([state_dict[name] for name in names]))


def _computes_more_than_its_weight(layer: nn.Module) -> bool:
    """Whether a projection's output is not `F.linear(x, layer.weight)`: a PEFT (LoRA) layer with an active adapter not
    merged into its base weight, or a wrapper this module does not know. Merged or disabled adapters are fine."""
    if type(layer) is nn.Linear:
        return False
    if hasattr(layer, "merged_adapters") and hasattr(layer, "active_adapters"):  # a PEFT tuner layer
        return not layer.disable_adapters and bool(set(layer.active_adapters) - set(layer.merged_adapters))
    return True


class Attention(nn.Module, AttentionModuleMixin):
    r"""Multi-head attention with bias-free projections, per-head RMSNorm on queries and keys, optional rotary
    embedding, optional prefix keys/values (the text side of joint attention) and optional KV cache. The attention
    product runs through [`BitAttnProcessor`] and diffusers' attention dispatcher (default backend: torch's
    `scaled_dot_product_attention`); no flash-attn dependency.

    `fuse_projections()` (or the model's `fuse_qkv_projections()`) adds one `to_qkv` projection used instead of
    `to_q`/`to_k`/`to_v` for the module's own tokens (the text keys/values, projected once per prompt, keep `to_k` and
    `to_v`). It is an inference-time copy: the state dict keeps the unfused layout only, loading a state dict refreshes
    the copy, adapters must be merged (`fuse_lora`) before fusing, and training must act on the unfused model
    (`unfuse_projections()` first).

    Args:
        dim (`int`): Model width `C`.
        num_heads (`int`): Number of heads `H`; `C` must be divisible by it.
        eps (`float`): Epsilon of the q/k RMSNorms.
        processor (*optional*): Attention processor; defaults to [`BitAttnProcessor`].
    """

    _default_processor_cls = BitAttnProcessor
    _available_processors = [BitAttnProcessor]
    use_bias = False  # the projections are bias-free (read by `fuse_projections`)

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, processor=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"`dim` ({dim}) must be divisible by `num_heads` ({num_heads})")
        self.num_heads = self.heads = num_heads
        self.head_dim = dim // num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.norm_q = RMSNorm(self.head_dim, eps=eps)
        self.norm_k = RMSNorm(self.head_dim, eps=eps)
        self.set_processor(self._default_processor_cls() if processor is None else processor)
        self._register_state_dict_hook(_drop_fused_weights)
        self._register_load_state_dict_pre_hook(_fill_fused_weights, with_module=True)

    def fuse_projections(self) -> None:
        """Add the fused `to_qkv` projection (diffusers' `AttentionModuleMixin.fuse_projections`). Refused while a
        projection computes more than its `weight` (a LoRA layer with an active adapter not merged by `fuse_lora`, or
        any other wrapper of unknown kind): the fused copy would silently drop it."""
        if not self.fused_projections:
            for name in ("to_q", "to_k", "to_v"):
                if _computes_more_than_its_weight(getattr(self, name)):
                    raise ValueError(
                        f"cannot fuse the QKV projections: `{name}` ({type(getattr(self, name)).__name__}) computes "
                        "more than its weight (an adapter not merged?): call `fuse_lora()` (or `unload_lora()`) first"
                    )
        super().fuse_projections()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, S, C)` -> `(B, H, S, D)`."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries and keys (normed, no rotary embedding) and values of `(B, S, C)` tokens, each `(B, H, S, D)`; one
        fused projection after `fuse_projections()`."""
        if self.fused_projections:
            query, keys, values = self.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, keys, values = self.to_q(hidden_states), self.to_k(hidden_states), self.to_v(hidden_states)
        return self.norm_q(self._heads(query)), self.norm_k(self._heads(keys)), self._heads(values)

    def project_kv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (normed, no rotary embedding) and values of `(B, S, C)` tokens, each `(B, H, S, D)`."""
        keys = self.norm_k(self._heads(self.to_k(hidden_states)))
        values = self._heads(self.to_v(hidden_states))
        return keys, values

    def forward(
        self,
        hidden_states: torch.Tensor,
        rotary_emb: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        prefix_kv: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
        attention_mask: Optional[torch.Tensor] = None,
        kv_cache: Optional[KVCacheLayer] = None,
    ) -> torch.Tensor:
        r"""
        Args:
            hidden_states (`torch.Tensor` of shape `(B, S, C)`): Tokens that are both queries and keys/values.
            rotary_emb (`(cos, sin)` of shape `(S, D)`, *optional*): Applied to queries and keys after the norms.
            prefix_kv (`(keys, values)` of shape `(B, H, T, D)`, *optional*): Extra keys/values placed before the
                tokens' own (projected text); they are never queries.
            attention_mask (`torch.Tensor`, *optional*): Boolean, `True` = attend (or additive), broadcastable to
                `(B, H, S, T + S_keys)`.
            kv_cache ([`KVCacheLayer`], *optional*): The tokens' keys/values are appended to it and attention runs over
                the whole cache.

        Returns:
            `torch.Tensor` of shape `(B, S, C)`.
        """
        return self.processor(self, hidden_states, rotary_emb, prefix_kv, attention_mask, kv_cache)


class AttentionDispatchMixin(AttentionMixin):
    r"""Attention switches of the package's models: diffusers' `AttentionMixin` (`attn_processors`,
    `set_attn_processor`, `fuse_qkv_projections`, `unfuse_qkv_projections`) beside `ModelMixin`'s
    `set_attention_backend` / `reset_attention_backend`, which act on every [`Attention`].

    `reset_attention_backend` also restores the process-wide active backend: diffusers 0.42's `set_attention_backend`
    sets it as a side effect (diffusers issue #14249) and its reset leaves it, so a model reset after
    `set_attention_backend("_native_math")` would keep running `_native_math`. After this reset every module without
    a backend of its own uses the default again (`DIFFUSERS_ATTN_BACKEND`, `"native"` unless set). Put this mixin
    before `ModelMixin` in a model's bases.
    """

    def reset_attention_backend(self) -> None:
        super().reset_attention_backend()
        _AttentionBackendRegistry.set_active_backend(AttentionBackendName(DIFFUSERS_ATTN_BACKEND))


def joint_attention_mask(
    text_mask: Optional[torch.Tensor],
    text_len: int,
    num_queries: int,
    num_image_keys: int,
    causal: bool,
    device: torch.device,
) -> Optional[torch.Tensor]:
    r"""Boolean mask over the keys `[text; image]` for image-token queries.

    Text keys are visible where `text_mask` is True (all of them when it is `None`). Image keys are all visible
    (`causal=False`) or, with `causal=True`, query `q` sees image keys `0 .. num_image_keys - num_queries + q`
    (bottom-right aligned: the queries are the last `num_queries` image positions, as in incremental decoding).

    Args:
        text_mask (`(B, T)` bool, *optional*): `True` for real text tokens.
        text_len (`int`): `T`, the number of text keys.

    Returns:
        `None` when nothing is masked, else a bool tensor broadcastable to `(B, H, num_queries, T + num_image_keys)`.
    """
    image_part = None
    if causal and num_image_keys > 1:
        q_pos = torch.arange(num_queries, device=device)[:, None] + (num_image_keys - num_queries)
        image_part = torch.arange(num_image_keys, device=device)[None, :] <= q_pos  # (Q, K_img)
        if bool(image_part.all()):
            image_part = None
    if text_mask is None and image_part is None:
        return None
    if image_part is None:
        image_part = torch.ones(num_queries, num_image_keys, dtype=torch.bool, device=device)
    if text_mask is None:
        text_part = torch.ones(num_queries, text_len, dtype=torch.bool, device=device)
        return torch.cat([text_part, image_part], dim=-1)[None, None]
    batch = text_mask.shape[0]
    text_part = text_mask[:, None, None, :].expand(batch, 1, num_queries, text_len)
    return torch.cat([text_part, image_part[None, None].expand(batch, 1, -1, -1)], dim=-1)
