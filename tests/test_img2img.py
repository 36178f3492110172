"""Image-to-image in binary latent space: strength limits, seeded reproducibility, inputs, from_pipe."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_bit import InstellaT2IImg2ImgPipeline, InstellaT2IPipeline, build_pipeline


@pytest.fixture(scope="module")
def t2i():
    return build_pipeline("tiny", "diffusion", seed=0)


@pytest.fixture(scope="module")
def pipe(t2i):
    return InstellaT2IImg2ImgPipeline.from_pipe(t2i)


def _image(seed=0, size=(90, 70)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def _run(pipe, seed=0, **kwargs):
    args = dict(
        prompt="a red circle",
        image=_image(),
        num_inference_steps=4,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
    )
    return pipe(**{**args, **kwargs}).images


def test_from_pipe_shares_modules(t2i, pipe):
    assert pipe.transformer is t2i.transformer and pipe.image_tokenizer is t2i.image_tokenizer
    assert pipe.text_encoder is t2i.text_encoder


def test_strength_one_is_text_to_image(t2i, pipe):
    kwargs = dict(num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(3))
    expected = t2i("a red circle", **kwargs).images
    got = _run(pipe, seed=3, strength=1.0)
    assert torch.equal(got, expected)


def test_strength_zero_returns_the_reconstruction(pipe):
    bits = pipe.prepare_image_bits(_image())
    assert torch.equal(_run(pipe, strength=0.0), bits)
    # the decoded image is the tokenizer's reconstruction
    out = pipe("x", image=_image(), strength=0.0, output_type="pt").images
    expected = pipe.decode_latents(bits, output_type="pt")
    torch.testing.assert_close(out, expected)


def test_partial_strength_runs_the_tail_of_the_schedule_and_is_seeded(pipe):
    bits = pipe.prepare_image_bits(_image())
    a, b, c = _run(pipe, strength=0.5), _run(pipe, strength=0.5), _run(pipe, seed=1, strength=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # only the last steps run: fewer model calls, and a low strength stays closer to the source bits
    calls = []
    pipe(
        prompt="x",
        image=_image(),
        strength=0.5,
        num_inference_steps=4,
        output_type="latent",
        callback_on_step_end=lambda p, i, t, kw: calls.append(float(t)) or {},
    )
    assert calls == pytest.approx([0.5, 0.25])
    assert bits.shape == a.shape


def test_image_forms_agree(pipe):
    image = _image()
    array = np.asarray(image)
    expected = pipe.prepare_image_bits(image)
    assert torch.equal(pipe.prepare_image_bits([image]), expected)
    assert torch.equal(pipe.prepare_image_bits(array), expected)
    assert torch.equal(pipe.prepare_image_bits(array.astype(np.float32) / 255), expected)
    assert torch.equal(pipe.prepare_image_bits(torch.from_numpy(array).permute(2, 0, 1).float() / 255), expected)
    assert torch.equal(pipe.prepare_image_bits(expected), expected)  # bits pass straight through
    two = pipe.prepare_image_bits([image, _image(1)])
    assert two.shape == (2, 16, 16) and torch.equal(two[:1], expected)


def test_one_image_per_prompt_and_images_per_prompt(pipe):
    out = pipe(
        ["a", "b"],
        image=[_image(0), _image(1)],
        strength=0.5,
        num_inference_steps=2,
        num_images_per_prompt=2,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (4, 16, 16)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"strength": 1.5}, ValueError, r"`strength` must be a finite number >= 0 and <= 1"),
        ({"strength": float("nan")}, ValueError, r"`strength`"),
        ({"image": None}, ValueError, r"`image` is required"),
        ({"image": "photo.png"}, TypeError, r"`image` must be PIL images"),
        ({"image": np.zeros((64, 64))}, ValueError, r"`image` arrays must be \(H, W, 3\)"),
        ({"image": np.full((64, 64, 3), 2.0)}, ValueError, r"in \[0, 1\]"),
        ({"image": torch.zeros(1, 4, 64, 64)}, ValueError, r"`image` tensors must be"),
        ({"image": torch.full((1, 16, 16), 0.5)}, ValueError, r"`image` must contain only 0 and 1"),
        ({"image": [_image(0), _image(1), _image(2)]}, ValueError, r"3 images for 1 prompts"),
    ],
)
def test_bad_input(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(pipe, **kwargs)


def test_loads_from_a_text_to_image_folder(t2i, tmp_path):
    t2i.save_pretrained(tmp_path / "pipe")
    pipe = InstellaT2IImg2ImgPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(pipe, InstellaT2IPipeline)
    assert _run(pipe, strength=0.5).shape == (1, 16, 16)


# ----------------------------------------------------------------------------------------------------------------------
# AR: continue a given prefix
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ar():
    return build_pipeline("tiny", "ar", seed=0)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_ar_prefix_is_kept_and_continued(ar, use_kv_cache):
    full = ar("a cat", output_type="latent", generator=torch.Generator().manual_seed(0)).images
    prefix = full[:, :5]
    out = ar(
        "a cat",
        output_type="latent",
        prefix_latents=prefix,
        use_kv_cache=use_kv_cache,
        generator=torch.Generator().manual_seed(7),
    ).images
    assert out.shape == full.shape and torch.equal(out[:, :5], prefix)
    # greedy continuation of the model's own greedy prefix reproduces the greedy image
    greedy = ar("a cat", output_type="latent", temperature=0.0).images
    again = ar(
        "a cat", output_type="latent", temperature=0.0, prefix_latents=greedy[:, :9], use_kv_cache=use_kv_cache
    ).images
    assert torch.equal(again, greedy)


def test_ar_full_prefix_returns_it_and_rows_expand(ar):
    bits = torch.randint(0, 2, (1, 16, 16)).float()
    assert torch.equal(ar("x", output_type="latent", prefix_latents=bits).images, bits)
    out = ar(["a", "b"], num_images_per_prompt=2, output_type="latent", prefix_latents=bits[:, :3]).images
    assert out.shape == (4, 16, 16) and torch.equal(out[:, :3], bits[:, :3].expand(4, -1, -1))


@pytest.mark.parametrize(
    "prefix, match",
    [
        (torch.zeros(1, 0, 16), r"1 <= k <= 16"),
        (torch.zeros(1, 17, 16), r"1 <= k <= 16"),
        (torch.zeros(1, 4, 8), r"\(B, k, 16\)"),
        (torch.zeros(3, 4, 16), r"B in \[1\]"),
        (torch.full((1, 4, 16), 0.5), r"`prefix_latents` must contain only bits"),
    ],
)
def test_ar_bad_prefix(ar, prefix, match):
    with pytest.raises(ValueError, match=match):
        ar("x", output_type="latent", prefix_latents=prefix)


# ----------------------------------------------------------------------------------------------------------------------
# ShapesEval of edits (evaluation.editing)
# ----------------------------------------------------------------------------------------------------------------------
def test_recolor_spec_changes_one_colour_to_a_seen_composition():
    from diffusers_bit.evaluation import CATEGORIES, compositions, is_held_out
    from diffusers_bit.evaluation.editing import recolor_spec

    checked = 0
    for category in CATEGORIES:
        for spec in compositions(category):
            for index in range(3):
                new = recolor_spec(spec, index=index)
                old_colours = [o["color"] for o in spec["objects"]]
                if not any(old_colours):
                    assert new is None
                    continue
                if new is None:  # every free colour would make a held-out composition
                    continue
                changed = [i for i, (a, b) in enumerate(zip(spec["objects"], new["objects"])) if a != b]
                assert len(changed) == 1 and new["objects"][changed[0]]["color"] not in old_colours
                assert {k: v for k, v in new.items() if k != "objects"} == {
                    k: v for k, v in spec.items() if k != "objects"
                }
                assert not is_held_out(new)
                checked += 1
    assert checked > 50
    spec = compositions("colors")[0]
    assert recolor_spec(spec, 0) == recolor_spec(json.dumps(spec), 0)  # JSON strings as in metadata.jsonl


def test_evaluate_img2img_reports_and_is_seeded(t2i, tmp_path):
    from diffusers_bit.evaluation import parse_prompt, write_shapes_dataset
    from diffusers_bit.evaluation.editing import evaluate_img2img

    write_shapes_dataset(tmp_path / "data", num_train=1, num_validation=24, num_test=0, size=64)
    split = tmp_path / "data" / "validation"
    kwargs = dict(num_images=8, num_inference_steps=2, batch_size=3)
    keep, (sources, edited, prompts) = evaluate_img2img(t2i, split, "keep", 0.3, return_images=True, **kwargs)
    assert keep["edit"] == "keep" and keep["num_images"] == 8 and len(edited) == len(sources) == 8
    assert keep["source"]["overall"] == 1.0  # the rendered originals satisfy their own captions
    assert keep["retention"] == pytest.approx(keep["edited"]["overall"] / keep["source"]["overall"])
    again = evaluate_img2img(t2i, split, "keep", 0.3, return_images=True, **kwargs)[1][1]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(edited, again))
    recolour, (_, _, new_prompts) = evaluate_img2img(t2i, split, "recolour", 0.7, return_images=True, **kwargs)
    assert "text_to_image" in recolour and recolour["num_images"] == len(new_prompts) > 0
    assert recolour["source"]["overall"] == 0.0  # the originals fail the changed colour
    for prompt in new_prompts:
        parse_prompt(prompt)
    with pytest.raises(ValueError, match="edit"):
        evaluate_img2img(t2i, split, "erase", 0.3)
