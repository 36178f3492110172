"""BinaryDiT: forward, text routing and padding, precomputed text keys/values, timesteps, initialisation and input
checks. Save/load, gradient checkpointing, reduced precision and the paper-size preset are in
test_model_contract.py."""

import pytest
import torch
from model_helpers import LEFT_PADDED_MASK, make_bits, make_text, tiny_dit

from diffusers_bit import BinaryDiT, TextKV
from diffusers_bit.presets import load_preset_config


@torch.no_grad()
def test_dit_reads_the_routed_text_layers():
    model = tiny_dit(text_num_layers=4)
    assert model.text_layer_map == [1, 3]
    bits, text = make_bits(), make_text(layers=4)
    ref = model(bits, 0.5, text).sample
    for layer in range(4):
        perturbed = list(text)
        perturbed[layer] = text[layer] + 1.0
        out = model(bits, 0.5, perturbed).sample
        if layer in (1, 3):
            assert (out - ref).abs().max() > 1e-3, layer
        else:
            torch.testing.assert_close(out, ref, atol=0, rtol=0, msg=f"layer {layer} should be unused")


@torch.no_grad()
def test_dit_forward_shape_and_text_kv_path():
    model = tiny_dit()
    bits, text = make_bits(3), make_text(3)
    out = model(bits, torch.tensor([1.0, 0.5, 0.1]), text, LEFT_PADDED_MASK)
    assert out.sample.shape == (3, 16, 16) and out.sample.dtype == torch.float32
    assert torch.isfinite(out.sample).all()
    text_kv = model.prepare_text_kv(text, LEFT_PADDED_MASK)
    assert isinstance(text_kv, TextKV) and len(text_kv.keys) == 2
    assert text_kv.keys[0].shape == (3, 2, 5, 32) and text_kv.batch_size == 3 and text_kv.length == 5
    out_kv = model(bits, torch.tensor([1.0, 0.5, 0.1]), text_kv=text_kv).sample
    torch.testing.assert_close(out_kv, out.sample, atol=1e-6, rtol=0)
    # stacked (L, B, T, C) features
    out_stacked = model(bits, torch.tensor([1.0, 0.5, 0.1]), torch.stack(text), LEFT_PADDED_MASK).sample
    torch.testing.assert_close(out_stacked, out.sample, atol=1e-6, rtol=0)
    # repeat_interleave of text_kv == repeating the prompts
    rep = text_kv.repeat_interleave(2)
    out_rep = model(bits.repeat_interleave(2, 0), 0.3, text_kv=rep).sample
    ref_rep = model(
        bits.repeat_interleave(2, 0),
        0.3,
        [t.repeat_interleave(2, 0) for t in text],
        LEFT_PADDED_MASK.repeat_interleave(2, 0),
    ).sample
    torch.testing.assert_close(out_rep, ref_rep, atol=1e-6, rtol=0)


@torch.no_grad()
def test_dit_padded_text_tokens_have_no_influence():
    model = tiny_dit()
    bits, text = make_bits(3), make_text(3)
    ref = model(bits, 0.5, text, LEFT_PADDED_MASK).sample
    # change the features at padded positions (row 0: positions 0-1, row 2: positions 0-2) in every layer
    changed = [t.clone() for t in text]
    for t in changed:
        t[0, :2] = torch.randn(2, 32) * 10
        t[2, :3] = torch.randn(3, 32) * 10
    torch.testing.assert_close(model(bits, 0.5, changed, LEFT_PADDED_MASK).sample, ref, atol=1e-6, rtol=0)
    # ... whereas changing a real token changes that row only
    changed = [t.clone() for t in text]
    changed[0][0, 3] += 3.0
    out = model(bits, 0.5, changed, LEFT_PADDED_MASK).sample
    assert (out[0] - ref[0]).abs().max() > 1e-3
    torch.testing.assert_close(out[1:], ref[1:], atol=1e-6, rtol=0)
    # and the mask matters: without it the padded features are read
    assert (model(bits, 0.5, text).sample[0] - ref[0]).abs().max() > 1e-3
    # a mask of ones is the same as no mask
    torch.testing.assert_close(
        model(bits, 0.5, text, torch.ones(3, 5)).sample, model(bits, 0.5, text).sample, atol=1e-6, rtol=0
    )


@torch.no_grad()
def test_dit_fully_padded_prompt_row():
    model = tiny_dit()
    bits, text = make_bits(2), make_text(2)
    mask = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    out = model(bits, 0.5, text, mask).sample
    assert torch.isfinite(out).all()
    other = make_text(2, seed=9)
    out_other = model(bits, 0.5, other, mask).sample
    torch.testing.assert_close(out_other[0], out[0], atol=1e-6, rtol=0)  # row 0 ignores its text entirely
    assert (out_other[1] - out[1]).abs().max() > 1e-3


def test_nan_in_padded_text_positions_does_not_leak():
    dit = tiny_dit()
    feats = [torch.randn(2, 5, 32) for _ in range(2)]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    poisoned = [f.clone() for f in feats]
    for f in poisoned:
        f[0, :2] = float("nan")
    bits = torch.randint(0, 2, (2, 16, 16)).float()
    with torch.no_grad():
        clean = dit(bits, 0.5, feats, mask).sample
        raw = dit(bits, 0.5, poisoned, mask).sample
        cached = dit(bits, 0.5, text_kv=dit.prepare_text_kv(poisoned, mask)).sample
    assert torch.isfinite(raw).all() and torch.isfinite(cached).all()
    torch.testing.assert_close(raw, clean)
    torch.testing.assert_close(cached, clean)


@torch.no_grad()
def test_dit_timestep_forms():
    model = tiny_dit()
    bits, text = make_bits(3), make_text(3)
    as_float = model(bits, 0.3, text).sample
    as_tensor = model(bits, torch.full((3,), 0.3), text).sample
    as_scalar = model(bits, torch.tensor(0.3), text).sample
    torch.testing.assert_close(as_tensor, as_float, atol=1e-6, rtol=0)
    torch.testing.assert_close(as_scalar, as_float, atol=1e-6, rtol=0)
    assert (model(bits, 0.9, text).sample - as_float).abs().max() > 1e-3  # the time matters
    # per-row times: row b is the same as running it alone
    times = torch.tensor([1.0, 0.5, 0.05])
    per_row = model(bits, times, text).sample
    for b in range(3):
        alone = model(bits[b : b + 1], float(times[b]), [t[b : b + 1] for t in text]).sample
        torch.testing.assert_close(per_row[b : b + 1], alone, atol=1e-5, rtol=0)
    (tup,) = model(bits, 0.3, text, return_dict=False)
    torch.testing.assert_close(tup, as_float, atol=0, rtol=0)


def test_dit_timestep_must_match_the_batch():
    model = BinaryDiT.from_config(load_preset_config("tiny", "transformer")).eval()
    bits = torch.zeros(2, 16, 16)
    feats = [torch.randn(2, 3, 32) for _ in range(2)]
    with pytest.raises(ValueError, match="`timestep`"):
        model(bits, torch.tensor([0.1, 0.2, 0.3]), feats)


def test_dit_zero_init_modulation_starts_every_block_as_the_identity():
    text = make_text(2)
    bits = make_bits(2)
    authors = tiny_dit()
    zero = tiny_dit(zero_init_modulation=True)
    assert authors.config.zero_init_modulation is False
    with torch.no_grad():
        assert authors(bits, 0.5, encoder_hidden_states=text).sample.abs().max() > 0.1  # Xavier everywhere
        out = zero(bits, 0.5, encoder_hidden_states=text).sample
        assert torch.equal(out, torch.zeros_like(out))  # flip logit 0: loss ln 2
        hidden = zero.x_embedder(bits)
        temb = zero.time_embed(torch.full((2, 1), 0.5))
        block = zero.transformer_blocks[0]
        torch.testing.assert_close(block(hidden, temb, text[0], None), hidden)
    # only the initial weights differ: loading weights gives the same model either way
    zero.load_state_dict(authors.state_dict())
    torch.testing.assert_close(
        zero(bits, 0.5, encoder_hidden_states=text).sample, authors(bits, 0.5, encoder_hidden_states=text).sample
    )


def _dit_call(**changes):
    bits, text, mask = make_bits(2), make_text(2), torch.ones(2, 5)
    kwargs = {"hidden_states": bits, "timestep": 0.5, "encoder_hidden_states": text, "encoder_attention_mask": mask}
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_states": make_bits(2, tokens=15)}, r"`hidden_states` must hold exactly 16 tokens"),
        ({"hidden_states": make_bits(2, tokens=17)}, r"`hidden_states` must hold exactly 16 tokens"),
        ({"hidden_states": make_bits(2, channels=8)}, r"`hidden_states` must have shape \(batch, tokens, 16\)"),
        ({"hidden_states": torch.zeros(2, 256)}, r"`hidden_states` must have shape"),
        ({"encoder_hidden_states": make_text(2, layers=1)}, r"`encoder_hidden_states` must hold one hidden state per"),
        ({"encoder_hidden_states": make_text(2, layers=3)}, r"`encoder_hidden_states` must hold one hidden state per"),
        ({"encoder_hidden_states": make_text(2, width=24)}, r"`encoder_hidden_states` must have shape"),
        ({"encoder_attention_mask": torch.ones(2, 6)}, r"`encoder_attention_mask` must have shape"),
        ({"encoder_attention_mask": torch.ones(1, 5)}, r"`encoder_attention_mask` must have shape"),
        ({"encoder_attention_mask": torch.ones(10)}, r"`encoder_attention_mask` must have shape"),
        ({"encoder_hidden_states": make_text(3)}, r"`encoder_hidden_states` has batch 3"),
        ({"encoder_hidden_states": None}, r"`encoder_hidden_states` is required"),
    ],
)
def test_dit_rejects_bad_input(changes, match):
    kwargs = _dit_call(**changes)
    if changes.get("encoder_hidden_states") is not None and "encoder_attention_mask" not in changes:
        kwargs["encoder_attention_mask"] = None
    with pytest.raises(ValueError, match=match):
        tiny_dit()(**kwargs)


def test_dit_rejects_text_kv_batch_mismatch():
    model = tiny_dit()
    text_kv = model.prepare_text_kv(make_text(3))
    with pytest.raises(ValueError, match=r"`text_kv` has batch 3"):
        model(make_bits(2), 0.5, text_kv=text_kv)
    with pytest.raises(ValueError, match=r"`encoder_hidden_states` must hold one hidden state per"):
        model.prepare_text_kv(make_text(3, layers=1))


@pytest.mark.parametrize("bad_layer", [make_text(2, layers=1, width=24)[0], make_text(3, layers=1)[0]])
def test_dit_rejects_bad_non_first_text_layer(bad_layer):
    text = make_text(2)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        tiny_dit()(make_bits(2), 0.5, [text[0], bad_layer])
