"""The attention of the three models goes through diffusers' attention dispatcher: `set_attention_backend` /
`reset_attention_backend` and the `attention_backend` context manager reach it, the native backend is what the models
always computed, fused QKV projections give the same outputs and save the unfused layout, and the repeated blocks
compile (dynamo full graphs here; inductor in a slow test)."""

import shutil

import pytest
import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, attention_backend
from model_helpers import LEFT_PADDED_MASK, make_bits, make_images, make_text, tiny_ar, tiny_dit, tiny_tokenizer
from safetensors.torch import load_file
from training_helpers import one_thread  # noqa: F401 (autouse: tiny models run fastest on one thread)

from diffusers_bit import BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer, build_pipeline
from diffusers_bit.models import attention as attention_module
from diffusers_bit.models.attention import KEY_LENGTH_ONLY_BACKENDS, Attention, BitAttnProcessor

BITS = make_bits(3)
TEXT = make_text(3)
TIMES = torch.tensor([1.0, 0.5, 0.1])
IMAGES = make_images(2, 64)
DECODE_BITS = make_bits(2, seed=4)
MATH = AttentionBackendName._NATIVE_MATH


def _run_dit(model):
    text_kv = model.prepare_text_kv(TEXT, LEFT_PADDED_MASK)
    return {
        "masked": model(BITS, TIMES, TEXT, LEFT_PADDED_MASK).sample,
        "unmasked": model(BITS, TIMES, TEXT).sample,
        "text_kv": model(BITS, TIMES, text_kv=text_kv).sample,
    }


def _run_ar(model):
    cache = model.allocate_kv_cache(3)
    steps = [model(None, TEXT, LEFT_PADDED_MASK, kv_cache=cache).sample]
    steps += [model(BITS[:, i : i + 1], TEXT, LEFT_PADDED_MASK, kv_cache=cache).sample for i in range(BITS.shape[1])]
    return {"full": model(BITS, TEXT, LEFT_PADDED_MASK).sample, "kv_cache": torch.cat(steps, 1)}


def _run_tokenizer(model):
    encoded = model.encode(IMAGES)
    return {"logits": encoded.logits, "images": model.decode(DECODE_BITS, 128, 128).sample}


# name: (tiny model factory, outputs, attention calls of one `outputs` run)
MODELS = {
    "dit": (tiny_dit, _run_dit, 3 * 2),  # three forwards of two blocks
    "ar": (tiny_ar, _run_ar, 18 * 2),  # split token + 16 cached tokens + one full forward, two blocks
    "tokenizer": (tiny_tokenizer, _run_tokenizer, 2 + 2),  # encoder and decoder blocks
}


@pytest.fixture(autouse=True)
def _restore_active_backend():
    """`set_attention_backend` changes diffusers' process-wide active backend: put it back after every test."""
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


def _outputs(name, model):
    with torch.no_grad():
        return MODELS[name][1](model)


def _attentions(model):
    return [m for m in model.modules() if isinstance(m, Attention)]


def _assert_all_equal(outputs, ref):
    assert outputs.keys() == ref.keys()
    for key in ref:
        assert torch.equal(outputs[key], ref[key]), key


def _assert_all_close(outputs, ref, atol=1e-5):
    for key in ref:
        torch.testing.assert_close(outputs[key], ref[key], atol=atol, rtol=1e-5, msg=key)


class DispatchSpy:
    """Wraps `dispatch_attention_fn` as the processor sees it; records each call's shapes, mask and backend."""

    def __init__(self, monkeypatch):
        self.calls = []
        original = attention_module.dispatch_attention_fn

        def spy(query, key, value, attn_mask=None, **kwargs):
            mask = None if attn_mask is None else attn_mask.shape
            self.calls.append(
                {
                    "query": query.shape,
                    "key": key.shape,
                    "value": value.shape,
                    "mask": mask,
                    "backend": kwargs["backend"],
                }
            )
            return original(query, key, value, attn_mask=attn_mask, **kwargs)

        monkeypatch.setattr(attention_module, "dispatch_attention_fn", spy)


class BackendSpy:
    """Counts the calls that reach one registered backend function."""

    def __init__(self, monkeypatch, backend):
        self.count = 0
        original = _AttentionBackendRegistry._backends[backend]

        def spy(**kwargs):
            self.count += 1
            return original(**kwargs)

        monkeypatch.setitem(_AttentionBackendRegistry._backends, backend, spy)


# ----------------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_attention_modules_are_diffusers_attention_modules(name):
    model = MODELS[name][0]()
    attentions = _attentions(model)
    assert attentions and all(isinstance(m, AttentionModuleMixin) for m in attentions)
    processors = model.attn_processors
    assert len(processors) == len(attentions)
    assert all(type(p) is BitAttnProcessor and p._attention_backend is None for p in processors.values())


@pytest.mark.parametrize("name", list(MODELS))
def test_attention_goes_through_the_dispatcher(name, monkeypatch):
    factory, _, expected_calls = MODELS[name]
    model = factory()
    ref = _outputs(name, model)
    spy = DispatchSpy(monkeypatch)
    _assert_all_equal(_outputs(name, model), ref)
    assert len(spy.calls) == expected_calls
    for call in spy.calls:
        batch, queries, heads, head_dim = call["query"]
        # (B, S, H, D), the layout the dispatcher takes
        assert (heads, head_dim) == (2, 32) and call["key"] == call["value"] and call["key"][2:] == (2, 32)
        assert call["mask"] is None or call["mask"][-2:] == (queries, call["key"][1])
        assert call["backend"] is None
    if name != "tokenizer":  # the generators pass their padding (and causal) mask
        assert any(call["mask"] is not None for call in spy.calls)


@pytest.mark.parametrize("name", list(MODELS))
def test_set_and_reset_attention_backend(name, monkeypatch):
    factory, _, expected_calls = MODELS[name]
    model = factory()
    ref = _outputs(name, model)
    math = BackendSpy(monkeypatch, MATH)
    model.set_attention_backend("_native_math")
    assert all(p._attention_backend == MATH for p in model.attn_processors.values())
    _assert_all_close(_outputs(name, model), ref)
    assert math.count == expected_calls  # every attention reached the chosen backend

    model.reset_attention_backend()
    assert all(p._attention_backend is None for p in model.attn_processors.values())
    assert _AttentionBackendRegistry._active_backend == AttentionBackendName.NATIVE  # not left on `_native_math`
    _assert_all_equal(_outputs(name, model), ref)  # native again, bit for bit
    assert math.count == expected_calls

    model.set_attention_backend("native")
    _assert_all_equal(_outputs(name, model), ref)


def test_unknown_backend_name_raises_diffusers_error():
    model = tiny_dit()
    with pytest.raises(ValueError, match="must be one of the following"):
        model.set_attention_backend("no_such_backend")
    assert all(p._attention_backend is None for p in model.attn_processors.values())


def test_attention_backend_context_manager_reaches_the_models(monkeypatch):
    model = tiny_dit()
    ref = _outputs("dit", model)
    math = BackendSpy(monkeypatch, MATH)
    with attention_backend("_native_math"):
        _assert_all_close(_outputs("dit", model), ref)
    assert math.count == MODELS["dit"][2]
    _assert_all_equal(_outputs("dit", model), ref)


@pytest.mark.parametrize("factory", [tiny_dit, tiny_ar])
def test_key_length_only_backends_refuse_a_mask(factory):
    assert {AttentionBackendName.FLASH_VARLEN, AttentionBackendName.SAGE_VARLEN} <= KEY_LENGTH_ONLY_BACKENDS
    assert AttentionBackendName.NATIVE not in KEY_LENGTH_ONLY_BACKENDS
    model = factory()
    for processor in model.attn_processors.values():  # flash-attn is not installed: pin without the requirement check
        processor._attention_backend = AttentionBackendName.FLASH_VARLEN
    args = (BITS, TIMES, TEXT, LEFT_PADDED_MASK) if isinstance(model, BinaryDiT) else (BITS, TEXT, LEFT_PADDED_MASK)
    with torch.no_grad(), pytest.raises(ValueError, match="reads a mask as key lengths"):
        model(*args)


# ----------------------------------------------------------------------------------------------------------------------
# Fused QKV projections
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_projections_give_the_same_outputs(name):
    model = MODELS[name][0]()
    ref = _outputs(name, model)
    model.fuse_qkv_projections()
    attentions = _attentions(model)
    assert all(
        m.fused_projections and m.to_qkv.weight.shape == (3 * m.to_q.weight.shape[0], m.to_q.weight.shape[1])
        for m in attentions
    )
    _assert_all_close(_outputs(name, model), ref, atol=1e-6)
    model.fuse_qkv_projections()  # a second call is a no-op
    model.unfuse_qkv_projections()
    assert not any(m.fused_projections or hasattr(m, "to_qkv") for m in attentions)
    _assert_all_equal(_outputs(name, model), ref)


@pytest.mark.parametrize("name", list(MODELS))
def test_fused_model_saves_the_unfused_layout(name, tmp_path):
    model = MODELS[name][0]()
    ref = _outputs(name, model)
    unfused = model.state_dict()
    model.fuse_qkv_projections()
    fused = model.state_dict()
    assert list(fused) == list(unfused) and not any("to_qkv" in key for key in fused)
    assert all(torch.equal(fused[key], unfused[key]) for key in unfused)

    model.save_pretrained(tmp_path)
    assert not any("to_qkv" in key for key in load_file(tmp_path / "diffusion_pytorch_model.safetensors"))
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert not any(m.fused_projections for m in _attentions(loaded))
    _assert_all_equal(_outputs(name, loaded), ref)


def test_loading_weights_into_a_fused_model_refreshes_the_fused_projection():
    torch.manual_seed(1)
    other = tiny_dit()
    model = tiny_dit()
    model.fuse_qkv_projections()
    model.load_state_dict(other.state_dict())  # strict: `to_qkv` is filled from the incoming to_q/to_k/to_v
    _assert_all_close(_outputs("dit", model), _outputs("dit", other), atol=1e-6)


def test_ar_kv_cache_equals_full_recompute_with_fused_projections():
    model = tiny_ar()
    ref = _outputs("ar", model)
    model.fuse_qkv_projections()
    out = _outputs("ar", model)
    torch.testing.assert_close(out["kv_cache"], out["full"], atol=1e-5, rtol=0)
    _assert_all_close(out, ref, atol=1e-6)


def test_projections_with_unmerged_adapters_are_not_fused():
    from peft import LoraConfig

    model = tiny_dit()
    model.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False))
    adapted = _outputs("dit", model)
    with pytest.raises(ValueError, match="computes more than its weight"):
        model.fuse_qkv_projections()  # the fused copy would drop the adapter
    assert not any(m.fused_projections for m in _attentions(model))
    model.fuse_lora()  # merged into the base weights, which the fused copy then holds
    model.fuse_qkv_projections()
    assert all(m.fused_projections for m in _attentions(model))
    _assert_all_close(_outputs("dit", model), adapted, atol=1e-5)


def test_pipeline_fuses_and_unfuses_its_models(tmp_path):
    pipe = build_pipeline("tiny", "diffusion", seed=0)
    pipe.set_progress_bar_config(disable=True)
    transformer, tokenizer = _attentions(pipe.transformer), _attentions(pipe.image_tokenizer)

    pipe.fuse_qkv_projections(image_tokenizer=False)
    assert all(m.fused_projections for m in transformer) and not any(m.fused_projections for m in tokenizer)
    pipe.fuse_qkv_projections()
    assert all(m.fused_projections for m in transformer + tokenizer)
    images = pipe("a red cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert images.images.shape == (1, 3, 128, 128)

    pipe.save_pretrained(tmp_path)  # the fused pipeline saves loadable, unfused weights
    for folder in ("transformer", "image_tokenizer"):
        assert not any("to_qkv" in k for k in load_file(tmp_path / folder / "diffusion_pytorch_model.safetensors"))

    pipe.unfuse_qkv_projections(transformer=False)
    assert all(m.fused_projections for m in transformer) and not any(m.fused_projections for m in tokenizer)
    pipe.unfuse_qkv_projections()
    assert not any(m.fused_projections for m in transformer + tokenizer)


# ----------------------------------------------------------------------------------------------------------------------
# Regional compilation
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "cls, block",
    [(BinaryDiT, "BinaryDiTBlock"), (BinaryARTransformer, "BinaryARBlock"), (BinaryLatentTokenizer, "TokenizerBlock")],
)
def test_repeated_blocks_are_declared(cls, block):
    assert cls._repeated_blocks == [block]
    model = {BinaryDiT: tiny_dit, BinaryARTransformer: tiny_ar, BinaryLatentTokenizer: tiny_tokenizer}[cls]()
    blocks = [m for m in model.modules() if type(m).__name__ == block]
    assert len(blocks) == len(_attentions(model))  # every attention sits in a compiled block


@pytest.mark.parametrize("name", list(MODELS))
def test_repeated_blocks_trace_without_graph_breaks(name, _fresh_dynamo):
    """Dynamo only (`backend="eager"`, fast): with `fullgraph=True` a graph break anywhere in a block (the processor,
    the dispatcher, the masks, the KV cache, RoPE) raises."""
    model = MODELS[name][0]()
    ref = _outputs(name, model)
    model.compile_repeated_blocks(backend="eager", fullgraph=True)
    _assert_all_close(_outputs(name, model), ref, atol=1e-6)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="inductor needs a C++ compiler")
def test_compiled_dit_matches_eager_with_inductor(_fresh_dynamo):
    """Inductor on CPU, on the pipelines' path: cached text keys/values with a padding mask (about 20 s with a cold
    inductor cache on 2 busy cores, a few seconds warm)."""
    model = tiny_dit()
    with torch.no_grad():
        text_kv = model.prepare_text_kv(TEXT, LEFT_PADDED_MASK)
        ref = model(BITS, TIMES, text_kv=text_kv).sample
        model.compile_repeated_blocks(fullgraph=True)
        for _ in range(2):  # compiles, then reuses the compiled graph
            torch.testing.assert_close(model(BITS, TIMES, text_kv=text_kv).sample, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="inductor needs a C++ compiler")
def test_frozen_weights_compile_matches_eager_and_refuses_changed_weights(_fresh_dynamo, monkeypatch):
    """`compile_repeated_blocks(freeze_weights=True)`: inductor with the weights as constants (one compiled entry per
    block, so the recompile limit is raised to fit); a weight changed in place or replaced afterwards is refused
    before the stale compiled blocks could run."""
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.utils import counters

    monkeypatch.setattr(dynamo_config, "recompile_limit", 2)  # below what the blocks need: the method must raise it
    monkeypatch.setattr(dynamo_config, "accumulated_recompile_limit", 2)
    model = tiny_dit()
    blocks = [m for m in model.modules() if type(m).__name__ == "BinaryDiTBlock"]
    with torch.no_grad():
        text_kv = model.prepare_text_kv(TEXT, LEFT_PADDED_MASK)
        ref = model(BITS, TIMES, text_kv=text_kv).sample
        graphs = counters["stats"]["unique_graphs"]
        model.compile_repeated_blocks(fullgraph=True, freeze_weights=True)
        assert dynamo_config.recompile_limit >= len(blocks) and dynamo_config.accumulated_recompile_limit >= len(blocks)
        for _ in range(2):
            torch.testing.assert_close(model(BITS, TIMES, text_kv=text_kv).sample, ref, atol=1e-5, rtol=1e-5)
        # frozen weights are constants: one compiled graph per block (without freezing the blocks share one)
        assert counters["stats"]["unique_graphs"] - graphs == len(blocks)
        blocks[-1].ff.net[2].weight.mul_(0.5)
        with pytest.raises(RuntimeError, match=r"freeze_weights=True.*transformer_blocks\.1\.ff\.net\.2\.weight"):
            model(BITS, TIMES, text_kv=text_kv)
        # compiling again would reuse the cached frozen code: refused
        with pytest.raises(RuntimeError, match="already compiled with `freeze_weights=True`"):
            model.compile_repeated_blocks(freeze_weights=True)
    fresh = tiny_dit()
    fresh.compile_repeated_blocks(backend="eager", freeze_weights=True)
    fresh.transformer_blocks[0].ff.net[2].weight = torch.nn.Parameter(torch.zeros_like(fresh.proj_out.weight[:0]))
    with pytest.raises(RuntimeError, match="Load the model again"):
        fresh(BITS, TIMES, text_kv=fresh.prepare_text_kv(TEXT, LEFT_PADDED_MASK))
