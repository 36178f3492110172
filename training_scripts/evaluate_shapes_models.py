#!/usr/bin/env python
# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Evaluate the shapes-world models: the image tokenizer's reconstructions (PSNR, SSIM, ShapesEval beside the
originals' ShapesEval) on the test split, and the diffusion / AR pipelines with ShapesEval (GenEval-style) on the
validation captions (seen compositions, new layouts) and the test split's held-out compositions, with a small guidance
sweep. Writes a JSON report and prints Markdown tables.

    python training_scripts/evaluate_shapes_models.py --data_dir runs/shapes-64/data \
        --tokenizer runs/shapes-64/tokenizer --diffusion runs/shapes-64/diffusion --ar runs/shapes-64/ar \
        --output runs/shapes-64/evaluation.json
"""

import argparse
import json
import time
from pathlib import Path

import torch

from diffusers_bit import BinaryLatentTokenizer, InstellaARPipeline, InstellaT2IPipeline
from diffusers_bit.evaluation import evaluate_pipeline, format_report
from diffusers_bit.evaluation.reconstruction import evaluate_shapes_reconstruction
from diffusers_bit.evaluation.shapes_world import read_prompts

PIPELINES = {"diffusion": InstellaT2IPipeline, "ar": InstellaARPipeline}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", required=True, help="Shapes-world folder (diffusers-bit shapes-data).")
    parser.add_argument("--tokenizer", default=None, help="BinaryLatentTokenizer folder (or a pipeline folder).")
    parser.add_argument("--diffusion", default=None, help="InstellaT2IPipeline folder.")
    parser.add_argument("--ar", default=None, help="InstellaARPipeline folder.")
    parser.add_argument("--output", required=True, help="JSON report path.")
    parser.add_argument("--images_per_prompt", type=int, default=4)
    parser.add_argument("--max_prompts", type=int, default=None, help="Evaluate only the first prompts of each split.")
    parser.add_argument("--max_images", type=int, default=None, help="Tokenizer: only the first test images.")
    parser.add_argument(
        "--guidance_scales",
        type=float,
        nargs="*",
        default=None,
        help="Guidance sweep on the validation captions (default: 1 3 5 8 for diffusion, 1 3 5 8.5 for "
        "AR; the pipeline default is always evaluated on both splits).",
    )
    parser.add_argument(
        "--img2img",
        action="store_true",
        help="Also image-to-image with the diffusion pipeline on validation images: the own caption "
        "at --keep_strength and a one-colour change at --recolour_strength (ShapesEval of both, "
        "text-to-image on the new captions beside), and a before/after picture.",
    )
    parser.add_argument("--img2img_images", type=int, default=120, help="Source images of the img2img evaluation.")
    parser.add_argument("--keep_strength", type=float, default=0.3)
    parser.add_argument("--recolour_strength", type=float, default=0.7)
    parser.add_argument("--img2img_picture", default=None, help="Where to write the before/after picture (PNG).")
    parser.add_argument(
        "--sampling_sweep",
        nargs="*",
        default=[],
        metavar="ALGORITHM:GUIDANCE:TEMPERATURE",
        help="Diffusion: also these sampler settings on the validation captions, e.g. posterior:3:0.3.",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _summary(report: dict) -> dict:
    return {
        "overall": report["overall"],
        "num_images": report["num_images"],
        "categories": {c: v["accuracy"] for c, v in report["categories"].items()},
    }


def evaluate_tokenizer(path: str, data_dir: Path, max_images) -> dict:
    folder = Path(path)
    subfolder = "image_tokenizer" if (folder / "image_tokenizer").is_dir() else None
    tokenizer = BinaryLatentTokenizer.from_pretrained(path, subfolder=subfolder).eval()
    started = time.time()
    result = evaluate_shapes_reconstruction(tokenizer, data_dir / "test", limit=max_images)
    result["seconds"] = round(time.time() - started, 1)
    return result


def evaluate_generator(kind: str, path: str, data_dir: Path, args) -> dict:
    pipe = PIPELINES[kind].from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    defaults = pipe.resolved_sampling_defaults()
    splits = {
        split: read_prompts(data_dir / f"prompts_{split}.jsonl")[: args.max_prompts] for split in ("validation", "test")
    }
    result = {"sampling": defaults, "images_per_prompt": args.images_per_prompt, "splits": {}, "guidance_sweep": {}}
    for split, prompts in splits.items():
        started = time.time()
        report, _ = evaluate_pipeline(pipe, prompts, images_per_prompt=args.images_per_prompt, seed=args.seed)
        result["splits"][split] = {**_summary(report), "seconds": round(time.time() - started, 1)}
        print(f"{kind} / {split} ({defaults}):\n{format_report(report)}\n", flush=True)
    scales = (
        args.guidance_scales
        if args.guidance_scales is not None
        else ([1.0, 3.0, 5.0, 8.0] if kind == "diffusion" else [1.0, 3.0, 5.0, 8.5])
    )
    for scale in scales:
        report, _ = evaluate_pipeline(
            pipe, splits["validation"], images_per_prompt=args.images_per_prompt, seed=args.seed, guidance_scale=scale
        )
        result["guidance_sweep"][str(scale)] = {"validation": report["overall"]}
        print(f"{kind} guidance {scale}: validation {100 * report['overall']:.1f}%", flush=True)
    for setting in args.sampling_sweep if kind == "diffusion" else []:
        algorithm, guidance, temperature = setting.split(":")
        kwargs = dict(algorithm=algorithm, guidance_scale=float(guidance), temperature=float(temperature))
        report, _ = evaluate_pipeline(
            pipe, splits["validation"], images_per_prompt=args.images_per_prompt, seed=args.seed, **kwargs
        )
        result.setdefault("sampling_sweep", {})[setting] = {"validation": report["overall"]}
        print(f"{kind} {kwargs}: validation {100 * report['overall']:.1f}%", flush=True)
    return result


def evaluate_img2img_edits(path: str, data_dir: Path, args) -> dict:
    from diffusers_bit import InstellaT2IImg2ImgPipeline
    from diffusers_bit.evaluation.editing import evaluate_img2img
    from diffusers_bit.utils.image_grid import image_grid

    pipe = InstellaT2IImg2ImgPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    split = data_dir / "validation"
    result, pictures = {}, {}
    for edit, strength in (("keep", args.keep_strength), ("recolour", args.recolour_strength)):
        started = time.time()
        report, images = evaluate_img2img(
            pipe, split, edit, strength, num_images=args.img2img_images, seed=args.seed, return_images=True
        )
        result[edit] = {**report, "seconds": round(time.time() - started, 1)}
        pictures[edit] = images
        print(f"img2img {edit} @ {strength}: {json.dumps(report)}", flush=True)
    if args.img2img_picture:  # rows: [source, one colour changed] [source, own caption]
        images, captions = [], []
        for k in range(min(4, len(pictures["recolour"][0]), len(pictures["keep"][0]))):
            for edit, strength in (("recolour", args.recolour_strength), ("keep", args.keep_strength)):
                sources, edited, prompts = pictures[edit]
                images += [sources[k], edited[k]]
                captions += ["source", f"{prompts[k]} (strength {strength})"]
        image_grid(images, cols=4, captions=captions, scale=3).save(args.img2img_picture)
        print(f"saved {args.img2img_picture}")
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data_dir = Path(args.data_dir)
    report = {"data_dir": str(data_dir), "date": time.strftime("%Y-%m-%d")}
    if args.tokenizer:
        report["tokenizer"] = evaluate_tokenizer(args.tokenizer, data_dir, args.max_images)
        t = report["tokenizer"]
        print(
            f"tokenizer: PSNR {t['psnr']:.2f} dB, SSIM {t['ssim']:.3f}, ShapesEval {t['shapes_eval']['overall']:.3f} "
            f"(originals {t['shapes_eval_originals']['overall']:.3f}), {t['bits_per_image']} bits per image",
            flush=True,
        )
    for kind in PIPELINES:
        path = getattr(args, kind)
        if path:
            report[kind] = evaluate_generator(kind, path, data_dir, args)
    if args.img2img and args.diffusion:
        report["img2img"] = evaluate_img2img_edits(args.diffusion, data_dir, args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"saved {output}")
    return report


if __name__ == "__main__":
    main()
