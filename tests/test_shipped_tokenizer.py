"""The shipped shapes-world tokenizer (pipelines/shapes-64-tokenizer): its reconstructions of held-out compositions
keep the shapes (ShapesEval) and the pixels (PSNR). Fails if the weights, the decoder or the switches break."""

import numpy as np
import pytest
import torch

from diffusers_bit import BinaryLatentTokenizer
from diffusers_bit.evaluation import evaluate_images, make_scene, render, spec_to_caption
from diffusers_bit.evaluation.reconstruction import evaluate_reconstruction
from diffusers_bit.presets import preset_path

# test-split records (held-out compositions), rendered on the fly exactly as `diffusers-bit shapes-data` does
INDICES = list(range(48))


@pytest.fixture(scope="module")
def tokenizer():
    return BinaryLatentTokenizer.from_pretrained(preset_path("shapes-64-tokenizer")).eval()


@pytest.fixture(scope="module")
def scenes():
    return [make_scene("test", i, seed=0) for i in INDICES]


def test_config_is_the_shapes_preset_with_the_training_switches(tokenizer):
    config = tokenizer.config
    assert (config.num_latent_tokens, config.bits_per_token, config.sample_sizes) == (32, 16, [64])
    assert (
        config.position_embedding_type == "sincos"
        and config.latent_index_embedding
        and config.rope_layout == "half_split"
    )
    assert tokenizer.dtype == torch.float32  # stored in float16, loaded as float32


def test_reconstructions_keep_shapes_and_pixels(tokenizer, scenes):
    images = [np.asarray(render(scene, 64)) for scene in scenes]
    report = evaluate_reconstruction(tokenizer, images, return_images=True)
    entry = report["resolutions"]["64"]
    # measured on these 48 images: PSNR 29.14 dB, ShapesEval 0.875, 42 of 48 correct (whole test split, 600 images:
    # 30.04 dB, 0.945); a broken decoder or wrong weights give < 20 dB and ShapesEval near 0
    assert entry["psnr"] > 28.0, entry["psnr"]
    records = [{"image": image, "spec": scene.spec} for image, scene in zip(entry["images"], scenes)]
    shapes = evaluate_images(records)
    failures = [r["reason"] for r in shapes["results"] if not r["correct"]]
    assert shapes["overall"] >= 0.8 and shapes["num_correct"] >= 38, (shapes["overall"], failures)
    assert all(isinstance(spec_to_caption(s.spec), str) for s in scenes)


def test_bits_are_deterministic_and_carry_the_image(tokenizer, scenes):
    pixels = torch.stack(
        [torch.from_numpy(np.asarray(render(s, 64))).permute(2, 0, 1).float() / 127.5 - 1 for s in scenes[:4]]
    )
    bits = tokenizer.encode(pixels).bits
    assert torch.equal(bits, tokenizer.encode(pixels).bits)
    # other bits draw another image: flipping a third of them moves the reconstruction far away
    flipped = bits.clone()
    flipped[:, :, ::3] = 1 - flipped[:, :, ::3]
    with torch.no_grad():
        a, b = tokenizer.decode(bits, 64, 64).sample, tokenizer.decode(flipped, 64, 64).sample
    assert (a - b).abs().mean() > 0.05
