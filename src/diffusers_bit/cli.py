# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""`diffusers-bit` command line: `demo` (offline, no downloads), `generate`, `convert` and the evaluations."""

import argparse
import json
import sys
import time
from pathlib import Path

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _dtype(name):
    import torch

    return None if name in (None, "keep") else getattr(torch, DTYPES[name])


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise SystemExit(f"error: {path} already exists; pass --overwrite to replace it")


# the demo's default prompts: seen compositions and held-out ones (never in the shapes-world training split)
DEMO_PROMPTS = (
    "a red circle",
    "two green triangles",
    "a blue square to the left of a yellow circle",
    "a purple triangle and an orange circle",
    "three circles",
    "a red square",  # held out: the red-square binding never appears in training
    "a blue circle",  # held out
    "a yellow triangle above a green square",  # held out (yellow triangle)
)
SHIPPED_PIPELINES = {"diffusion": "shapes-64-diffusion", "ar": "shapes-64-ar"}


def _sample_bits(pipe, prompts: list, args):
    import torch

    generators = [torch.Generator().manual_seed(args.seed + k) for k in range(len(prompts))]
    kwargs = dict(guidance_scale=args.guidance_scale, temperature=args.temperature, output_type="latent",
                  generator=generators)  # fmt: skip
    if hasattr(pipe, "scheduler"):
        kwargs.update(num_inference_steps=args.steps, algorithm=args.algorithm)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return pipe(list(prompts), **kwargs).images


def _bits_paths(output: Path, count: int) -> list:
    return [output.with_suffix(".bits")] if count == 1 else [
        output.with_name(f"{output.stem}-{k}.bits") for k in range(count)]  # fmt: skip


def _save_outputs(pipe, args, prompts: list, label: str, started: float) -> None:
    from .utils import pack_bits
    from .utils.image_grid import image_grid

    output = Path(args.output)
    bits_paths = _bits_paths(output, len(prompts))
    for path in [output, *bits_paths]:
        _refuse_existing(path, args.overwrite)
    bits = _sample_bits(pipe, prompts, args)
    images = pipe.decode_latents(bits, args.size, args.size)
    output.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        images[0].save(output)
    else:
        scale = max(1, 128 // images[0].size[0])
        image_grid(images, cols=min(4, len(images)), captions=prompts, scale=scale).save(output)
    packed = pack_bits(bits.cpu()).numpy()
    for path, row in zip(bits_paths, packed):
        path.write_bytes(row.tobytes())
    print(
        f"{label}: {type(pipe).__name__}, {len(prompts)} image(s) of {bits.shape[1]} tokens x {bits.shape[2]} bits "
        f"({packed.shape[1]} bytes each) -> {images[0].size[0]}x{images[0].size[1]} in {time.time() - started:.1f}s\n"
        f"saved {output} and {len(bits_paths)} .bits file(s) ({bits_paths[0].name}"
        + (f" ... {bits_paths[-1].name})" if len(bits_paths) > 1 else ")")
    )


def cmd_demo(args) -> None:
    from .presets import build_pipeline, preset_path

    started = time.time()
    prompts = list(args.prompt) if args.prompt else list(DEMO_PROMPTS)
    if args.preset is not None:  # random weights from an architecture preset (smoke test of the plumbing)
        pipe = build_pipeline(args.preset, args.kind, seed=0)
        label = f"demo ({args.preset} preset, random weights)"
    else:
        from .pipelines import InstellaARPipeline, InstellaT2IPipeline

        model = args.model or str(preset_path(SHIPPED_PIPELINES[args.kind]))
        cls = InstellaT2IPipeline if args.kind == "diffusion" else InstellaARPipeline
        pipe = cls.from_pretrained(model)
        label = f"demo ({Path(model).name}, trained offline model)"
    pipe.set_progress_bar_config(disable=True)
    _save_outputs(pipe, args, prompts, label, started)


def cmd_generate(args) -> None:
    import torch

    from .pipelines import InstellaARPipeline, InstellaT2IPipeline

    started = time.time()
    output = Path(args.output)
    _refuse_existing(output, args.overwrite)
    cls = InstellaT2IPipeline if args.kind == "diffusion" else InstellaARPipeline
    pipe = cls.from_pretrained(args.model, torch_dtype=_dtype(args.dtype) or torch.float32)
    if args.device:
        pipe.to(args.device)
    _save_outputs(pipe, args, list(args.prompt), args.model, started)


def cmd_convert(args) -> None:
    from .conversion import convert_checkpoint_dir, convert_to_pipelines

    overrides = json.loads(Path(args.config_overrides).read_text()) if args.config_overrides else None
    if args.text_encoder:
        written = convert_to_pipelines(args.checkpoint_dir, args.output_dir, args.text_encoder, overrides,
                                       dtype=_dtype(args.dtype), overwrite=args.overwrite)  # fmt: skip
    else:
        written = convert_checkpoint_dir(args.checkpoint_dir, args.output_dir, overrides, dtype=_dtype(args.dtype),
                                         overwrite=args.overwrite)  # fmt: skip
    for name, folder in written.items():
        print(f"{name}: {folder}")


def _load_image_tokenizer(path: str):
    """A `BinaryLatentTokenizer` from a tokenizer folder or repo, or a pipeline with an `image_tokenizer` subfolder
    (resolved by the training code's component loader)."""
    from .training.components import load_image_tokenizer, plan_components

    root = Path(path)
    if root.is_dir() and not any((root / sub / "config.json").is_file() for sub in ("", "image_tokenizer")):
        raise ValueError(f"{path} holds neither an image tokenizer (config.json) nor an image_tokenizer/ subfolder")
    return load_image_tokenizer(plan_components("diffusion", image_tokenizer=path, need_generator=False))


def cmd_eval_reconstruction(args) -> None:
    from .evaluation.reconstruction import (
        evaluate_reconstruction,
        format_reconstruction_report,
        load_image_folder,
        real_photographs,
    )

    if not args.shapes_dir and not args.photos:
        raise ValueError("nothing to evaluate: pass --shapes_dir DIR and/or --photos")
    if args.output:
        _refuse_existing(Path(args.output), args.overwrite)
    tokenizer = _load_image_tokenizer(args.image_tokenizer)
    if args.dtype not in (None, "keep"):
        tokenizer.to(_dtype(args.dtype))
    if args.device:
        tokenizer.to(args.device)
    datasets = {}
    if args.shapes_dir:
        folder = Path(args.shapes_dir)
        folder = folder / args.split if (folder / args.split).is_dir() else folder
        datasets["shapes"] = load_image_folder(folder, args.num_images)
        if not datasets["shapes"]:
            raise ValueError(f"no PNG or JPEG images in {folder}")
    if args.photos:
        photos = real_photographs()
        if not photos:
            raise ValueError("no offline photographs found: `pip install scikit-image` (or scikit-learn, matplotlib)")
        datasets["photos"] = dict(list(photos.items())[: args.num_images])
    report = {"image_tokenizer": str(args.image_tokenizer), "datasets": {}}
    for name, images in datasets.items():
        report["datasets"][name] = evaluate_reconstruction(
            tokenizer, images, resolutions=args.resolutions, batch_size=args.batch_size, input_size=args.input_size,
            inception_weights=args.inception_weights, lpips_weights=args.lpips_weights, clip_model=args.clip_model,
        )  # fmt: skip
    print(format_reconstruction_report(report), end="")
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
        print(f"saved {output}")


def cmd_shapes_data(args) -> None:
    from .evaluation import write_shapes_dataset

    result = write_shapes_dataset(args.output_dir, num_train=args.num_train, num_validation=args.num_validation,
                                  num_test=args.num_test, size=args.size, seed=args.seed,
                                  overwrite=args.overwrite)  # fmt: skip
    counts = result["counts"]
    print(f"wrote {counts['train']} train, {counts['validation']} validation and {counts['test']} test images "
          f"({args.size}x{args.size}) to {result['output_dir']} in {result['seconds']:.1f}s")  # fmt: skip


def cmd_shapes_eval(args) -> None:
    from .evaluation import evaluate_images, format_report

    folder = Path(args.images_dir)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise ValueError(f"{metadata} not found: --images_dir needs a metadata.jsonl with `file_name` and `text`")
    if args.output:
        _refuse_existing(Path(args.output), args.overwrite)
    records = []
    for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "file_name" not in row or not (row.get("text") or row.get("spec")):
            raise ValueError(f"{metadata}, line {number}: every row needs `file_name` and `text` (or `spec`)")
        if not (folder / row["file_name"]).is_file():
            raise ValueError(f"{metadata}, line {number}: {folder / row['file_name']} does not exist")
        records.append({"image": str(folder / row["file_name"]), "file_name": row["file_name"],
                        "text": row.get("text"), "spec": row.get("spec")})  # fmt: skip
    if not records:
        raise ValueError(f"{metadata} lists no images")
    report = evaluate_images(records)
    print(format_report(report))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
        print(f"saved {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-bit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def sampling(p, default_output, default_prompt):
        p.add_argument("--prompt", nargs="+", default=default_prompt,
                       help="one or more prompts (one image each; several make a captioned grid)")
        p.add_argument("--kind", choices=["diffusion", "ar"], default="diffusion")
        p.add_argument("--output", default=default_output, help="PNG path; the packed bits go next to it (.bits)")
        p.add_argument("--size", type=int, default=None, help="decode resolution (default: the largest supported)")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--guidance_scale", type=float, default=None)
        p.add_argument("--temperature", type=float, default=None)
        p.add_argument("--algorithm", choices=["simplified", "posterior"], default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    demo = sub.add_parser("demo", help="generate offline with the shipped shapes-world models (captioned grid + bits)")
    sampling(demo, "outputs/demo.png", None)
    demo.add_argument("--model", default=None,
                      help="pipeline folder (default: the shipped pipelines/shapes-64-diffusion or shapes-64-ar)")
    demo.add_argument("--preset", default=None,
                      help="instead of trained weights, random weights from this architecture preset (e.g. tiny)")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="generate with a saved pipeline folder or Hub repo id")
    gen.add_argument("--model", required=True)
    sampling(gen, "outputs/image.png", ["a lighthouse on a cliff at sunset, oil painting"])
    gen.add_argument("--dtype", choices=list(DTYPES), default="float32")
    gen.add_argument("--device", default=None)
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="convert the authors' checkpoints (amd/Instella-T2I) to diffusers")
    conv.add_argument("--checkpoint_dir", required=True, help="folder with bae/model.safetensors, diffusion.pt, ar.pt")
    conv.add_argument("--output_dir", required=True)
    conv.add_argument("--text_encoder", default=None,
                      help="e.g. amd/AMD-OLMo-1B: also write complete pipeline folders with this text encoder")
    conv.add_argument("--dtype", choices=["keep", *DTYPES], default="keep")
    conv.add_argument("--config_overrides", default=None, help="JSON file {component: {config entries}}")
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(func=cmd_convert)

    rec = sub.add_parser("eval-reconstruction", help="PSNR/SSIM (and rFID/LPIPS/CLIP-I with local weights) of the "
                         "image tokenizer at every decode resolution")  # fmt: skip
    rec.add_argument("--image_tokenizer", required=True, help="tokenizer folder, or a pipeline folder")
    rec.add_argument("--shapes_dir", default=None, help="folder of PNG images (its --split subfolder if present)")
    rec.add_argument("--split", default="test", help="subfolder of --shapes_dir to read when it exists")
    rec.add_argument("--photos", action="store_true", help="also the photographs shipped in installed wheels")
    rec.add_argument("--resolutions", type=int, nargs="+", default=None, help="default: all supported sizes")
    rec.add_argument("--input_size", type=int, default=None, help="encoder input size (default: smallest supported)")
    rec.add_argument("--num_images", type=int, default=None, help="at most this many images per data set")
    rec.add_argument("--batch_size", type=int, default=8)
    rec.add_argument("--output", default=None, help="JSON report path")
    rec.add_argument("--overwrite", action="store_true")
    rec.add_argument("--inception_weights", default=None, help="TorchScript Inception file for rFID")
    rec.add_argument("--lpips_weights", default=None, help="LPIPS-VGG weights (folder or file) for LPIPS")
    rec.add_argument("--clip_model", default=None, help="local transformers CLIP folder for CLIP image similarity")
    rec.add_argument("--dtype", choices=["keep", *DTYPES], default="keep")
    rec.add_argument("--device", default=None)
    rec.set_defaults(func=cmd_eval_reconstruction)

    sdata = sub.add_parser("shapes-data", help="write the shapes-world data set (imagefolder, train/validation/test)")
    sdata.add_argument("--output_dir", required=True)
    sdata.add_argument("--num_train", type=int, default=20000)
    sdata.add_argument("--num_validation", type=int, default=600)
    sdata.add_argument("--num_test", type=int, default=600)
    sdata.add_argument("--size", type=int, default=64, help="image side in pixels (>= 32)")
    sdata.add_argument("--seed", type=int, default=0)
    sdata.add_argument("--overwrite", action="store_true", help="replace the shapes data in a non-empty --output_dir")
    sdata.set_defaults(func=cmd_shapes_data)

    seval = sub.add_parser("shapes-eval", help="ShapesEval (GenEval-style) of a folder of shapes-world images")
    seval.add_argument("--images_dir", required=True,
                       help="folder with the PNGs and a metadata.jsonl (file_name, text)")  # fmt: skip
    seval.add_argument("--output", default=None, help="JSON report path")
    seval.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    seval.set_defaults(func=cmd_shapes_eval)
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
