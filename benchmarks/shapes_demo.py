#!/usr/bin/env python
# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Speed of the shipped shapes-world pipelines (the offline demo) on this machine: 8 images of 20 diffusion steps
plus the 64 px decode, and 8 AR images with the KV cache, in float32 (the tiny models' fastest dtype on a CPU).
Targets (issue 17): each <= 2 s on 2 CPU cores.

    python benchmarks/shapes_demo.py [--threads 2] [--repeats 3] [--output outputs/shapes_demo.json]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diffusers_bit import InstellaARPipeline, InstellaT2IPipeline
from diffusers_bit.cli import DEMO_PROMPTS, SHIPPED_PIPELINES
from diffusers_bit.presets import preset_path
from diffusers_bit.utils.hardware import describe_cpu

TARGET_S = 2.0


def time_call(fn, repeats: int) -> float:
    fn()  # warm-up (first-call allocations, lazy initialisation)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=None, help="JSON results path")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = list(DEMO_PROMPTS)
    rows = {}
    for kind, cls in (("diffusion", InstellaT2IPipeline), ("ar", InstellaARPipeline)):
        folder = preset_path(SHIPPED_PIPELINES[kind])
        pipe = cls.from_pretrained(str(folder))
        pipe.set_progress_bar_config(disable=True)
        kwargs = {"num_inference_steps": 20} if kind == "diffusion" else {"use_kv_cache": True}

        def run():
            generators = [torch.Generator().manual_seed(k) for k in range(len(prompts))]
            return pipe(prompts, generator=generators, output_type="pil", **kwargs).images

        seconds = time_call(run, args.repeats)
        rows[kind] = {
            "images": len(prompts),
            "seconds": round(seconds, 3),
            "target_s": TARGET_S,
            "status": "pass" if seconds <= TARGET_S else "fail",
        }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.node(),
        "cpu": describe_cpu(),
        "torch": torch.__version__,
        "dtype": "float32",
        "results": rows,
    }
    print(f"{result['cpu']}")
    for kind, row in rows.items():
        print(f"{kind}: {row['images']} images in {row['seconds']:.3f} s (target <= {TARGET_S} s): {row['status']}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
