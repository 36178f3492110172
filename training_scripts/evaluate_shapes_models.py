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
    parser.add_argument("--guidance_scales", type=float, nargs="*", default=None,
                        help="Guidance sweep on the validation captions (default: 1 3 5 8 for diffusion, 1 3 5 8.5 for "
                             "AR; the pipeline default is always evaluated on both splits).")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _summary(report: dict) -> dict:
    return {"overall": report["overall"], "num_images": report["num_images"],
            "categories": {c: v["accuracy"] for c, v in report["categories"].items()}}  # fmt: skip


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
    defaults = {k: v for k, v in pipe._sampling_defaults.items()}
    splits = {split: read_prompts(data_dir / f"prompts_{split}.jsonl")[: args.max_prompts]
              for split in ("validation", "test")}  # fmt: skip
    result = {"sampling": defaults, "images_per_prompt": args.images_per_prompt, "splits": {}, "guidance_sweep": {}}
    for split, prompts in splits.items():
        started = time.time()
        report, _ = evaluate_pipeline(pipe, prompts, images_per_prompt=args.images_per_prompt, seed=args.seed)
        result["splits"][split] = {**_summary(report), "seconds": round(time.time() - started, 1)}
        print(f"{kind} / {split} ({defaults}):\n{format_report(report)}\n", flush=True)
    scales = args.guidance_scales if args.guidance_scales is not None else (
        [1.0, 3.0, 5.0, 8.0] if kind == "diffusion" else [1.0, 3.0, 5.0, 8.5])  # fmt: skip
    for scale in scales:
        report, _ = evaluate_pipeline(pipe, splits["validation"], images_per_prompt=args.images_per_prompt,
                                      seed=args.seed, guidance_scale=scale)  # fmt: skip
        result["guidance_sweep"][str(scale)] = {"validation": report["overall"]}
        print(f"{kind} guidance {scale}: validation {100 * report['overall']:.1f}%", flush=True)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data_dir = Path(args.data_dir)
    report = {"data_dir": str(data_dir), "date": time.strftime("%Y-%m-%d")}
    if args.tokenizer:
        report["tokenizer"] = evaluate_tokenizer(args.tokenizer, data_dir, args.max_images)
        t = report["tokenizer"]
        print(f"tokenizer: PSNR {t['psnr']:.2f} dB, SSIM {t['ssim']:.3f}, ShapesEval {t['shapes_eval']['overall']:.3f} "
              f"(originals {t['shapes_eval_originals']['overall']:.3f}), {t['bits_per_image']} bits per image",
              flush=True)  # fmt: skip
    for kind in PIPELINES:
        path = getattr(args, kind)
        if path:
            report[kind] = evaluate_generator(kind, path, data_dir, args)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"saved {output}")
    return report


if __name__ == "__main__":
    main()
