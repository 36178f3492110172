# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
"""`diffusers-bit` command line: `demo` (offline, no downloads), `generate`, `convert`."""

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


def _save_outputs(pipe, args, prompt_label: str, started: float) -> None:
    import torch

    from .utils import pack_bits

    generator = torch.Generator().manual_seed(args.seed)
    kwargs = dict(guidance_scale=args.guidance_scale, temperature=args.temperature, output_type="latent",
                  generator=generator)  # fmt: skip
    if hasattr(pipe, "scheduler"):
        kwargs.update(num_inference_steps=args.steps, algorithm=args.algorithm)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    bits = pipe(args.prompt, **kwargs).images
    image = pipe.decode_latents(bits, args.size, args.size)[0]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save(output)
    bits_path = output.with_suffix(".bits")
    bits_path.write_bytes(pack_bits(bits.cpu())[0].numpy().tobytes())
    print(
        f"{prompt_label}: {type(pipe).__name__}, {bits.shape[1]} tokens x {bits.shape[2]} bits "
        f"({bits_path.stat().st_size} bytes) -> {image.size[0]}x{image.size[1]} image in {time.time() - started:.1f}s\n"
        f"saved {output} and {bits_path}"
    )


def cmd_demo(args) -> None:
    from .presets import build_pipeline

    started = time.time()
    output = Path(args.output)
    _refuse_existing(output, args.overwrite)
    pipe = build_pipeline(args.preset, args.kind, seed=0)
    pipe.set_progress_bar_config(disable=True)
    _save_outputs(pipe, args, f"demo ({args.preset} preset, random weights)", started)


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
    _save_outputs(pipe, args, args.model, started)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusers-bit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def sampling(p, default_output):
        p.add_argument("--prompt", default="a lighthouse on a cliff at sunset, oil painting")
        p.add_argument("--kind", choices=["diffusion", "ar"], default="diffusion")
        p.add_argument("--output", default=default_output, help="PNG path; the packed bits go next to it (.bits)")
        p.add_argument("--size", type=int, default=None, help="decode resolution (default: the largest supported)")
        p.add_argument("--steps", type=int, default=20)
        p.add_argument("--guidance_scale", type=float, default=None)
        p.add_argument("--temperature", type=float, default=None)
        p.add_argument("--algorithm", choices=["simplified", "posterior"], default=None)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    demo = sub.add_parser("demo", help="generate offline with the embedded tiny preset (random weights)")
    sampling(demo, "outputs/demo.png")
    demo.add_argument("--preset", default="tiny")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="generate with a saved pipeline folder or Hub repo id")
    gen.add_argument("--model", required=True)
    sampling(gen, "outputs/image.png")
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
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
