"""BinaryARTransformer: forward shapes, causality, the KV cache and input checks. Save/load, gradient checkpointing,
reduced precision and the paper-size preset are in test_model_contract.py."""

import copy

import pytest
import torch
from model_helpers import LEFT_PADDED_MASK, make_bits, make_text, tiny_ar


@torch.no_grad()
def test_ar_forward_shapes():
    model = tiny_ar()
    text = make_text(3)
    assert model(make_bits(3), text, LEFT_PADDED_MASK).sample.shape == (3, 17, 16)
    assert model(make_bits(3, tokens=5), text).sample.shape == (3, 6, 16)
    assert model(None, text).sample.shape == (3, 1, 16)  # split token alone
    assert model(None, text_kv=model.prepare_text_kv(text), batch_size=3).sample.shape == (3, 1, 16)


@torch.no_grad()
def test_ar_is_causal():
    model = tiny_ar()
    bits, text = make_bits(2), make_text(2)
    mask = LEFT_PADDED_MASK[:2]
    ref = model(bits, text, mask).sample  # position p (0 = split) sees the split token and tokens 1..p
    for j in (0, 5, 15):  # hidden_states[:, j] is token j + 1, at sequence position j + 1
        changed = bits.clone()
        changed[:, j] = 1 - changed[:, j]
        out = model(changed, text, mask).sample
        torch.testing.assert_close(out[:, : j + 1], ref[:, : j + 1], atol=1e-6, rtol=0, msg=f"token {j + 1}")
        assert (out[:, j + 1] - ref[:, j + 1]).abs().max() > 1e-4
    # a prefix pass equals the start of the full pass
    torch.testing.assert_close(model(bits[:, :6], text, mask).sample, ref[:, :7], atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("mask", [None, LEFT_PADDED_MASK])
def test_ar_kv_cache_matches_full_forward(mask):
    model = tiny_ar()
    bits, text = make_bits(3), make_text(3)
    full = model(bits, text, mask).sample
    text_kv = model.prepare_text_kv(text, mask)
    cache = model.allocate_kv_cache(3)
    assert cache.length == 0
    steps = [model(None, text_kv=text_kv, kv_cache=cache).sample]
    assert cache.length == 1
    for i in range(16):
        steps.append(model(bits[:, i : i + 1], text_kv=text_kv, kv_cache=cache).sample)
        assert cache.length == i + 2
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    # chunks of several tokens, raw text features instead of text_kv
    cache = model.allocate_kv_cache(3)
    chunks = [model(bits[:, :4], text, mask, kv_cache=cache).sample]
    chunks.append(model(bits[:, 4:9], text, mask, kv_cache=cache).sample)
    chunks.append(model(bits[:, 9:], text, mask, kv_cache=cache).sample)
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=0)


def test_ar_rejects_bad_input():
    model = tiny_ar()
    text = make_text(2)
    with pytest.raises(ValueError, match=r"`hidden_states` must hold at most 16 tokens, got 17"):
        model(make_bits(2, tokens=17), text)
    with pytest.raises(ValueError, match=r"`hidden_states` must have shape \(batch, tokens, 16\)"):
        model(make_bits(2, channels=15), text)
    cache = model.allocate_kv_cache(2)
    with torch.no_grad():
        model(make_bits(2, tokens=10), text, kv_cache=cache)
    assert cache.length == 11
    with pytest.raises(ValueError, match=r"at most 6 tokens, got 7"):
        model(make_bits(2, tokens=7), text, kv_cache=cache)
    with pytest.raises(ValueError, match=r"`hidden_states` is required"):
        model(None, text, kv_cache=cache)
    assert cache.length == 11  # failed calls do not touch the cache
    with pytest.raises(ValueError, match="give `hidden_states`"):
        model()
    with pytest.raises(ValueError, match=r"`text_kv` has batch 3"):
        model(make_bits(2), text_kv=model.prepare_text_kv(make_text(3)))


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ar_kv_cache_in_reduced_precision(dtype):
    # the model's forward in reduced precision is in test_model_contract.py
    bits, text, mask = make_bits(3), make_text(3), LEFT_PADDED_MASK
    ar = copy.deepcopy(tiny_ar()).to(dtype)
    cache = ar.allocate_kv_cache(3)
    assert cache.layers[0].keys.dtype == dtype
    out = ar(bits.to(dtype), [t.to(dtype) for t in text], mask, kv_cache=cache).sample
    assert torch.isfinite(out).all() and out.shape == (3, 17, 16)
