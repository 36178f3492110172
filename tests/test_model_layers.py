"""Layers shared by the models: the tokenizer's token down/up-sampling blocks and its position embeddings."""

import math

import pytest
import torch
from model_helpers import gen

from diffusers_bit.models.embeddings import apply_rotary_emb, rope_cos_sin, sincos_2d_embedding
from diffusers_bit.models.resampling import DCDownBlock, DCUpBlock, LinearDownBlock, LinearUpBlock

# ----------------------------------------------------------------------------------------------------------------------
# Token down/up-sampling (models/resampling.py)
# ----------------------------------------------------------------------------------------------------------------------


# the paper's 2x2 group order: (row offset di, column offset dj) of the k-th member of the concatenation
GROUP_ORDER = [(0, 0), (1, 0), (0, 1), (1, 1)]


def _grid_tokens(height, width, channels, seed=0):
    return torch.randn(1, height * width, channels, generator=gen(seed))


@torch.no_grad()
def test_linear_down_block_token_order():
    c, h, w = 3, 4, 6
    tokens = _grid_tokens(h, w, c)
    x = tokens.view(h, w, c)
    block = LinearDownBlock(c)
    for k, (di, dj) in enumerate(GROUP_ORDER):
        weight = torch.zeros(c, 4 * c)
        weight[:, k * c : (k + 1) * c] = torch.eye(c)  # read the k-th member of the concatenation
        block.proj.weight.copy_(weight)
        out = block(tokens, h, w).view(h // 2, w // 2, c)
        for i in range(h // 2):
            for j in range(w // 2):
                torch.testing.assert_close(out[i, j], x[2 * i + di, 2 * j + dj], atol=0, rtol=0)


@torch.no_grad()
def test_linear_up_block_token_order():
    c, h, w = 3, 2, 3
    tokens = _grid_tokens(h, w, c, seed=1)
    x = tokens.view(h, w, c)
    block = LinearUpBlock(c)
    # chunk k of the 4C output is (k + 1) * x
    block.proj.weight.copy_(torch.cat([(k + 1) * torch.eye(c) for k in range(4)], dim=0))
    out = block(tokens, h, w)
    assert out.shape == (1, 4 * h * w, c)
    out = out.view(2 * h, 2 * w, c)
    for k, (di, dj) in enumerate(GROUP_ORDER):
        for i in range(h):
            for j in range(w):
                torch.testing.assert_close(out[2 * i + di, 2 * j + dj], (k + 1) * x[i, j], atol=1e-6, rtol=0)


@torch.no_grad()
def test_dc_down_block_shortcut_is_average_pooling():
    c, h, w = 3, 4, 6
    tokens = _grid_tokens(h, w, c, seed=2)
    x = tokens.view(h, w, c)
    block = DCDownBlock(c)
    block.conv.weight.zero_()
    block.conv.bias.zero_()
    out = block(tokens, h, w)
    assert out.shape == (1, (h // 2) * (w // 2), c)
    out = out.view(h // 2, w // 2, c)
    for i in range(h // 2):
        for j in range(w // 2):
            expected = (x[2 * i, 2 * j] + x[2 * i + 1, 2 * j] + x[2 * i, 2 * j + 1] + x[2 * i + 1, 2 * j + 1]) / 4
            torch.testing.assert_close(out[i, j], expected, atol=1e-6, rtol=0)
    # the conv branch is added on top
    block.conv.bias.fill_(1.0)
    torch.testing.assert_close(block(tokens, h, w).view(h // 2, w // 2, c), out + 1, atol=1e-6, rtol=0)


@torch.no_grad()
def test_dc_up_block_shortcut_is_nearest_neighbour():
    c, h, w = 3, 2, 3
    tokens = _grid_tokens(h, w, c, seed=3)
    x = tokens.view(h, w, c)
    block = DCUpBlock(c)
    block.conv.weight.zero_()
    block.conv.bias.zero_()
    out = block(tokens, h, w)
    assert out.shape == (1, 4 * h * w, c)
    out = out.view(2 * h, 2 * w, c)
    for r in range(2 * h):
        for col in range(2 * w):
            torch.testing.assert_close(out[r, col], x[r // 2, col // 2], atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Position embeddings (models/embeddings.py)
# ----------------------------------------------------------------------------------------------------------------------


def test_rope_half_split_layout_is_a_true_rotation():
    axes = [4, 6, 6]
    positions = torch.tensor([[0.0, 0, 0], [3, 1, 2], [5, 2.5, 7], [8, 3.5, 9]])
    q, k = torch.randn(2, 1, 1, 16, generator=gen(0)).unbind(0)

    def rotated(layout, pos):
        cos, sin = rope_cos_sin(pos, axes, layout=layout)
        return apply_rotary_emb(q.expand(1, 1, len(pos), 16), cos, sin), apply_rotary_emb(
            k.expand(1, 1, len(pos), 16), cos, sin
        )

    # a rotation keeps norms and makes q.k depend only on the position difference
    q_rot, k_rot = rotated("half_split", positions)
    torch.testing.assert_close(q_rot.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 4), atol=1e-5, rtol=0)
    shifted_q, shifted_k = rotated("half_split", positions + torch.tensor([2.0, -1.0, 4.0]))
    dot = (q_rot[..., 1, :] * k_rot[..., 2, :]).sum()
    torch.testing.assert_close(dot, (shifted_q[..., 1, :] * shifted_k[..., 2, :]).sum(), atol=1e-5, rtol=0)
    # the released layout is not a rotation (norms change): that is why the switch exists
    q_old, _ = rotated("interleaved", positions)
    assert (q_old.norm(dim=-1) - q.norm(dim=-1)).abs().max() > 1e-2
    with pytest.raises(ValueError, match="layout"):
        rope_cos_sin(positions, axes, layout="flux")


def test_sincos_2d_embedding_values():
    emb = sincos_2d_embedding(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0, 5.0]), 8)
    assert emb.shape == (6, 8)
    # token (row 1, col 2) = rows 2.0, cols 5.0; frequencies 1 and 1/100 per axis
    expected = torch.tensor(
        [
            math.sin(2.0),
            math.sin(0.02),
            math.cos(2.0),
            math.cos(0.02),
            math.sin(5.0),
            math.sin(0.05),
            math.cos(5.0),
            math.cos(0.05),
        ]
    )
    torch.testing.assert_close(emb[5], expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_embedding(torch.zeros(1), torch.zeros(1), 6)
