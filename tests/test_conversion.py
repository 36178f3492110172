"""The converter of the authors' checkpoints: key mapping and config inference at paper size (on the meta device),
refusal of unsafe pickles, error reporting, and the release-folder conversion."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from utils import PARITY

from diffusers_bit import BernoulliScheduler, BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer, conversion
from diffusers_bit.conversion import (
    check_state_dict,
    convert_checkpoint_dir,
    convert_component,
    convert_state_dict,
    infer_config,
    load_official_state_dict,
)
from diffusers_bit.presets import load_preset_config

LAYOUTS = PARITY / "official_paper_layouts.json"
CLASSES = {"image_tokenizer": BinaryLatentTokenizer, "transformer": BinaryDiT, "ar_transformer": BinaryARTransformer}
LAYOUT_NAMES = {"image_tokenizer": "bae", "transformer": "diffusion", "ar_transformer": "ar"}
TOKENIZER_OVERRIDES = {
    "encoder_downsample_blocks": [1],
    "decoder_upsample_blocks": [1],
    "axes_dims_rope": [4, 14, 14],
    "rope_reference_size": 1024,
    "sample_sizes": [512, 768, 1024],
}


def _public(config) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def _paper_state_dict(component: str) -> dict:
    layout = json.loads(LAYOUTS.read_text())[LAYOUT_NAMES[component]]
    return {key: torch.empty(shape, device="meta") for key, shape in layout.items()}


def _diffusion_module() -> dict:
    return dict(torch.load(PARITY / "diffusion.pt", map_location="cpu", weights_only=True)["module"])


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


# ----------------------------------------------------------------------------------------------------------------------
# Paper-size layouts on the meta device
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("component", ["image_tokenizer", "transformer", "ar_transformer"])
def test_paper_layout_maps_onto_paper_preset(component):
    official = _paper_state_dict(component)
    preset = _public(load_preset_config("instella-t2i", component))
    base = dict(preset)
    if component != "image_tokenizer":
        base["text_num_layers"] = 1  # inferred from the checkpoint by convert_component; here: not read from shapes
    config = infer_config(official, component, base)
    if component != "image_tokenizer":
        assert config["text_num_layers"] == 1  # a setting no tensor reveals is left as given
        config["text_num_layers"] = 16
    assert config == preset
    converted = convert_state_dict(official, component)
    with torch.device("meta"):
        model = CLASSES[component].from_config(config)
    check_state_dict(model, converted, component)  # raises on any mismatch
    assert set(converted) == set(model.state_dict())
    time_keys = [k for k in official if k.startswith("time_embed.")]
    if component == "ar_transformer":
        # the authors' AR builds a time embedding it never calls: dropped on purpose
        assert len(time_keys) == 4
        assert sum(official[k].numel() for k in time_keys) == 4_200_448
        assert len(converted) == len(official) - 4
        assert not any(k.startswith("time_embed.") for k in converted)
    else:
        assert len(converted) == len(official)


@pytest.mark.parametrize("component", ["image_tokenizer", "transformer", "ar_transformer"])
def test_convert_component_accepts_meta_state_dict(component):
    model = convert_component(_paper_state_dict(component), component)
    assert isinstance(model, CLASSES[component]) and not model.training
    assert _public(model.config) == _public(load_preset_config("instella-t2i", component))
    assert all(p.device.type == "meta" for p in model.parameters())


def _reshaped(state_dict, drop_blocks_from, prefixes, shapes):
    """Copy of a meta state dict without blocks `>= drop_blocks_from` under `prefixes`, with `shapes` ({regex:
    shape}) applied to the matching keys."""
    import re

    out = {}
    for key, value in state_dict.items():
        m = re.match(r"^(.*transformer_blocks)\.(\d+)\.", key)
        if m and m.group(1) in prefixes and int(m.group(2)) >= drop_blocks_from:
            continue
        shape = next((s for pattern, s in shapes.items() if re.search(pattern, key)), value.shape)
        out[key] = torch.empty(shape, device="meta")
    return out


def test_infer_config_reads_sizes_from_shapes():
    # DiT: 4 blocks, head dim 64 (32 heads), MLP ratio 2, 64 tokens, 1024-wide text, 32 bits per token
    dit = _reshaped(
        _paper_state_dict("transformer"),
        4,
        ("transformer_blocks",),
        {
            r"attn\.norm_[qk]\.weight$": (64,),
            r"ff\.net\.0\.proj\.weight$": (4096, 2048),
            r"ff\.net\.0\.proj\.bias$": (4096,),
            r"ff\.net\.2\.weight$": (2048, 4096),
            r"pos_emb$": (1, 64, 2048),
            r"proj_cond\.weight$": (2048, 1024),
            r"^x_embedder\.weight$": (2048, 32),
            r"^proj_out\.weight$": (32, 2048),
            r"^proj_out\.bias$": (32,),
        },
    )
    model = convert_component(dit, "transformer")
    expected = {
        "num_layers": 4,
        "text_num_layers": 4,
        "attention_head_dim": 64,
        "num_attention_heads": 32,
        "mlp_ratio": 2.0,
        "num_tokens": 64,
        "text_embed_dim": 1024,
        "in_channels": 32,
    }
    assert {k: model.config[k] for k in expected} == expected
    # AR: the position table has one more row (the split token)
    ar = _reshaped(_paper_state_dict("ar_transformer"), 16, (), {r"pos_emb$": (1, 65, 2048)})
    assert convert_component(ar, "ar_transformer").config.num_tokens == 64
    # tokenizer: 6 encoder blocks, MLP ratio 2 in both towers, 64 latent tokens of 32 bits
    tok = _reshaped(
        _paper_state_dict("image_tokenizer"),
        6,
        ("encoder.transformer_blocks",),
        {
            r"^encoder.*mlp\.(gate|up)_proj\.weight$": (1536, 768),
            r"^encoder.*mlp\.down_proj\.weight$": (768, 1536),
            r"^decoder.*mlp\.(gate|up)_proj\.weight$": (2048, 1024),
            r"^decoder.*mlp\.down_proj\.weight$": (1024, 2048),
            r"^encoder\.latent_tokens$": (1, 64, 768),
            r"^quantizer\.proj\.0\.weight$": (32, 768),
            r"^quantizer\.proj\.0\.bias$": (32,),
            r"^quantizer\.embed$": (32, 768),
        },
    )
    with pytest.raises(ValueError, match="encoder_downsample_blocks"):  # block 7 no longer exists
        convert_component(tok, "image_tokenizer")
    model = convert_component(tok, "image_tokenizer", config_overrides={"encoder_downsample_blocks": [3]})
    expected = {
        "encoder_layers": 6,
        "decoder_layers": 16,
        "mlp_ratio": 2.0,
        "num_latent_tokens": 64,
        "bits_per_token": 32,
        "encoder_downsample_blocks": [3],
    }
    assert {k: model.config[k] for k in expected} == expected


def test_key_renames():
    tok = convert_state_dict(_paper_state_dict("image_tokenizer"), "image_tokenizer")
    for key in (
        "encoder.patch_embed.weight",
        "encoder.blocks.0.ff.gate_proj.weight",
        "encoder.blocks.11.attn.to_q.weight",
        "encoder.blocks.3.attn.to_out.weight",
        "encoder.blocks.0.norm1.weight",
        "encoder.blocks.0.norm2.weight",
        "encoder.downsamplers.0.conv.weight",
        "decoder.upsamplers.0.conv.bias",
        "decoder.norm_in.weight",
        "decoder.proj_in.bias",
        "decoder.mask_token",
        "pixel_head.proj.weight",
        "quantizer.proj.weight",
        "quantizer.embed",
        "decoder.blocks.15.ff.down_proj.weight",
    ):
        assert key in tok, key
    assert tok["decoder.mask_token"].shape == (1, 1, 1024)
    dit = convert_state_dict(_paper_state_dict("transformer"), "transformer")
    for key in (
        "transformer_blocks.0.pos_embed",
        "transformer_blocks.5.context_embedder.weight",
        "transformer_blocks.15.attn.to_k.weight",
        "transformer_blocks.0.ff.net.0.proj.weight",
        "time_embed.linear_1.weight",
        "norm_out.linear.weight",
    ):
        assert key in dit, key
    assert dit["transformer_blocks.0.pos_embed"].shape == (1, 128, 2048)
    ar = convert_state_dict(_paper_state_dict("ar_transformer"), "ar_transformer")
    for key in (
        "split_token",
        "transformer_blocks.2.ff.net.2.weight",
        "transformer_blocks.2.norm1.weight",
        "transformer_blocks.2.norm2.weight",
        "transformer_blocks.0.pos_embed",
    ):
        assert key in ar, key
    assert ar["transformer_blocks.0.pos_embed"].shape == (1, 129, 2048)


def test_tokenizer_repa_head_is_dropped():
    official = _paper_state_dict("image_tokenizer")
    official["decoder.repa_proj.0.weight"] = torch.empty(2048, 1024, device="meta")
    official["decoder.repa_proj.2.bias"] = torch.empty(768, device="meta")
    converted = convert_state_dict(official, "image_tokenizer")
    assert not any("repa" in k for k in converted)
    convert_component(official, "image_tokenizer")  # no unexpected keys


# ----------------------------------------------------------------------------------------------------------------------
# Unsafe and malformed files
# ----------------------------------------------------------------------------------------------------------------------

TRAP_CALLS = []


def _trap(tag):
    TRAP_CALLS.append(tag)
    return tag


class _Payload:
    """Unpickling this runs `_trap`: stands for arbitrary code in a malicious checkpoint."""

    def __reduce__(self):
        return (_trap, ("payload ran",))


@pytest.fixture
def unsafe_checkpoint(tmp_path):
    TRAP_CALLS.clear()
    path = tmp_path / "diffusion.pt"
    torch.save({"module": _diffusion_module(), "extra": _Payload()}, path)
    yield path
    TRAP_CALLS.clear()


def test_unsafe_pickle_is_refused(unsafe_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"refusing to load .*unpickling"):
        load_official_state_dict(unsafe_checkpoint)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="refusing"):
        convert_component(unsafe_checkpoint, "transformer", output_dir=out)
    assert TRAP_CALLS == []  # the payload never ran
    assert not out.exists()
    # the trap is real: unrestricted unpickling does run it
    torch.load(unsafe_checkpoint, weights_only=False)
    assert TRAP_CALLS == ["payload ran"]


def test_official_files_are_read_with_weights_only(monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state_dict = load_official_state_dict(PARITY / "ar.pt")
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert "split_token" in state_dict and all(isinstance(v, torch.Tensor) for v in state_dict.values())
    convert_component(PARITY / "diffusion.pt", "transformer")
    assert len(calls) == 2 and calls[-1].get("weights_only") is True


@pytest.mark.parametrize(
    "payload",
    [
        {"module": [torch.zeros(2)]},
        {"module": {"x_embedder.weight": torch.zeros(2), "step": 3}},
        {"module": {"x_embedder.weight": torch.zeros(2), "nested": {"a": torch.zeros(1)}}},
        {"module": "weights"},
        [torch.zeros(2)],
        torch.zeros(2),
        {"x_embedder.weight": torch.zeros(2), "global_steps": 10},
    ],
)
def test_file_without_state_dict_is_rejected(tmp_path, payload):
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        load_official_state_dict(path)
    with pytest.raises(ValueError, match="holds no state dict"):
        convert_component(path, "transformer")


def test_bare_state_dict_file_and_missing_file(tmp_path):
    module = _diffusion_module()
    torch.save(module, tmp_path / "bare.pt")
    loaded = load_official_state_dict(tmp_path / "bare.pt")
    assert loaded.keys() == module.keys()
    assert all(torch.equal(loaded[k], module[k]) for k in module)
    with pytest.raises(ValueError, match="does not exist"):
        load_official_state_dict(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="does not exist"):
        convert_component(tmp_path / "nope.pt", "transformer")


def test_empty_or_foreign_state_dict_is_rejected():
    with pytest.raises(ValueError, match="x_embedder.weight"):
        convert_component({}, "transformer")
    with pytest.raises(ValueError, match="encoder.patch_embedder.weight"):
        convert_component(_diffusion_module(), "image_tokenizer")
    with pytest.raises(ValueError, match="component"):
        convert_component(_diffusion_module(), "vae")


def test_legacy_format_checkpoint_is_readable(tmp_path):
    module = _diffusion_module()
    torch.save({"module": module}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert torch.load(tmp_path / "legacy.pt", weights_only=True)["module"].keys() == module.keys()  # a safe file
    loaded = load_official_state_dict(tmp_path / "legacy.pt")
    assert loaded.keys() == module.keys()


# ----------------------------------------------------------------------------------------------------------------------
# Key and shape mismatches
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    module = _diffusion_module()
    del module["transformer_blocks.1.attn.q_proj.weight"]
    module["transformer_blocks.1.attn.bogus_proj.weight"] = torch.zeros(64, 64)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        convert_component(module, "transformer", output_dir=out)
    message = str(err.value)
    assert "missing keys: transformer_blocks.1.attn.to_q.weight" in message
    assert "unexpected keys: transformer_blocks.1.attn.bogus_proj.weight" in message
    assert "BinaryDiT" in message
    assert not out.exists()
    # the same from a file
    torch.save({"module": module}, tmp_path / "diffusion.pt")
    with pytest.raises(ValueError, match=r"missing keys: .*to_q.*unexpected keys: .*bogus_proj"):
        convert_component(tmp_path / "diffusion.pt", "transformer", output_dir=out)
    assert not out.exists()


def test_shape_mismatch_is_reported(tmp_path):
    module = _diffusion_module()
    module["transformer_blocks.2.proj_cond.weight"] = torch.zeros(64, 25)
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine to write into, but nothing is written on failure
    with pytest.raises(
        ValueError,
        match=r"shape mismatches: transformer_blocks\.2\.context_embedder\.weight: "
        r"checkpoint \(64, 25\) vs model \(64, 24\)",
    ):
        convert_component(module, "transformer", output_dir=out)
    assert list(out.iterdir()) == []


def test_check_state_dict_passes_on_exact_match_and_lists_extra_tensors():
    model = convert_component(PARITY / "ar.pt", "ar_transformer")
    state_dict = dict(model.state_dict())
    check_state_dict(model, state_dict, "ar_transformer")
    state_dict["time_embed.linear_1.weight"] = torch.zeros(64, 1)
    with pytest.raises(ValueError, match=r"unexpected keys: time_embed\.linear_1\.weight"):
        check_state_dict(model, state_dict, "ar_transformer")


# ----------------------------------------------------------------------------------------------------------------------
# Single-component conversion
# ----------------------------------------------------------------------------------------------------------------------


def test_convert_component_writes_loadable_folder(tmp_path):
    out = tmp_path / "transformer"
    model = convert_component(PARITY / "diffusion.pt", "transformer", output_dir=out)
    assert (out / "config.json").is_file() and (out / conversion.WEIGHTS_NAME).is_file()
    module = _diffusion_module()
    weights = load_file(out / conversion.WEIGHTS_NAME)
    torch.testing.assert_close(
        weights["transformer_blocks.1.attn.to_q.weight"],
        module["transformer_blocks.1.attn.q_proj.weight"],
        atol=0,
        rtol=0,
    )
    loaded = BinaryDiT.from_pretrained(out)
    assert _public(loaded.config) == _public(model.config)
    assert loaded.config.text_num_layers == 3
    assert model.dtype == torch.bfloat16 and weights["x_embedder.weight"].dtype == torch.bfloat16  # checkpoint dtype
    for name, param in loaded.named_parameters():
        torch.testing.assert_close(param.detach().to(weights[name].dtype), weights[name], atol=0, rtol=0, msg=name)
    # refuses a non-empty folder unless asked, and the dtype option casts
    with pytest.raises(ValueError, match="output_dir"):
        convert_component(PARITY / "diffusion.pt", "transformer", output_dir=out)
    assert load_file(out / conversion.WEIGHTS_NAME)["x_embedder.weight"].dtype == torch.bfloat16
    convert_component(PARITY / "diffusion.pt", "transformer", output_dir=out, overwrite=True, dtype=torch.float32)
    assert load_file(out / conversion.WEIGHTS_NAME)["x_embedder.weight"].dtype == torch.float32


def test_unknown_override_key_is_rejected():
    with pytest.raises(ValueError, match="sample_size"):
        convert_component(
            PARITY / "bae" / "model.safetensors",
            "image_tokenizer",
            config_overrides={**TOKENIZER_OVERRIDES, "sample_size": [512]},
        )


# ----------------------------------------------------------------------------------------------------------------------
# Release-folder conversion
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def release_dir(tmp_path):
    src = tmp_path / "release"
    (src / "bae").mkdir(parents=True)
    shutil.copy(PARITY / "bae" / "model.safetensors", src / "bae" / "model.safetensors")
    shutil.copy(PARITY / "diffusion.pt", src / "diffusion.pt")
    shutil.copy(PARITY / "ar.pt", src / "ar.pt")
    return src


def test_convert_checkpoint_dir_writes_loadable_pipeline_folders(release_dir, tmp_path):
    out = tmp_path / "converted"
    written = convert_checkpoint_dir(release_dir, out, config_overrides={"image_tokenizer": TOKENIZER_OVERRIDES})
    assert set(written) == {"image_tokenizer", "transformer", "ar_transformer", "scheduler"}
    for component, folder in written.items():
        assert folder == str(out / component)
    tok = BinaryLatentTokenizer.from_pretrained(out / "image_tokenizer")
    dit = BinaryDiT.from_pretrained(out / "transformer")
    ar = BinaryARTransformer.from_pretrained(out / "ar_transformer")
    scheduler = BernoulliScheduler.from_pretrained(out / "scheduler")
    assert list(tok.config.encoder_downsample_blocks) == [1] and list(tok.config.sample_sizes) == [512, 768, 1024]
    assert tok.config.encoder_layers == 3 and tok.config.num_latent_tokens == 8 and tok.config.bits_per_token == 16
    assert dit.config.num_layers == 3 and dit.config.num_tokens == 8 and dit.config.text_embed_dim == 24
    assert ar.config.num_tokens == 8 and ar.config.in_channels == 16
    assert _public(scheduler.config) == _public(load_preset_config("instella-t2i", "scheduler"))
    # the weights are the checkpoint's
    official = load_file(PARITY / "bae" / "model.safetensors")
    assert torch.equal(tok.decoder.mask_token.detach(), official["decoder.mask_tokens"])
    assert torch.equal(tok.pixel_head.proj.weight.detach(), official["to_pixel.weight"])
    ar_official = torch.load(PARITY / "ar.pt", weights_only=True)["module"]
    assert torch.equal(ar.split_token.detach(), ar_official["split_token"])
    # and the loaded generator reproduces the authors' module
    ref = load_file(PARITY / "dit_reference.safetensors")
    with torch.no_grad():
        out_dit = dit.float()(ref["bits"], ref["timestep"], [ref[f"text_{i}"] for i in range(3)], ref["text_mask"])
    torch.testing.assert_close(out_dit.sample, ref["output"], atol=1e-4, rtol=0)


def test_convert_checkpoint_dir_refuses_to_overwrite(release_dir, tmp_path):
    out = tmp_path / "converted"
    overrides = {"image_tokenizer": TOKENIZER_OVERRIDES}
    convert_checkpoint_dir(release_dir, out, config_overrides=overrides)
    before = _snapshot(out)
    assert len(before) >= 7
    with pytest.raises(ValueError, match="refusing to overwrite"):
        convert_checkpoint_dir(release_dir, out, config_overrides=overrides)
    assert _snapshot(out) == before
    for component in ("image_tokenizer", "transformer", "ar_transformer"):
        weights = load_file(out / component / conversion.WEIGHTS_NAME)
        assert all(v.dtype == torch.bfloat16 for v in weights.values()), component  # the checkpoints' dtype
    convert_checkpoint_dir(release_dir, out, config_overrides=overrides, overwrite=True, dtype=torch.float32)
    for component in ("image_tokenizer", "transformer", "ar_transformer"):
        weights = load_file(out / component / conversion.WEIGHTS_NAME)
        assert all(v.dtype == torch.float32 for v in weights.values()), component


def test_convert_checkpoint_dir_contradicting_override_writes_nothing(release_dir, tmp_path):
    out = tmp_path / "converted"
    overrides = {"image_tokenizer": TOKENIZER_OVERRIDES, "transformer": {"num_layers": 5}}
    with pytest.raises(ValueError, match=r"num_layers=5 contradicts the checkpoint, which implies 3"):
        convert_checkpoint_dir(release_dir, out, config_overrides=overrides)
    # the tokenizer converts fine, but nothing is written when any component fails
    assert not out.exists() or list(out.rglob("*")) == []
    # an override that agrees with the checkpoint is fine
    ok = {"image_tokenizer": TOKENIZER_OVERRIDES, "transformer": {"num_layers": 3}}
    assert "transformer" in convert_checkpoint_dir(release_dir, out, config_overrides=ok)


@pytest.mark.parametrize(
    "tokenizer_overrides",
    [
        {**TOKENIZER_OVERRIDES, "encoder_downsample_blocks": [0, 1]},
        {**TOKENIZER_OVERRIDES, "encoder_downsample_blocks": []},
    ],
)
def test_convert_checkpoint_dir_wrong_tokenizer_resampling(release_dir, tmp_path, tokenizer_overrides):
    out = tmp_path / "converted"
    with pytest.raises(ValueError, match=r"`encoder_downsample_blocks`"):
        convert_checkpoint_dir(release_dir, out, config_overrides={"image_tokenizer": tokenizer_overrides})
    assert not out.exists() or list(out.rglob("*")) == []


def test_convert_checkpoint_dir_paper_block_indices_name_the_setting(release_dir, tmp_path):
    # the paper preset downsamples after block 7, the 3-block fixture cannot: the error says which setting to pass
    overrides = {k: v for k, v in TOKENIZER_OVERRIDES.items() if k not in ("encoder_downsample_blocks",)}
    with pytest.raises(ValueError, match=r"`encoder_downsample_blocks` must index blocks 0..2, got \[7\]"):
        convert_checkpoint_dir(release_dir, tmp_path / "converted", config_overrides={"image_tokenizer": overrides})


def test_convert_checkpoint_dir_empty_or_partial(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"`checkpoint_dir`"):
        convert_checkpoint_dir(empty, tmp_path / "out")
    with pytest.raises(ValueError, match=r"`checkpoint_dir`"):
        convert_checkpoint_dir(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(PARITY / "diffusion.pt", partial / "diffusion.pt")
    written = convert_checkpoint_dir(partial, tmp_path / "out")
    assert set(written) == {"transformer", "scheduler"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scheduler", "transformer"]
