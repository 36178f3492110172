# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""`diffusers-bit` command line: `demo` (offline, no downloads), `generate`, `convert` and the evaluations."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .utils.dtypes import DTYPE_NAMES, dtype_from_name, dtype_name


def _dtype(name):
    return None if name in (None, "keep") else dtype_from_name(name)


def _refuse_existing(path: Path, overwrite: bool, suffixes=None, name: str = "--output") -> Path:
    """Check an output path before any work (extension, parent folder, existing file): see `check_output_path`."""
    from .utils.checks import check_output_path

    return check_output_path(name, path, suffixes, overwrite)


def _write_json(path: Path, report: dict, overwrite: bool) -> None:
    from .utils.checks import write_file_atomically

    write_file_atomically(path, (json.dumps(report, indent=2) + "\n").encode("utf-8"), overwrite)
    print(f"saved {path}")


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
# what `demo` samples the shipped models with unless a flag says otherwise: the best setting of the validation-caption
# sweeps (training_scripts/evaluate_shapes_models.py, 2026-11-29; the pipelines' own defaults are the paper's)
SHIPPED_SAMPLING = {
    "diffusion": {"algorithm": "posterior", "guidance_scale": 3.0, "temperature": 0.3},
    "ar": {"guidance_scale": 3.0},
}


def _sample_bits(pipe, prompts: list, args):
    import torch

    generators = [torch.Generator().manual_seed(args.seed + k) for k in range(len(prompts))]
    kwargs = dict(
        guidance_scale=args.guidance_scale, temperature=args.temperature, output_type="latent", generator=generators
    )
    if hasattr(pipe, "scheduler"):
        kwargs.update(num_inference_steps=args.steps, algorithm=args.algorithm)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return pipe(list(prompts), **kwargs).images


def _bits_paths(output: Path, count: int) -> list:
    return (
        [output.with_suffix(".bits")]
        if count == 1
        else [output.with_name(f"{output.stem}-{k}.bits") for k in range(count)]
    )


def _save_outputs(pipe, args, prompts: list, label: str, started: float) -> None:
    from .codec import encode_bits_file, tokenizer_fingerprint
    from .utils.checks import image_bytes, write_file_atomically
    from .utils.image_grid import image_grid

    output = Path(args.output)
    bits_paths = _bits_paths(output, len(prompts))
    bits = _sample_bits(pipe, prompts, args)
    images = pipe.decode_latents(bits, args.size, args.size)
    if len(images) == 1:
        picture = images[0]
    else:
        scale = max(1, 128 // images[0].size[0])
        picture = image_grid(images, cols=min(4, len(images)), captions=prompts, scale=scale)
    fingerprint = tokenizer_fingerprint(pipe.image_tokenizer)
    files = [encode_bits_file(row, fingerprint) for row in bits.cpu()]
    written = []
    try:
        for path, data in [(output, image_bytes(picture, output)), *zip(bits_paths, files)]:
            written.append(write_file_atomically(path, data, args.overwrite))
    except FileExistsError:
        for path in written if not args.overwrite else []:  # all or nothing: remove what this command created
            path.unlink()
        raise
    print(
        f"{label}: {type(pipe).__name__}, {len(prompts)} image(s) of {bits.shape[1]} tokens x {bits.shape[2]} bits "
        f"({len(files[0])}-byte .bits files) -> {images[0].size[0]}x{images[0].size[1]} in "
        f"{time.time() - started:.1f}s\n"
        f"saved {output} and {len(bits_paths)} .bits file(s) ({bits_paths[0].name}"
        + (f" ... {bits_paths[-1].name})" if len(bits_paths) > 1 else ")")
    )


def _check_sampling_outputs(args, count: int) -> None:
    """Before any model loads: the image path (extension, parent) and every .bits path next to it."""
    from .utils.checks import IMAGE_SUFFIXES

    output = _refuse_existing(Path(args.output), args.overwrite, IMAGE_SUFFIXES)
    for path in _bits_paths(output, count):
        _refuse_existing(path, args.overwrite)


def cmd_demo(args) -> None:
    from .presets import build_pipeline, preset_path

    started = time.time()
    prompts = list(args.prompt) if args.prompt else list(DEMO_PROMPTS)
    _check_sampling_outputs(args, len(prompts))
    if args.preset is not None:  # random weights from an architecture preset (smoke test of the plumbing)
        pipe = build_pipeline(args.preset, args.kind, seed=0)
        label = f"demo ({args.preset} preset, random weights)"
    else:
        from .pipelines import InstellaARPipeline, InstellaT2IPipeline

        model = args.model or str(preset_path(SHIPPED_PIPELINES[args.kind]))
        cls = InstellaT2IPipeline if args.kind == "diffusion" else InstellaARPipeline
        pipe = cls.from_pretrained(model)
        label = f"demo ({Path(model).name}, trained offline model)"
        if args.model is None:
            for name, value in SHIPPED_SAMPLING[args.kind].items():
                if getattr(args, name, None) is None:
                    setattr(args, name, value)
    pipe.set_progress_bar_config(disable=True)
    _save_outputs(pipe, args, prompts, label, started)


def cmd_generate(args) -> None:
    from .pipelines import InstellaARPipeline, InstellaT2IPipeline
    from .utils.checks import check_device

    started = time.time()
    _check_sampling_outputs(args, len(args.prompt))
    device = check_device("--device", args.device)
    cls = InstellaT2IPipeline if args.kind == "diffusion" else InstellaARPipeline
    if args.dtype == "auto":
        from .utils.hardware import preferred_dtype

        dtype = preferred_dtype(device)
        print(f"--dtype auto: {dtype_name(dtype)} on {device or 'cpu'}")
    else:
        dtype = _dtype(args.dtype)
    pipe = cls.from_pretrained(args.model, dtype=dtype)
    if device is not None:
        pipe.to(device)
    _save_outputs(pipe, args, list(args.prompt), args.model, started)


def cmd_convert(args) -> None:
    from .conversion import convert_checkpoint_dir, convert_to_pipelines
    from .utils.checks import read_json_file

    overrides = read_json_file(args.config_overrides, "--config_overrides") if args.config_overrides else None
    if args.text_encoder:
        written = convert_to_pipelines(
            args.checkpoint_dir,
            args.output_dir,
            args.text_encoder,
            overrides,
            dtype=_dtype(args.dtype),
            overwrite=args.overwrite,
        )
    else:
        written = convert_checkpoint_dir(
            args.checkpoint_dir, args.output_dir, overrides, dtype=_dtype(args.dtype), overwrite=args.overwrite
        )
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
    from .utils.checks import check_device

    if args.output:
        _refuse_existing(Path(args.output), args.overwrite, {".json"})
    device = check_device("--device", args.device)
    tokenizer = _load_image_tokenizer(args.image_tokenizer)
    if args.dtype not in (None, "keep"):
        tokenizer.to(_dtype(args.dtype))
    if device is not None:
        tokenizer.to(device)
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
            tokenizer,
            images,
            resolutions=args.resolutions,
            batch_size=args.batch_size,
            input_size=args.input_size,
            inception_weights=args.inception_weights,
            lpips_weights=args.lpips_weights,
            clip_model=args.clip_model,
        )
    print(format_reconstruction_report(report), end="")
    if args.codec:
        from .evaluation.reconstruction import format_rate_distortion, rate_distortion

        for name, images in datasets.items():
            report["datasets"][name]["rate_distortion"] = rd = rate_distortion(tokenizer, images, args.input_size)
            print(f"\n{name}: " + format_rate_distortion(rd), end="")
    if args.output:
        _write_json(Path(args.output), report, args.overwrite)


def cmd_shapes_data(args) -> None:
    from .evaluation import write_shapes_dataset

    result = write_shapes_dataset(
        args.output_dir,
        num_train=args.num_train,
        num_validation=args.num_validation,
        num_test=args.num_test,
        size=args.size,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    counts = result["counts"]
    print(
        f"wrote {counts['train']} train, {counts['validation']} validation and {counts['test']} test images "
        f"({args.size}x{args.size}) to {result['output_dir']} in {result['seconds']:.1f}s"
    )


def _codec_outputs(inputs: list, output_dir: str, suffix: str, overwrite: bool) -> list:
    """One output path per input (`<output_dir>/<stem><suffix>`), all checked before any work."""
    from .utils.checks import check_output_path

    folder = Path(output_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o/--output_dir {output_dir!r} is a file, not a folder")
    stems = [Path(p).stem for p in inputs]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several inputs share the file name(s) {duplicates}; their outputs would collide")
    return [check_output_path("--output_dir", folder / f"{stem}{suffix}", overwrite=overwrite) for stem in stems]


def cmd_encode(args) -> None:
    import numpy as np
    import torch

    from .codec import save_bits
    from .training.data import SkipSample, load_image, resize_and_center_crop

    outputs = _codec_outputs(args.images, args.output_dir, ".bits", args.overwrite)
    for path in args.images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist")
    tokenizer = _load_image_tokenizer(args.image_tokenizer)
    size = args.size or min(tokenizer.supported_sizes or [tokenizer.default_size])
    tokenizer.check_size("--size", size, 2 ** len(tokenizer.config.encoder_downsample_blocks))
    for path, output in zip(args.images, outputs):
        try:
            image = load_image(str(path))
        except SkipSample as skip:
            raise ValueError(f"{path} cannot be read as an image ({skip})") from None
        array = np.asarray(resize_and_center_crop(image, size), dtype=np.uint8)  # the training preprocessing
        pixels = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            bits = tokenizer.encode(pixels.to(tokenizer.device, tokenizer.dtype), sample=False).bits
        save_bits(output, bits[0], tokenizer, args.overwrite)
        print(f"{path} -> {output} ({output.stat().st_size} bytes)")


def cmd_decode(args) -> None:
    import torch

    from .codec import load_bits
    from .utils.checks import image_bytes, write_file_atomically
    from .utils.pil_images import tensor_to_pil

    outputs = _codec_outputs(args.bits, args.output_dir, ".png", args.overwrite)
    tokenizer = _load_image_tokenizer(args.image_tokenizer)
    size = args.size or tokenizer.default_size
    tokenizer._output_size(size, size)  # validates the size before decoding
    bits = load_bits(args.bits, tokenizer)  # every file checked (format, tokenizer) before any is decoded
    for row, path, output in zip(bits, args.bits, outputs):
        with torch.no_grad():
            image = tensor_to_pil(tokenizer.decode(row[None], size, size).sample)[0]
        write_file_atomically(output, image_bytes(image, output), args.overwrite)
        print(f"{path} -> {output} ({size}x{size})")


def cmd_shapes_eval(args) -> None:
    from .evaluation import evaluate_images, format_report

    folder = Path(args.images_dir)
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise ValueError(f"{metadata} not found: --images_dir needs a metadata.jsonl with `file_name` and `text`")
    if args.output:
        _refuse_existing(Path(args.output), args.overwrite, {".json"})
    from .utils.checks import read_metadata_rows

    records = []
    for row in read_metadata_rows(metadata, need_caption=True):
        if not (folder / row["file_name"]).is_file():  # a wrong list is an error; an unreadable image is skipped
            raise ValueError(f"{metadata}: {folder / row['file_name']} does not exist")
        records.append(
            {
                "image": str(folder / row["file_name"]),
                "file_name": row["file_name"],
                "text": row.get("text"),
                "spec": row.get("spec"),
            }
        )
    if not records:
        raise ValueError(f"{metadata} lists no images")
    report = evaluate_images(records, skip_unreadable=True)
    print(format_report(report))
    if report.get("skipped"):
        print(f"skipped {len(report['skipped'])} unreadable image(s): " + ", ".join(report["skipped"][:5]))
    if args.output:
        _write_json(Path(args.output), report, args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-bit", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help=f"show the Python traceback of a failure (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure"
    )

    def sampling(p, default_output, default_prompt):
        p.add_argument(
            "--prompt",
            nargs="+",
            default=default_prompt,
            help="one or more prompts (one image each; several make a captioned grid)",
        )
        p.add_argument("--kind", choices=["diffusion", "ar"], default="diffusion")
        p.add_argument("--output", default=default_output, help="PNG path; the packed bits go next to it (.bits)")
        p.add_argument("--size", type=int, default=None, help="decode resolution (default: the largest supported)")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--guidance_scale", type=float, default=None)
        p.add_argument("--temperature", type=float, default=None)
        p.add_argument("--algorithm", choices=["simplified", "posterior"], default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    demo = sub.add_parser(
        "demo", parents=[common], help="generate offline with the shipped shapes-world models (captioned grid + bits)"
    )
    sampling(demo, "outputs/demo.png", None)
    demo.add_argument(
        "--model",
        default=None,
        help="pipeline folder (default: the shipped pipelines/shapes-64-diffusion or shapes-64-ar)",
    )
    demo.add_argument(
        "--preset",
        default=None,
        help="instead of trained weights, random weights from this architecture preset (e.g. tiny)",
    )
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", parents=[common], help="generate with a saved pipeline folder or Hub repo id")
    gen.add_argument("--model", required=True)
    sampling(gen, "outputs/image.png", ["a lighthouse on a cliff at sunset, oil painting"])
    gen.add_argument(
        "--dtype",
        choices=["auto", *DTYPE_NAMES],
        default="auto",
        help="auto (default): bfloat16 on GPUs and on CPUs with bf16 matrix instructions (AVX512-BF16/AMX), "
        "float32 on other CPUs, where bf16 matrix products are several times slower",
    )
    gen.add_argument("--device", default=None)
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser(
        "convert", parents=[common], help="convert the authors' checkpoints (amd/Instella-T2I) to diffusers"
    )
    conv.add_argument("--checkpoint_dir", required=True, help="folder with bae/model.safetensors, diffusion.pt, ar.pt")
    conv.add_argument("--output_dir", required=True)
    conv.add_argument(
        "--text_encoder",
        default=None,
        help="e.g. amd/AMD-OLMo-1B: also write complete pipeline folders with this text encoder",
    )
    conv.add_argument("--dtype", choices=["keep", *DTYPE_NAMES], default="keep")
    conv.add_argument("--config_overrides", default=None, help="JSON file {component: {config entries}}")
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(func=cmd_convert)

    rec = sub.add_parser(
        "eval-reconstruction",
        parents=[common],
        help="PSNR/SSIM (and rFID/LPIPS/CLIP-I with local weights) of the image tokenizer at every decode resolution",
    )
    rec.add_argument("--image_tokenizer", required=True, help="tokenizer folder, or a pipeline folder")
    rec.add_argument("--shapes_dir", default=None, help="folder of PNG images (its --split subfolder if present)")
    rec.add_argument("--split", default="test", help="subfolder of --shapes_dir to read when it exists")
    rec.add_argument("--photos", action="store_true", help="also the photographs shipped in installed wheels")
    rec.add_argument("--resolutions", type=int, nargs="+", default=None, help="default: all supported sizes")
    rec.add_argument("--input_size", type=int, default=None, help="encoder input size (default: smallest supported)")
    rec.add_argument("--num_images", type=int, default=None, help="at most this many images per data set")
    rec.add_argument("--batch_size", type=int, default=8)
    rec.add_argument(
        "--codec",
        action="store_true",
        help="also a rate-distortion table: the .bits code beside JPEG and WebP at the nearest file size",
    )
    rec.add_argument("--output", default=None, help="JSON report path")
    rec.add_argument("--overwrite", action="store_true")
    rec.add_argument(
        "--inception_weights",
        default=None,
        help="TorchScript Inception file for rFID. Loading TorchScript runs code from the file: pass only "
        "files you trust (e.g. the pt_inception-2015-12-05 file of pytorch-fid)",
    )
    rec.add_argument("--lpips_weights", default=None, help="LPIPS-VGG weights (folder or file) for LPIPS")
    rec.add_argument("--clip_model", default=None, help="local transformers CLIP folder for CLIP image similarity")
    rec.add_argument("--dtype", choices=["keep", *DTYPE_NAMES], default="keep")
    rec.add_argument("--device", default=None)
    rec.set_defaults(func=cmd_eval_reconstruction)

    enc = sub.add_parser("encode", parents=[common], help="encode images to .bits files (the tokenizer as a codec)")
    enc.add_argument("images", nargs="+", help="image files")
    enc.add_argument("--image_tokenizer", required=True, help="tokenizer folder or repo, or a pipeline folder")
    enc.add_argument("-o", "--output_dir", required=True, help="folder for <image name>.bits")
    enc.add_argument("--size", type=int, default=None, help="encoder input side (default: the smallest supported)")
    enc.add_argument("--overwrite", action="store_true")
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", parents=[common], help="render .bits files as PNG images")
    dec.add_argument("bits", nargs="+", help=".bits files made by the same tokenizer")
    dec.add_argument("--image_tokenizer", required=True, help="the tokenizer that made the bits (checked)")
    dec.add_argument("-o", "--output_dir", required=True, help="folder for <name>.png")
    dec.add_argument("--size", type=int, default=None, help="output side (default: the largest supported)")
    dec.add_argument("--overwrite", action="store_true")
    dec.set_defaults(func=cmd_decode)

    sdata = sub.add_parser(
        "shapes-data", parents=[common], help="write the shapes-world data set (imagefolder, train/validation/test)"
    )
    sdata.add_argument("--output_dir", required=True)
    sdata.add_argument("--num_train", type=int, default=20000)
    sdata.add_argument("--num_validation", type=int, default=600)
    sdata.add_argument("--num_test", type=int, default=600)
    sdata.add_argument("--size", type=int, default=64, help="image side in pixels (>= 32)")
    sdata.add_argument("--seed", type=int, default=0)
    sdata.add_argument("--overwrite", action="store_true", help="replace the shapes data in a non-empty --output_dir")
    sdata.set_defaults(func=cmd_shapes_data)

    seval = sub.add_parser(
        "shapes-eval", parents=[common], help="ShapesEval (GenEval-style) of a folder of shapes-world images"
    )
    seval.add_argument(
        "--images_dir", required=True, help="folder with the PNGs and a metadata.jsonl (file_name, text)"
    )
    seval.add_argument("--output", default=None, help="JSON report path")
    seval.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    seval.set_defaults(func=cmd_shapes_eval)
    return parser


DEBUG_ENV = "DIFFUSERS_BIT_DEBUG"


def main(argv=None) -> None:
    r"""Run a subcommand. Any failure is reported as one line on stderr (`error: ...`) with exit status 1 (2 for bad
    flags, from argparse); `--debug` or `DIFFUSERS_BIT_DEBUG=1` shows the traceback instead."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    try:
        args.func(args)
    except KeyboardInterrupt:
        sys.exit("error: interrupted")
    except Exception as err:  # noqa: BLE001 (the command line turns every failure into one line)
        if debug:
            raise
        sys.exit(f"error: {_one_line(err)}")


def _one_line(err: BaseException) -> str:
    """The message of an exception on one line, with its type when the message alone would be unclear."""
    message = " ".join(str(err).split()) or type(err).__name__
    if "out of memory" in message.lower() or type(err).__name__ == "OutOfMemoryError":
        return f"out of memory: {message[:300]} (try a smaller --size, fewer prompts, or --dtype bfloat16)"
    if isinstance(err, (ValueError, TypeError, FileNotFoundError, FileExistsError)):
        return message
    return f"{type(err).__name__}: {message}"


if __name__ == "__main__":
    main()
