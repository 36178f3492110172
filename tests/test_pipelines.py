"""InstellaT2IPipeline and InstellaARPipeline on tiny components built locally (tiny OLMo, byte-level text
tokenizer, tiny image tokenizer / generators from the `tiny` preset)."""

import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from utils import tiny_bert_text_components

from diffusers_bit import InstellaARPipeline, InstellaT2IPipeline, build_pipeline
from diffusers_bit.pipelines.pipeline_instella_common import InstellaPipelineBase

STEPS = 3


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def t2i():
    pipe = build_pipeline("tiny", "diffusion", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ar():
    pipe = build_pipeline("tiny", "ar", seed=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt="a red cat", **kwargs):
    if isinstance(pipe, InstellaT2IPipeline):
        kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(prompt, **kwargs).images


# ----------------------------------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_output_types(kind, request):
    pipe = request.getfixturevalue(kind)
    pil = run(pipe, output_type="pil")
    assert len(pil) == 1 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (128, 128)
    arr = run(pipe, output_type="np")
    assert arr.shape == (1, 128, 128, 3) and arr.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    pt = run(pipe, output_type="pt", height=64, width=64)
    assert pt.shape == (1, 3, 64, 64) and pt.min() >= 0 and pt.max() <= 1
    bits = run(pipe, output_type="latent")
    assert bits.shape == (1, 16, 16) and set(bits.unique().tolist()) <= {0.0, 1.0}
    # the same bits render to the same image: height/width only pick the decode resolution
    torch.testing.assert_close(torch.from_numpy(arr), pipe.decode_latents(bits, output_type="pt").permute(0, 2, 3, 1))
    tup = pipe(
        "a red cat",
        output_type="latent",
        return_dict=False,
        generator=torch.Generator().manual_seed(0),
        **({"num_inference_steps": STEPS} if kind == "t2i" else {}),
    )
    assert isinstance(tup, tuple) and torch.equal(tup[0], bits)


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_seed_determinism_and_sensitivity(kind, request):
    pipe = request.getfixturevalue(kind)
    a = run(pipe, output_type="latent", generator=torch.Generator().manual_seed(3))
    b = run(pipe, output_type="latent", generator=torch.Generator().manual_seed(3))
    c = run(pipe, output_type="latent", generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_batch_equals_separate_runs(kind, request):
    pipe = request.getfixturevalue(kind)
    both = run(
        pipe, ["a red cat", "an astronaut riding a horse on the moon"], output_type="latent", generator=gens(7, 8)
    )
    first = run(pipe, "a red cat", output_type="latent", generator=gens(7))
    second = run(pipe, ["an astronaut riding a horse on the moon"], output_type="latent", generator=gens(8))
    assert torch.equal(both, torch.cat([first, second]))


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_num_images_per_prompt(kind, request):
    pipe = request.getfixturevalue(kind)
    bits = run(pipe, ["a", "b"], num_images_per_prompt=3, output_type="latent", generator=gens(*range(6)))
    assert bits.shape == (6, 16, 16)
    assert not torch.equal(bits[0], bits[1])  # different generators, different images
    single = run(pipe, "b", num_images_per_prompt=3, output_type="latent", generator=gens(3, 4, 5))
    assert torch.equal(bits[3:], single)
    images = run(pipe, "a", num_images_per_prompt=2, output_type="pil")
    assert len(images) == 2


# ----------------------------------------------------------------------------------------------------------------------
# guidance, algorithms, text keys/values
# ----------------------------------------------------------------------------------------------------------------------
class ForwardSpy:
    def __init__(self, module):
        self.batches = []
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        self.batches.append(None if x is None else x.shape[0])

    def remove(self):
        self.handle.remove()


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_guidance_on_off(kind, request):
    pipe = request.getfixturevalue(kind)
    spy = ForwardSpy(pipe.transformer)
    try:
        off = run(pipe, guidance_scale=1.0, output_type="latent")
        off_batches = list(spy.batches)
        spy.batches.clear()
        on = run(pipe, guidance_scale=6.0, output_type="latent")
        on_batches = list(spy.batches)
    finally:
        spy.remove()
    assert all(b in (1, None) for b in off_batches)  # no unconditional branch
    assert all(b in (2, None) for b in on_batches)  # cond + uncond in one forward
    assert not torch.equal(on, off)
    # 0 < guidance_scale <= 1 also runs without guidance and equals guidance 1
    assert torch.equal(run(pipe, guidance_scale=0.5, output_type="latent"), off)


def test_guidance_combines_logits_as_documented(t2i, monkeypatch):
    """guided = uncond + scale * (cond - uncond), then temperature divides it inside the scheduler step."""
    seen = {}
    original = t2i.scheduler.step

    def spy(model_output, timestep, sample, **kwargs):
        seen.setdefault("guided", model_output.clone())
        seen.setdefault("temperature", kwargs["temperature"])
        return original(model_output, timestep, sample, **kwargs)

    outputs = []
    handle = t2i.transformer.register_forward_hook(lambda m, a, o: outputs.append(o.sample.detach().clone()))
    monkeypatch.setattr(t2i.scheduler, "step", spy)
    try:
        run(t2i, guidance_scale=3.0, temperature=0.7, output_type="latent")
    finally:
        handle.remove()
    cond, uncond = outputs[0].float().chunk(2)
    torch.testing.assert_close(seen["guided"], uncond + 3.0 * (cond - uncond))
    assert seen["temperature"] == 0.7


def test_both_algorithms(t2i):
    simplified = run(t2i, algorithm="simplified", output_type="latent", num_inference_steps=6)
    posterior = run(t2i, algorithm="posterior", output_type="latent", num_inference_steps=6)
    assert simplified.shape == posterior.shape
    assert not torch.equal(simplified, posterior)
    # the default is the scheduler config's (simplified)
    assert torch.equal(run(t2i, output_type="latent", num_inference_steps=6), simplified)
    assert not torch.equal(run(t2i, output_type="latent", num_inference_steps=6, rho=2.0), simplified)


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_text_keys_values_computed_once_per_call(kind, request):
    pipe = request.getfixturevalue(kind)
    calls = []
    handles = [
        b.context_embedder.register_forward_hook(lambda *a: calls.append(1))
        for b in pipe.transformer.transformer_blocks
    ]
    try:
        run(pipe, output_type="latent")
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == len(pipe.transformer.transformer_blocks)


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_text_keys_values_projected_once_per_prompt(kind, request):
    """With several images per prompt the text keys/values are projected for the prompts alone and then repeated, and
    the two identical negative prompts are projected once: the projection sees 2 prompts + 1 negative prompt (not 12
    rows), and the bits equal those of features repeated before the projection."""
    pipe = request.getfixturevalue(kind)
    embeds, mask, neg, neg_mask = pipe.encode_prompt(["a red cat", "two green triangles"], negative_prompt="")
    blocks = pipe.transformer.transformer_blocks
    rows = []
    handles = [b.context_embedder.register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0])) for b in blocks]
    try:
        once = run(
            pipe,
            None,
            prompt_embeds=embeds,
            prompt_attention_mask=mask,
            negative_prompt_embeds=neg,
            negative_prompt_attention_mask=neg_mask,
            num_images_per_prompt=3,
            guidance_scale=3.0,
            generator=gens(*range(6)),
            output_type="latent",
        )
    finally:
        for h in handles:
            h.remove()
    assert rows == [3] * len(blocks)
    repeated = run(
        pipe,
        None,
        prompt_embeds=embeds.repeat_interleave(3, dim=1),
        prompt_attention_mask=mask.repeat_interleave(3, dim=0),
        negative_prompt_embeds=neg.repeat_interleave(3, dim=1),
        negative_prompt_attention_mask=neg_mask.repeat_interleave(3, dim=0),
        guidance_scale=3.0,
        generator=gens(*range(6)),
        output_type="latent",
    )
    assert once.shape == (6, 16, 16) and torch.equal(once, repeated)


def test_text_features_are_checked_once_per_call(t2i, monkeypatch):
    """Precomputed features and masks go through `check_text_features` once per call (in `check_inputs`), and
    nothing else scans them again (the encoding that follows trusts the check)."""
    from diffusers_bit.pipelines import pipeline_instella_common as common

    embeds, mask, neg, neg_mask = t2i.encode_prompt(["a red cat", "a dog"], negative_prompt="")
    checked, scanned = [], []
    check = InstellaPipelineBase.check_text_features
    finite = common.check_finite
    monkeypatch.setattr(
        InstellaPipelineBase, "check_text_features", lambda self, *args: checked.append(args[2]) or check(self, *args)
    )
    monkeypatch.setattr(common, "check_finite", lambda name, t: scanned.append(name) or finite(name, t))
    run(
        t2i,
        None,
        prompt_embeds=list(embeds),
        prompt_attention_mask=mask,
        negative_prompt_embeds=neg,
        negative_prompt_attention_mask=neg_mask,
        output_type="latent",
    )
    assert checked == ["prompt", "negative_prompt"]
    assert scanned == ["prompt_embeds"] * len(embeds) + ["negative_prompt_embeds"]
    # a direct `encode_prompt` call checks them too, with the same messages
    checked.clear()
    with pytest.raises(ValueError, match=r"`prompt_embeds` must hold 2 layers of width 32, got shape \(3, 2, 4, 32\)"):
        t2i.encode_prompt(prompt_embeds=torch.zeros(3, 2, 4, 32))
    with pytest.raises(ValueError, match="`negative_prompt_embeds` has batch 1, the prompt batch is 2"):
        t2i.encode_prompt(prompt_embeds=embeds, negative_prompt_embeds=neg[:, :1])
    assert checked == ["prompt", "prompt", "negative_prompt"]


def test_sampling_defaults_are_read_from_the_call_signature(t2i, ar):
    import inspect

    from diffusers_bit import BernoulliScheduler, InstellaT2IImg2ImgPipeline

    for cls in (InstellaT2IPipeline, InstellaARPipeline, InstellaT2IImg2ImgPipeline):
        parameters = inspect.signature(cls.__call__).parameters
        defaults = cls.sampling_defaults()
        assert defaults and defaults == {name: parameters[name].default for name in defaults}
    assert InstellaT2IPipeline.sampling_defaults() == {
        "num_inference_steps": 20,
        "guidance_scale": 5.0,
        "temperature": 0.6,
        "algorithm": None,
    }

    class FewerSteps(InstellaT2IPipeline):
        def __call__(self, prompt=None, num_inference_steps=8, guidance_scale=4.0, temperature=0.6, algorithm=None):
            raise NotImplementedError

    assert FewerSteps.sampling_defaults()["num_inference_steps"] == 8  # no second copy to keep in step
    # `algorithm=None` means the scheduler config's: the model card and the evaluation reports show that one
    assert t2i.sampling_defaults_text() == (
        "`num_inference_steps=20`, `guidance_scale=5.0`, `temperature=0.6`, `algorithm=simplified`"
    )
    assert ar.sampling_defaults_text() == "`guidance_scale=8.5`, `temperature=0.6`, `use_kv_cache=True`"
    posterior = InstellaT2IPipeline(
        **{**t2i.components, "scheduler": BernoulliScheduler.from_config(t2i.scheduler.config, algorithm="posterior")}
    )
    assert posterior.resolved_sampling_defaults()["algorithm"] == "posterior"


def test_temperature_zero_is_deterministic(t2i, ar):
    for pipe in (t2i, ar):
        a = run(pipe, temperature=0.0, output_type="latent", generator=torch.Generator().manual_seed(1))
        b = run(pipe, temperature=0.0, output_type="latent", generator=torch.Generator().manual_seed(2))
        if pipe is ar:
            assert torch.equal(a, b)  # greedy bits
        else:
            assert a.shape == b.shape  # the initial noise still depends on the seed


def test_ar_kv_cache_and_full_recompute_give_identical_bits(ar):
    for seed in (0, 1, 2):
        cached = run(ar, ["a red cat", "two dogs"], output_type="latent", generator=gens(seed, seed + 10))
        full = run(
            ar, ["a red cat", "two dogs"], output_type="latent", generator=gens(seed, seed + 10), use_kv_cache=False
        )
        assert torch.equal(cached, full)


# ----------------------------------------------------------------------------------------------------------------------
# callbacks
# ----------------------------------------------------------------------------------------------------------------------
def test_t2i_callback_sees_and_modifies_latents(t2i):
    steps = []

    def callback(pipe, i, t, kwargs):
        steps.append((i, float(t), kwargs["latents"].shape, kwargs["pred_original_sample"].shape))
        if i == STEPS - 1:
            return {"latents": torch.ones_like(kwargs["latents"])}
        return {}

    out = run(
        t2i,
        output_type="latent",
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"],
    )
    assert [s[0] for s in steps] == [0, 1, 2]
    assert steps[0][1] == 1.0 and steps[0][2] == (1, 16, 16)
    assert torch.equal(out, torch.ones(1, 16, 16))


def test_t2i_callback_modification_changes_the_trajectory(t2i):
    def zero_after_first(pipe, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 0 else {}

    base = run(t2i, output_type="latent", num_inference_steps=5)
    modified = run(t2i, output_type="latent", num_inference_steps=5, callback_on_step_end=zero_after_first)
    assert not torch.equal(base, modified)


def test_ar_callback_replacement_rebuilds_cache(ar):
    def flip_first_token(pipe, i, t, kwargs):
        if i == 3:
            latents = kwargs["latents"].clone()
            latents[:, 0] = 1 - latents[:, 0]
            return {"latents": latents}
        return {}

    cached = run(ar, output_type="latent", callback_on_step_end=flip_first_token)
    full = run(ar, output_type="latent", callback_on_step_end=flip_first_token, use_kv_cache=False)
    plain = run(ar, output_type="latent")
    assert torch.equal(cached, full)
    assert not torch.equal(cached, plain)
    assert torch.equal(cached[:, 0], 1 - plain[:, 0])


def test_interrupt_stops_early(t2i):
    count = []

    def stop(pipe, i, t, kwargs):
        count.append(i)
        pipe._interrupt = True
        return {}

    run(t2i, output_type="latent", num_inference_steps=5, callback_on_step_end=stop)
    assert count == [0]


# ----------------------------------------------------------------------------------------------------------------------
# prompts and embeddings
# ----------------------------------------------------------------------------------------------------------------------
def test_encode_prompt_matches_authors_recipe(t2i):
    embeds, mask, neg, neg_mask = t2i.encode_prompt(
        ["a red cat", "a much longer prompt here"], negative_prompt="blurry"
    )
    assert embeds.shape[0] == 2  # one entry per OLMo layer after the embedding output
    assert embeds.shape[1] == 2 and neg.shape[1] == 2
    # left padding for a causal LM: the shorter prompt's padding is at the start, and padded features are zero
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert embeds[:, 0, 0].abs().sum() == 0
    # conditional and unconditional texts share one padded batch
    assert embeds.shape[2] == neg.shape[2]
    # they are the text encoder's hidden states [1:]
    tok = t2i.tokenizer(
        ["a red cat", "a much longer prompt here", "blurry", "blurry"],
        padding=True,
        return_tensors="pt",
        padding_side="left",
    )
    hs = t2i.text_encoder(**tok, output_hidden_states=True).hidden_states
    torch.testing.assert_close(embeds[1, 1], hs[2][1])


def test_truncation_at_max_sequence_length(t2i):
    embeds, mask, _, _ = t2i.encode_prompt("word " * 100, do_classifier_free_guidance=False)
    assert embeds.shape[2] == 128
    embeds, _, _, _ = t2i.encode_prompt("word " * 100, do_classifier_free_guidance=False, max_sequence_length=16)
    assert embeds.shape[2] == 16


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_precomputed_prompt_embeds_skip_the_text_encoder(kind, request):
    pipe = request.getfixturevalue(kind)
    embeds, mask, neg, neg_mask = pipe.encode_prompt("a red cat", negative_prompt="")
    expected = run(pipe, "a red cat", output_type="latent")
    calls = []
    handle = pipe.text_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        images = pipe(
            prompt_embeds=list(embeds),
            prompt_attention_mask=mask,
            negative_prompt_embeds=neg,
            negative_prompt_attention_mask=neg_mask,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            **({"num_inference_steps": STEPS} if kind == "t2i" else {}),
        ).images
    finally:
        handle.remove()
    assert calls == []
    assert torch.equal(images, expected)


def test_negative_prompt_changes_the_result(t2i):
    assert not torch.equal(
        run(t2i, output_type="latent", negative_prompt="blurry, low quality"), run(t2i, output_type="latent")
    )


def test_empty_prompts_everywhere(t2i):
    bits = run(t2i, "", negative_prompt="", output_type="latent")
    assert bits.shape == (1, 16, 16)


def test_bert_style_text_encoder():
    tokenizer, bert = tiny_bert_text_components()
    pipe = build_pipeline("tiny", "diffusion", seed=0, text_encoder=bert, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    embeds, mask, _, _ = pipe.encode_prompt(["red cat", "a red dog on a cat"], do_classifier_free_guidance=False)
    assert embeds.shape[:2] == (2, 2)
    assert mask[0, 0] == 1 and mask[0, -1] == 0  # right padding for an encoder
    images = pipe(["red cat", "dog"], num_inference_steps=STEPS, output_type="np", generator=gens(0, 1)).images
    assert images.shape == (2, 128, 128, 3) and np.isfinite(images).all()


# ----------------------------------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------------------------------
def test_decode_latents_at_every_supported_size(t2i):
    bits = run(t2i, output_type="latent")
    for size in t2i.supported_sizes:
        image = t2i.decode_latents(bits, size, size)[0]
        assert image.size == (size, size)
    with pytest.raises(ValueError, match="supported sizes"):
        t2i.decode_latents(bits, 80, 80)
    with pytest.raises(ValueError, match="latents"):
        t2i.decode_latents(bits * 0.5)


def test_latents_argument_sets_the_initial_noise(t2i):
    start = torch.bernoulli(torch.full((1, 16, 16), 0.5), generator=torch.Generator().manual_seed(5))
    a = run(t2i, latents=start, output_type="latent")
    b = run(t2i, latents=start.bool(), output_type="latent")
    c = run(t2i, output_type="latent")
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------------------------------------------------------------------
# loading, saving, publishing
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_save_load_round_trip(kind, request, tmp_path):
    pipe = request.getfixturevalue(kind)
    pipe.save_pretrained(tmp_path)
    cls = type(pipe)
    loaded = cls.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(run(loaded, output_type="latent"), run(pipe, output_type="latent"))
    np.testing.assert_array_equal(np.asarray(run(loaded)[0]), np.asarray(run(pipe)[0]))
    bf16 = cls.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert bf16.transformer.dtype == torch.bfloat16 and bf16.image_tokenizer.dtype == torch.bfloat16
    assert bf16.text_encoder.dtype == torch.bfloat16
    bf16.set_progress_bar_config(disable=True)
    assert run(bf16, output_type="latent").shape == (1, 16, 16)


def _hub_cache(tmp_path, pipe, repo="acme/tiny-instella", revision="0123456789abcdef0123456789abcdef01234567"):
    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    pipe.save_pretrained(repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return cache, repo, revision


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_repo_id_load_offline_from_hub_cache(kind, request, tmp_path, monkeypatch):
    pipe = request.getfixturevalue(kind)
    cache, repo, revision = _hub_cache(tmp_path, pipe)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cls = type(pipe)
    loaded = cls.from_pretrained(repo, cache_dir=cache)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(run(loaded, output_type="latent"), run(pipe, output_type="latent"))
    pinned = cls.from_pretrained(repo, cache_dir=cache, revision=revision, torch_dtype=torch.bfloat16)
    assert pinned.transformer.dtype == torch.bfloat16
    with pytest.raises(Exception):
        cls.from_pretrained("acme/does-not-exist", cache_dir=cache)


def test_repo_id_load_with_local_files_only(t2i, tmp_path, monkeypatch):
    cache, repo, _ = _hub_cache(tmp_path, t2i)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    loaded = InstellaT2IPipeline.from_pretrained(repo, cache_dir=cache, local_files_only=True)
    assert isinstance(loaded, InstellaT2IPipeline)


@pytest.mark.parametrize("kind", ["t2i", "ar"])
def test_push_to_hub_writes_model_card(kind, request, monkeypatch):
    import huggingface_hub

    pipe = request.getfixturevalue(kind)
    uploaded = {}

    class Repo:
        repo_id = "acme/tiny-instella"

    def fake_upload(repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(
            os.path.relpath(os.path.join(d, f), folder_path) for d, _, fs in os.walk(folder_path) for f in fs
        )
        uploaded["card"] = open(os.path.join(folder_path, "README.md")).read()
        uploaded["index"] = json.load(open(os.path.join(folder_path, "model_index.json")))
        return "https://huggingface.co/acme/tiny-instella/commit/abc"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: Repo())
    monkeypatch.setattr(huggingface_hub, "upload_folder", fake_upload)
    pipe.push_to_hub("acme/tiny-instella", model_card_kwargs={"description": "A tiny test model."})
    assert uploaded["repo_id"] == "acme/tiny-instella"
    assert "README.md" in uploaded["files"] and "model_index.json" in uploaded["files"]
    assert any(f.startswith("transformer/") and f.endswith(".safetensors") for f in uploaded["files"])
    card = uploaded["card"]
    assert card.startswith("---\n") and "library_name: diffusers" in card and "pipeline_tag: text-to-image" in card
    assert type(pipe).__name__ in card and "A tiny test model." in card and "acme/tiny-instella" in card
    assert "16 tokens of 16 bits" in card and "128x128" in card
    # remote-code form: the pushed repo also loads with DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)
    assert uploaded["index"]["_class_name"] == ["diffusers_bit_pipeline", type(pipe).__name__]
    assert 'DiffusionPipeline.from_pretrained("acme/tiny-instella", trust_remote_code=True' in card
    assert (
        "diffusers_bit_pipeline.py" in uploaded["files"] and "transformer/diffusers_bit_model.py" in uploaded["files"]
    )


def test_model_cpu_offload(t2i, tmp_path):
    t2i.save_pretrained(tmp_path)
    pipe = InstellaT2IPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    names = pipe.model_cpu_offload_seq.split("->")
    assert all(name in pipe.components for name in names)
    pipe.enable_model_cpu_offload(device="cpu")
    assert torch.equal(run(pipe, output_type="latent"), run(t2i, output_type="latent"))


def test_mismatched_components_are_refused(t2i):
    from diffusers_bit import BinaryDiT

    c = dict(t2i.components)
    wrong_tokens = BinaryDiT(
        in_channels=16,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=32,
        num_tokens=8,
        text_embed_dim=32,
        text_num_layers=2,
    )
    with pytest.raises(ValueError, match="image_tokenizer.*transformer"):
        InstellaT2IPipeline(**{**c, "transformer": wrong_tokens})
    wrong_text = BinaryDiT(
        in_channels=16,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=32,
        num_tokens=16,
        text_embed_dim=32,
        text_num_layers=3,
    )
    with pytest.raises(ValueError, match="text_encoder"):
        InstellaT2IPipeline(**{**c, "transformer": wrong_text})


def test_repr_and_components(t2i, ar):
    assert set(t2i.components) == {"tokenizer", "text_encoder", "image_tokenizer", "transformer", "scheduler"}
    assert set(ar.components) == {"tokenizer", "text_encoder", "image_tokenizer", "transformer"}
    assert isinstance(t2i, InstellaPipelineBase) and isinstance(ar, InstellaARPipeline)


# ----------------------------------------------------------------------------------------------------------------------
# bad input: a clear error naming the argument, before any model runs
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_model_runs(t2i, ar):
    """Fail if the text encoder or a transformer runs."""
    handles = []

    def boom(*args):
        raise AssertionError("a model ran before the input was validated")

    for pipe in (t2i, ar):
        for module in (pipe.text_encoder, pipe.transformer, pipe.image_tokenizer):
            handles.append(module.register_forward_pre_hook(boom))
    yield
    for h in handles:
        h.remove()


BAD_COMMON = [
    (dict(prompt=None), ValueError, "prompt"),
    (dict(prompt=3), TypeError, "prompt"),
    (dict(prompt=["a", 3]), TypeError, "prompt"),
    (dict(prompt=[]), TypeError, "prompt"),
    (dict(prompt_embeds=torch.zeros(2, 1, 4, 32)), ValueError, "either `prompt` or `prompt_embeds`"),
    (dict(negative_prompt=["x", "y"]), ValueError, "negative_prompt"),
    (dict(negative_prompt=5), TypeError, "negative_prompt"),
    (dict(height=80), ValueError, r"`height`=80 .*supported sizes: \[64, 96, 128\]"),
    (dict(width=4096), ValueError, "`width`"),
    (dict(height=96.0), TypeError, "`height`"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale"),
    (dict(temperature=-0.1), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(num_images_per_prompt=0), ValueError, "num_images_per_prompt"),
    (dict(output_type="jpeg"), ValueError, "output_type"),
    (dict(generator=[torch.Generator(), torch.Generator()]), ValueError, "generator"),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, "callback_on_step_end_tensor_inputs"),
    (dict(max_sequence_length=0), ValueError, "max_sequence_length"),
]

BAD_T2I = [
    (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    (dict(num_inference_steps=2.5), ValueError, "num_inference_steps"),
    (dict(rho=0.0), ValueError, "rho"),
    (dict(rho=-2.0), ValueError, "rho"),
    (dict(algorithm="ddim"), ValueError, "algorithm"),
    (dict(latents=torch.zeros(1, 16, 15)), ValueError, "latents"),
    (dict(latents=torch.zeros(2, 16, 16)), ValueError, "latents"),
    (dict(latents=torch.zeros(1, 16, 16, dtype=torch.int64)), ValueError, "latents"),
    (dict(latents=torch.full((1, 16, 16), 0.5)), ValueError, "latents"),
    (dict(latents=[[0, 1]]), TypeError, "latents"),
]


def _call(pipe, kwargs):
    kwargs = dict(kwargs)
    if "prompt" not in kwargs:
        kwargs["prompt"] = "a cat"
    return pipe(**kwargs)


@pytest.mark.parametrize("kwargs, error, match", BAD_COMMON + BAD_T2I)
def test_t2i_bad_input(t2i, no_model_runs, kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(t2i, kwargs)


@pytest.mark.parametrize("kwargs, error, match", BAD_COMMON + [(dict(use_kv_cache="yes"), TypeError, "use_kv_cache")])
def test_ar_bad_input(ar, no_model_runs, kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(ar, kwargs)


def test_bad_prompt_embeds(t2i, no_model_runs):
    with pytest.raises(ValueError, match="prompt_embeds"):  # 3 layers instead of 2
        t2i(prompt_embeds=torch.zeros(3, 1, 4, 32))
    with pytest.raises(ValueError, match="prompt_embeds"):  # wrong width
        t2i(prompt_embeds=torch.zeros(2, 1, 4, 31))
    with pytest.raises(ValueError, match="prompt_attention_mask"):
        t2i(prompt_embeds=torch.zeros(2, 1, 4, 32), prompt_attention_mask=torch.ones(1, 5))
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        t2i(prompt_embeds=torch.zeros(2, 1, 4, 32), negative_prompt_embeds=torch.zeros(2, 2, 4, 32))
    with pytest.raises(TypeError, match="prompt_embeds"):
        t2i(prompt_embeds="not a tensor")


def test_converter_builds_complete_pipelines(tmp_path):
    """The documented path from the authors' release to pipeline folders (tiny fixtures, local tiny OLMo)."""
    from utils import PARITY

    from diffusers_bit.conversion import convert_to_pipelines

    text_dir = tmp_path / "olmo"
    source = build_pipeline("tiny", "diffusion", seed=0)
    # the fixture generators read 3 text layers of width 24: a matching tiny OLMo
    from transformers import OlmoConfig, OlmoForCausalLM

    llm = OlmoForCausalLM(
        OlmoConfig(
            vocab_size=260,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=2,
            pad_token_id=1,
            eos_token_id=0,
            bos_token_id=None,
        )
    )
    llm.save_pretrained(text_dir)
    source.tokenizer.save_pretrained(text_dir)
    release = tmp_path / "release"
    (release / "bae").mkdir(parents=True)
    shutil.copy(PARITY / "bae" / "model.safetensors", release / "bae" / "model.safetensors")
    shutil.copy(PARITY / "diffusion.pt", release / "diffusion.pt")
    shutil.copy(PARITY / "ar.pt", release / "ar.pt")
    overrides = {
        "image_tokenizer": {
            "encoder_downsample_blocks": [1],
            "decoder_upsample_blocks": [1],
            "axes_dims_rope": [4, 14, 14],
            "sample_sizes": [512],
        }
    }
    written = convert_to_pipelines(release, tmp_path / "out", text_dir, overrides, dtype=torch.float32)
    assert set(written) == {"InstellaT2IPipeline", "InstellaARPipeline"}
    pipe = InstellaT2IPipeline.from_pretrained(written["InstellaT2IPipeline"])
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.padding_side == "left" and pipe.tokenizer.model_max_length == 128
    bits = pipe("a red cat", num_inference_steps=2, output_type="latent").images
    assert bits.shape == (1, 8, 16)
    assert pipe.decode_latents(bits, output_type="pt").shape == (1, 3, 512, 512)
    ar_pipe = InstellaARPipeline.from_pretrained(written["InstellaARPipeline"])
    ar_pipe.set_progress_bar_config(disable=True)
    assert ar_pipe("a red cat", output_type="latent").images.shape == (1, 8, 16)
    with pytest.raises(ValueError, match="overwrite"):
        convert_to_pipelines(release, tmp_path / "out", text_dir, overrides)
