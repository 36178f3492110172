# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""Text conditioning shared by the two generators ([`BinaryDiT`], [`BinaryARTransformer`]): which text-encoder
layer each block reads, the input checks, the padding rule, each block's text projection and the precomputed
per-block text keys/values ([`TextKV`]) that are reused at every denoising step or generated token.

Shapes use `B` batch, `H` heads, `D` head dim, `T` text tokens, `C_text` text-encoder width, `L` text-encoder layers.
"""

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..utils.checks import check_bits
from .lora import apply_lora_scale


def text_layer_indices(num_blocks: int, num_text_layers: int) -> list[int]:
    r"""Which text-encoder layer each generator block reads.

    Block `i` (0-based) of `D = num_blocks` reads hidden state `round((i + 1) * L / D) - 1` of the `L =
    num_text_layers` text-encoder layers (the embedding output excluded), rounding halves up. With `D == L` block `i`
    reads layer `i` (the released models); with `D < L` the blocks spread evenly and the last block always reads the
    last layer; with `D > L` consecutive blocks share a layer.
    """
    if num_blocks < 1 or num_text_layers < 1:
        raise ValueError(f"need at least one block and one text layer, got {num_blocks} and {num_text_layers}")
    return [
        min(max(math.floor((i + 1) * num_text_layers / num_blocks + 0.5) - 1, 0), num_text_layers - 1)
        for i in range(num_blocks)
    ]


@dataclass
class TextKV:
    r"""Projected text keys/values of every generator block, computed once per prompt batch and reused at every
    denoising step (diffusion) or every generated token (AR).

    Attributes:
        keys, values (`list[torch.Tensor]`): One `(B, H, T, D)` tensor per block.
        mask (`torch.Tensor` of shape `(B, T)`, bool, *optional*): `True` for real text tokens; `None` when no token
            is padding.
    """

    keys: list
    values: list
    mask: Optional[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def repeat_interleave(self, repeats: int) -> "TextKV":
        """Repeat every batch row `repeats` times (several images per prompt)."""
        if repeats == 1:
            return self
        rep = lambda t: t.repeat_interleave(repeats, dim=0)  # noqa: E731
        return TextKV(
            [rep(k) for k in self.keys], [rep(v) for v in self.values], None if self.mask is None else rep(self.mask)
        )


def check_text_inputs(
    encoder_hidden_states: Union[torch.Tensor, Sequence[torch.Tensor]],
    encoder_attention_mask: Optional[torch.Tensor],
    num_text_layers: int,
    text_embed_dim: int,
) -> None:
    """Raise a `ValueError` naming the argument when per-layer text features or their mask do not fit the model."""
    if encoder_hidden_states is None:
        raise ValueError("`encoder_hidden_states` is required when `text_kv` is not given")
    if len(encoder_hidden_states) != num_text_layers:
        raise ValueError(
            f"`encoder_hidden_states` must hold one hidden state per text-encoder layer ({num_text_layers}), "
            f"got {len(encoder_hidden_states)}"
        )
    first = encoder_hidden_states[0]
    for index, layer in enumerate(encoder_hidden_states):
        if (
            not isinstance(layer, torch.Tensor)
            or layer.ndim != 3
            or layer.shape[-1] != text_embed_dim
            or layer.shape[:2] != first.shape[:2]
        ):
            shape = tuple(layer.shape) if isinstance(layer, torch.Tensor) else type(layer).__name__
            raise ValueError(
                f"every entry of `encoder_hidden_states` must have shape (batch, text_len, {text_embed_dim}) with the "
                f"batch and length of entry 0 {tuple(first.shape[:2])}; entry {index} has {shape}"
            )
    if encoder_attention_mask is not None and (
        encoder_attention_mask.ndim != 2 or tuple(encoder_attention_mask.shape) != tuple(first.shape[:2])
    ):
        raise ValueError(
            f"`encoder_attention_mask` must have shape (batch, text_len) = {tuple(first.shape[:2])}, "
            f"got {tuple(encoder_attention_mask.shape)}"
        )


def text_padding_mask(encoder_attention_mask: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    """`(B, T)` 0/1 mask -> bool mask on `device`, or `None` when there is no mask or no padding."""
    if encoder_attention_mask is None:
        return None
    mask = encoder_attention_mask.to(device=device).bool()
    return None if bool(mask.all()) else mask


def zero_padding(text_features: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero the features of padded text tokens: they are never attended to, but a NaN there (some text encoders emit
    NaN for fully padded rows) would still poison the attention output through `0 * NaN`."""
    if mask is None:
        return text_features
    return text_features.masked_fill(~mask.to(text_features.device)[:, :, None], 0)


def project_text_kv(
    blocks: Sequence[nn.Module],
    layer_indices: Sequence[int],
    encoder_hidden_states: Union[torch.Tensor, Sequence[torch.Tensor]],
    encoder_attention_mask: Optional[torch.Tensor],
) -> TextKV:
    r"""The text keys/values of every block: block `i` projects `encoder_hidden_states[layer_indices[i]]` (padded
    tokens zeroed) with its own [`~TextProjectionMixin.text_kv`].

    Args:
        blocks (`Sequence[nn.Module]`): Generator blocks, each with a `text_kv` method.
        layer_indices (`Sequence[int]`): Text-encoder layer of each block, see [`text_layer_indices`].
        encoder_hidden_states: `L` tensors `(B, T, C_text)` (or one `(L, B, T, C_text)` tensor).
        encoder_attention_mask (`(B, T)`, *optional*): 1/True for real tokens, 0/False for padding.

    Returns:
        [`TextKV`] with one `(B, H, T, D)` key and value tensor per block; its mask lies on the device of the keys.
    """
    mask = text_padding_mask(encoder_attention_mask, encoder_hidden_states[0].device)
    # identical rows (the unconditional rows of a guided batch: one empty prompt per image) are projected once
    groups = distinct_rows(encoder_hidden_states, mask)
    keys, values = [], []
    for block, layer in zip(blocks, layer_indices):
        features, rows_mask = encoder_hidden_states[layer], mask
        if groups is not None:
            features, rows_mask = features[groups[0]], None if mask is None else mask[groups[0]]
        k, v = block.text_kv(zero_padding(features, rows_mask))
        if groups is not None:
            k, v = k[groups[1].to(k.device)], v[groups[1].to(v.device)]
        keys.append(k)
        values.append(v)
    return TextKV(keys, values, None if mask is None else mask.to(keys[0].device))


def distinct_rows(
    encoder_hidden_states: Union[torch.Tensor, Sequence[torch.Tensor]], mask: Optional[torch.Tensor]
) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    r"""Groups of identical batch rows (the same features in every layer and the same mask).

    Returns:
        `None` when every row is distinct, else `(first, group)`: `(U,)` indices of the first row of each group and
        `(B,)` the group of every row, so `x[first][group]` rebuilds a per-row result from the `U` distinct rows. Rows
        are compared exactly (`torch.equal` on every layer; a per-row checksum narrows the candidates).
    """
    batch = encoder_hidden_states[0].shape[0]
    if batch < 2 or encoder_hidden_states[0].device.type == "meta" or torch.compiler.is_compiling():
        return None  # nothing to share, or no values to compare (meta tensors for counting FLOPs, tracing)
    ends = (encoder_hidden_states[0], encoder_hidden_states[-1])
    checksums = [tuple(row) for row in torch.stack([x.float().sum(dim=(1, 2)).cpu() for x in ends]).T.tolist()]
    first, group, candidates = [], [], {}
    for row, checksum in enumerate(checksums):
        same = [g for g in candidates.get(checksum, []) if _same_row(encoder_hidden_states, mask, first[g], row)]
        if not same:
            same = [len(first)]
            first.append(row)
            candidates.setdefault(checksum, []).append(same[0])
        group.append(same[0])
    if len(first) == batch:
        return None
    return torch.tensor(first), torch.tensor(group)


def _same_row(encoder_hidden_states, mask, a: int, b: int) -> bool:
    if mask is not None and not torch.equal(mask[a], mask[b]):
        return False
    return all(torch.equal(layer[a], layer[b]) for layer in encoder_hidden_states)


class TextProjectionMixin:
    r"""The text side of a generator block's joint attention, shared by [`BinaryDiTBlock`] and [`BinaryARBlock`].

    Expects `self.context_embedder` (`nn.Linear`, text width -> model width) and `self.attn` ([`Attention`]).
    """

    def text_kv(self, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Keys/values this block attends to for its text: the block's `context_embedder`, then its attention's
        key/value projections and key norm (no rotary embedding).

        Args:
            text_features (`torch.Tensor` of shape `(B, T, C_text)`): Hidden states of this block's text-encoder
                layer, in any dtype and on any device (they are cast to the block's).

        Returns:
            `(keys, values)`, each of shape `(B, H, T, D)`.
        """
        weight = self.context_embedder.weight
        text = self.context_embedder(text_features.to(device=weight.device, dtype=weight.dtype))
        return self.attn.project_kv(text)


class TextConditioningMixin:
    r"""Text plumbing shared by [`BinaryDiT`] and [`BinaryARTransformer`].

    Expects `self.transformer_blocks` (blocks with a `text_kv` method, see [`TextProjectionMixin`]) and config fields
    `num_layers`, `text_num_layers`, `text_embed_dim`, `in_channels`.
    """

    @property
    def text_layer_map(self) -> list[int]:
        """Text-encoder layer read by each block; see [`text_layer_indices`]."""
        return text_layer_indices(self.config.num_layers, self.config.text_num_layers or self.config.num_layers)

    @apply_lora_scale
    def prepare_text_kv(
        self,
        encoder_hidden_states: Union[torch.Tensor, Sequence[torch.Tensor]],
        encoder_attention_mask: Optional[torch.Tensor] = None,
        attention_kwargs: Optional[dict] = None,
    ) -> TextKV:
        r"""Project the text side of every block's attention once, to pass as `text_kv` at every step.

        Args:
            encoder_hidden_states: One `(B, T, text_embed_dim)` hidden state per text-encoder layer (the embedding
                output excluded), as a sequence or a stacked `(L, B, T, text_embed_dim)` tensor.
            encoder_attention_mask (`(B, T)`, *optional*): 1 for real text tokens, 0 for padding.
            attention_kwargs (`dict`, *optional*): `{"scale": s}` scales the loaded LoRA adapters (the text
                projections go through `to_k`/`to_v`); pass the same as to `forward`.
        """
        check_text_inputs(
            encoder_hidden_states,
            encoder_attention_mask,
            self.config.text_num_layers or self.config.num_layers,
            self.config.text_embed_dim,
        )
        return project_text_kv(
            self.transformer_blocks, self.text_layer_map, encoder_hidden_states, encoder_attention_mask
        )

    def _text_inputs(self, batch_size, encoder_hidden_states, encoder_attention_mask, text_kv):
        """Per-block text inputs (raw features, projected inside the block, or precomputed `(k, v)`), the bool padding
        mask and the text length."""
        if text_kv is not None:
            if text_kv.batch_size != batch_size:
                raise ValueError(f"`text_kv` has batch {text_kv.batch_size}, `hidden_states` has batch {batch_size}")
            return list(zip(text_kv.keys, text_kv.values)), text_kv.mask, text_kv.length
        check_text_inputs(
            encoder_hidden_states,
            encoder_attention_mask,
            self.config.text_num_layers or self.config.num_layers,
            self.config.text_embed_dim,
        )
        if encoder_hidden_states[0].shape[0] != batch_size:
            raise ValueError(
                f"`encoder_hidden_states` has batch {encoder_hidden_states[0].shape[0]}, `hidden_states` has batch "
                f"{batch_size}"
            )
        mask = text_padding_mask(encoder_attention_mask, self.device)
        texts = [zero_padding(encoder_hidden_states[layer], mask) for layer in self.text_layer_map]
        return texts, mask, texts[0].shape[1]

    def _check_bits_input(self, hidden_states: torch.Tensor, max_tokens: int, exact: bool) -> None:
        channels = self.config.in_channels
        if (
            not isinstance(hidden_states, torch.Tensor)
            or hidden_states.ndim != 3
            or hidden_states.shape[-1] != channels
        ):
            shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
            raise ValueError(f"`hidden_states` must have shape (batch, tokens, {channels}), got {shape}")
        n = hidden_states.shape[1]
        if (exact and n != max_tokens) or n > max_tokens:
            expected = f"exactly {max_tokens}" if exact else f"at most {max_tokens}"
            raise ValueError(f"`hidden_states` must hold {expected} tokens, got {n}")
        check_bits("hidden_states", hidden_states)
