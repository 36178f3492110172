"""Text conditioning shared by the two generators: the text-layer routing rule and each block's own text projection
([`TextProjectionMixin.text_kv`]), which `prepare_text_kv` and the forward pass with raw text features both use."""

import pytest
import torch
from model_helpers import LEFT_PADDED_MASK, make_bits, make_text, tiny_ar, tiny_dit

from diffusers_bit import text_layer_indices

GENERATORS = {"dit": tiny_dit, "ar": tiny_ar}


def test_text_layer_indices_rule():
    assert text_layer_indices(16, 16) == list(range(16))
    assert text_layer_indices(2, 2) == [0, 1]
    assert text_layer_indices(8, 16) == [1, 3, 5, 7, 9, 11, 13, 15]
    many = text_layer_indices(32, 16)
    assert many == [i // 2 for i in range(32)]
    assert many[:6] == [0, 0, 1, 1, 2, 2]
    assert text_layer_indices(3, 16) == [4, 10, 15]  # round(16/3)=5 -> 4, round(32/3)=11 -> 10, 16 -> 15
    assert text_layer_indices(1, 5) == [4]
    assert text_layer_indices(2, 4) == [1, 3]
    for blocks, layers in [(1, 1), (3, 16), (5, 3), (7, 24), (24, 7), (16, 22)]:
        idx = text_layer_indices(blocks, layers)
        assert len(idx) == blocks
        assert idx[-1] == layers - 1  # the last block reads the last layer
        assert idx == sorted(idx) and all(0 <= i < layers for i in idx)


@pytest.mark.parametrize("blocks, layers", [(0, 16), (16, 0), (-1, 4), (4, -2)])
def test_text_layer_indices_rejects_bad_args(blocks, layers):
    with pytest.raises(ValueError):
        text_layer_indices(blocks, layers)


@torch.no_grad()
@pytest.mark.parametrize("name", GENERATORS)
def test_prepare_text_kv_is_every_blocks_own_text_kv(name):
    model = GENERATORS[name](text_num_layers=4)
    text = make_text(3, layers=4)
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    text_kv = model.prepare_text_kv(text)
    assert text_kv.mask is None and len(text_kv.keys) == len(model.transformer_blocks)
    for index, (block, layer) in enumerate(zip(model.transformer_blocks, model.text_layer_map)):
        keys, values = block.text_kv(text[layer])
        assert keys.shape == values.shape == (3, heads, 5, head_dim)
        assert torch.equal(text_kv.keys[index], keys) and torch.equal(text_kv.values[index], values)
        # features in another dtype are cast to the block's
        assert torch.equal(block.text_kv(text[layer].double())[0], keys)
    # with padding: the padded features are zeroed before the projection, and the mask is kept
    padded = model.prepare_text_kv(text, LEFT_PADDED_MASK)
    assert torch.equal(padded.mask, LEFT_PADDED_MASK.bool())
    zeroed = text[model.text_layer_map[0]] * LEFT_PADDED_MASK[:, :, None]
    assert torch.equal(padded.keys[0], model.transformer_blocks[0].text_kv(zeroed)[0])


@torch.no_grad()
@pytest.mark.parametrize("name", GENERATORS)
def test_text_projection_goes_through_the_blocks_method(name, monkeypatch):
    model = GENERATORS[name]()
    text, bits = make_text(2), make_bits(2)
    calls = []
    for index, block in enumerate(model.transformer_blocks):

        def text_kv(features, block=block, index=index):
            calls.append(index)
            return type(block).text_kv(block, features)

        monkeypatch.setattr(block, "text_kv", text_kv)
    model.prepare_text_kv(text)
    assert calls == [0, 1]
    calls.clear()
    if name == "dit":
        model(bits, 0.5, text)
    else:
        model(bits, text)
    assert calls == [0, 1]  # raw features: each block projects its own text inside its forward


@torch.no_grad()
@pytest.mark.parametrize("name", GENERATORS)
def test_identical_rows_are_projected_once(name, monkeypatch):
    """The unconditional rows of a guided batch (one empty prompt per image) are projected once and shared: the
    result equals projecting every row (within float round-off: a matrix product of fewer rows may round
    differently), and the blocks see only the distinct rows. A row differing only in its mask
    or in one layer is distinct."""
    model = GENERATORS[name](text_num_layers=4)
    text = torch.stack(make_text(2, layers=4))  # (L, B, T, C)
    batch = torch.cat([text, text[:, :1], text[:, :1], text[:, 1:]], dim=1)  # rows 0, 1, 0, 0, 1
    mask = torch.ones(5, 5)
    seen = []
    block = model.transformer_blocks[0]
    monkeypatch.setattr(
        block, "text_kv", lambda f, block=block: seen.append(f.shape[0]) or type(block).text_kv(block, f)
    )
    shared = model.prepare_text_kv(batch, mask)
    assert seen == [2]
    for index, (b, layer) in enumerate(zip(model.transformer_blocks, model.text_layer_map)):
        keys, values = type(b).text_kv(b, batch[layer])
        torch.testing.assert_close(shared.keys[index], keys, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(shared.values[index], values, rtol=1e-6, atol=1e-6)
        assert torch.equal(shared.keys[index][2], shared.keys[index][0])  # the twins share one projection

    seen.clear()
    mask[3, 0] = 0  # row 3: same features, padded differently
    other = batch.clone()
    other[1, 4, 0, 0] += 1  # row 4: differs in a middle layer only (the checksum of the first and last agrees)
    padded = model.prepare_text_kv(other, mask)
    assert seen == [4]
    zeroed = other[model.text_layer_map[0]] * mask[:, :, None]
    torch.testing.assert_close(padded.keys[0], type(block).text_kv(block, zeroed)[0], rtol=1e-6, atol=1e-6)
    seen.clear()
    model.prepare_text_kv(make_text(3, layers=4))  # all distinct: the batch as it is
    assert seen == [3]
