#!/usr/bin/env python
# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""LoRA fine-tuning on the shapes world's held-out compositions, measured: do the shipped generators learn the
compositions their training data never captioned, from a LoRA of a few hundred steps, and what do they forget?

    python training_scripts/shapes_lora_experiment.py --work_dir runs/shapes-64-lora              # diffusion
    python training_scripts/shapes_lora_experiment.py --work_dir runs/shapes-64-lora --models diffusion ar

1. Data: `write_shapes_dataset` writes `--num_images` images of the held-out compositions (its `test` split) with
   `--data_seed` (default 1). Record `i` of a split depends on `(seed, split, i)` only, so these are new pictures of
   the held-out captions, none of them an image of the evaluation data (seed 0).
2. Latents: `precompute_latents.py` encodes them with the pipeline's image tokenizer.
3. For each generator (`pipelines/shapes-64-diffusion`, `pipelines/shapes-64-ar`): ShapesEval of the shipped
   pipeline, `train_t2i.py @training_scripts/recipes/shapes-64-lora.args --use_lora ...`, and ShapesEval of the
   pipeline with the adapter (`load_lora_weights`), on the held-out test captions (`prompts_test.jsonl` of
   `--data_dir`) and on the validation captions (seen compositions: does the adapter make the model forget them?).
   ShapesEval's `overall` is the mean over its six categories; on the test captions two categories hold one caption
   each, so the report also gives the accuracy over all images. Beside it, the training loss (fixed noise) before
   and after, on fine-tuning records and on held-out images the adapter never saw (the test split of `--data_dir`):
   what the adapter learned, and whether it generalises or memorises.

Everything runs on `--threads` CPU threads (default 1); the report gives CPU seconds per stage, the adapter's size and
the steps. Finished stages are reused when the command runs again (delete `--work_dir` to start over). Writes
`<work_dir>/results.json` and `<work_dir>/results.md`.
"""

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECIPE = HERE / "recipes" / "shapes-64-lora.args"
BASES = {"diffusion": REPO / "pipelines" / "shapes-64-diffusion", "ar": REPO / "pipelines" / "shapes-64-ar"}
SPLITS = {"test": "held-out compositions (test captions)", "validation": "seen compositions (validation captions)"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "shapes-64-lora"))
    parser.add_argument(
        "--data_dir",
        default=str(REPO / "runs" / "shapes-64" / "data"),
        help="The shapes data set whose prompts_test.jsonl / prompts_validation.jsonl are evaluated.",
    )
    parser.add_argument("--models", nargs="+", choices=list(BASES), default=["diffusion"])
    parser.add_argument("--num_images", type=int, default=3000, help="Fine-tuning images of held-out compositions.")
    parser.add_argument(
        "--data_seed", type=int, default=1, help="Seed of the fine-tuning images (not 0: the data set's own seed)."
    )
    parser.add_argument("--images_per_prompt", type=int, default=2, help="ShapesEval images per caption.")
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every stage.")
    parser.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="Further train_t2i.py flags (after the recipe's), e.g. --extra --max_train_steps 100.",
    )
    args = parser.parse_args(argv)
    if args.data_seed == 0:
        parser.error("--data_seed 0 is the evaluation data's own seed: its test split is the evaluated images")
    for name in ("num_images", "images_per_prompt", "eval_batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def cpu_seconds(children: bool) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_script(args, name: str, argv: list, log: Path) -> dict:
    """Run `training_scripts/<name>` on `--threads` threads; returns its wall and CPU seconds."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    started, cpu = time.time(), cpu_seconds(children=True)
    with open(log, "w") as out:
        process = subprocess.run(
            [sys.executable, str(HERE / name), *map(str, argv)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO),
        )
    if process.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{name} failed (exit {process.returncode}); end of {log}:\n{tail}")
    return {"wall_s": round(time.time() - started, 1), "cpu_s": round(cpu_seconds(children=True) - cpu, 1)}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def summary(report: dict) -> dict:
    return {
        "overall": round(report["overall"], 4),
        "num_images": report["num_images"],
        "image_accuracy": round(report["num_correct"] / report["num_images"], 4),
        "categories": {c: round(v["accuracy"], 4) for c, v in report["categories"].items()},
    }


def loss_sets(args, store: Path, model: str, count: int = 512) -> dict:
    """Bits and captions of `count` fine-tuning records and of `count` held-out images never trained on (the test
    split of `--data_dir`, encoded with the pipeline's image tokenizer)."""
    import numpy as np
    import torch
    from PIL import Image

    from diffusers_bit import BinaryLatentTokenizer
    from diffusers_bit.training import LatentStore

    latents = LatentStore(str(store))
    records = list(range(min(count, len(latents))))
    folder = Path(args.data_dir) / "test"
    rows = [json.loads(line) for line in open(folder / "metadata.jsonl", encoding="utf-8")][:count]
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(folder / r["file_name"]).convert("RGB"))) for r in rows])
    tokenizer = BinaryLatentTokenizer.from_pretrained(str(BASES[model]), subfolder="image_tokenizer").eval()
    with torch.no_grad():
        unseen = tokenizer.encode(pixels.permute(0, 3, 1, 2).float() / 127.5 - 1, sample=False).bits.float()
    return {
        "fine-tuning records": (latents.bits(records).float(), [latents.caption(i) for i in records]),
        "held-out images never trained on": (unseen, [r["text"] for r in rows]),
    }


def mean_loss(pipe, model: str, bits, captions, batch: int = 128) -> float:
    """`train_t2i.py`'s loss (`generator_loss`) with fixed noise, averaged over batches."""
    import torch

    from diffusers_bit.training import encode_text, generator_loss

    kind = "diffusion" if model == "diffusion" else "ar"
    losses = []
    with torch.no_grad():
        for start in range(0, len(captions), batch):
            embeds, mask = encode_text(pipe, captions[start : start + batch], "cpu")
            loss, _ = generator_loss(
                kind,
                pipe.transformer,
                getattr(pipe, "scheduler", None),
                bits[start : start + batch],
                embeds,
                mask,
                torch.Generator().manual_seed(start),
            )
            losses.append(loss.item())
    return round(sum(losses) / len(losses), 5)


def evaluate(args, model: str, lora_dir=None, losses: Optional[dict] = None) -> dict:
    """ShapesEval of the shipped pipeline (with the adapter of `lora_dir`) on the test and validation captions, and
    its loss on `losses` (see [`loss_sets`])."""
    import torch

    from diffusers_bit import InstellaARPipeline, InstellaT2IPipeline
    from diffusers_bit.evaluation import evaluate_pipeline

    torch.set_num_threads(args.threads)
    started, cpu = time.time(), cpu_seconds(children=False)
    cls = InstellaT2IPipeline if model == "diffusion" else InstellaARPipeline
    pipe = cls.from_pretrained(str(BASES[model]))
    pipe.set_progress_bar_config(disable=True)
    if lora_dir is not None:
        pipe.load_lora_weights(str(lora_dir), adapter_name="shapes_held_out")
    out = {}
    for split in SPLITS:
        report, _ = evaluate_pipeline(
            pipe,
            Path(args.data_dir) / f"prompts_{split}.jsonl",
            images_per_prompt=args.images_per_prompt,
            seed=0,
            batch_size=args.eval_batch_size,
        )
        out[split] = summary(report)
    out["loss"] = {name: mean_loss(pipe, model, bits, captions) for name, (bits, captions) in (losses or {}).items()}
    out.update(
        wall_s=round(time.time() - started, 1),
        cpu_s=round(cpu_seconds(children=False) - cpu, 1),
        sampling=pipe.resolved_sampling_defaults(),
    )
    return out


def markdown(results: dict) -> str:
    lines = [
        f"# LoRA on held-out shapes compositions ({results['date']})",
        "",
        f"Fine-tuning data: {results['data']['num_images']} images of the held-out compositions "
        f"(`write_shapes_dataset` test split, seed {results['data']['seed']}); ShapesEval with "
        f"{results['images_per_prompt']} images per caption of `{results['data_dir']}`.",
        "",
        "| generator | captions | overall before | overall after | change | all images before | all images after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, r in results["models"].items():
        for split, label in SPLITS.items():
            before, after = r["before"][split], r["after"][split]
            lines.append(
                f"| {model} | {label} | {100 * before['overall']:.1f}% | {100 * after['overall']:.1f}% | "
                f"{100 * (after['overall'] - before['overall']):+.1f} pt | "
                f"{100 * before['image_accuracy']:.1f}% | {100 * after['image_accuracy']:.1f}% |"
            )
    lines += ["", "| generator | training loss on | before | after |", "| --- | --- | ---: | ---: |"]
    for model, r in results["models"].items():
        for name, value in r["before"]["loss"].items():
            lines.append(f"| {model} | {name} | {value:.4f} | {r['after']['loss'][name]:.4f} |")
    lines += [
        "",
        "| generator | category | test before | test after | validation before | validation after |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for model, r in results["models"].items():
        for category in r["before"]["test"]["categories"]:
            cells = [r[when][split]["categories"].get(category) for split in SPLITS for when in ("before", "after")]
            cells = ["-" if c is None else f"{100 * c:.1f}%" for c in cells]
            lines.append(f"| {model} | {category} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| generator | adapter | trained parameters | steps | train CPU s | eval CPU s (before + after) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for model, r in results["models"].items():
        a = r["adapter"]
        lines.append(
            f"| {model} | rank {a['rank']}, alpha {a['alpha']:g}, {a['bytes'] / 2**10:.0f} KiB "
            f"({100 * a['bytes'] / a['base_bytes']:.1f}% of the transformer file) | {a['parameters']} | "
            f"{r['steps']} | {r['train']['cpu_s']:.0f} | "
            f"{r['before']['cpu_s'] + r['after']['cpu_s']:.0f} |"
        )
    lines += [
        "",
        f"Total CPU time: {results['total_cpu_s']:.0f} s ({results['threads']} thread(s)); data "
        f"{results['data']['cpu_s']:.0f} s, latents {results['latents_cpu_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict:
    from safetensors import safe_open

    from diffusers_bit.evaluation import write_shapes_dataset

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    started_cpu = cpu_seconds(False) + cpu_seconds(True)

    # == 1. fine-tuning images of the held-out compositions, with a seed the evaluation data does not use ==
    data = work / "data"
    cpu = cpu_seconds(False)
    if not (data / "test" / "metadata.jsonl").is_file():
        write_shapes_dataset(
            data, num_train=0, num_validation=0, num_test=args.num_images, size=64, seed=args.data_seed, overwrite=True
        )
    data_info = {"num_images": args.num_images, "seed": args.data_seed, "cpu_s": round(cpu_seconds(False) - cpu, 1)}

    # == 2. latents, one store per distinct image tokenizer ==
    latents, latents_cpu = {}, 0.0
    for model in args.models:
        digest = file_digest(BASES[model] / "image_tokenizer" / "diffusion_pytorch_model.safetensors")
        store = work / f"latents-{digest}"
        if not (store / "header.json").is_file():
            latents_cpu += run_script(
                args,
                "precompute_latents.py",
                [
                    "--pretrained_model_name_or_path",
                    BASES[model],
                    "--train_data_dir",
                    data / "test",
                    "--resolution",
                    64,
                    "--output_dir",
                    store,
                    "--overwrite",
                    "--batch_size",
                    64,
                ],
                work / f"latents-{digest}.log",
            )["cpu_s"]
        latents[model] = store

    # == 3. per generator: evaluate, fine-tune a LoRA, evaluate with the adapter ==
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "data_dir": args.data_dir,
        "data": data_info,
        "images_per_prompt": args.images_per_prompt,
        "threads": args.threads,
        "recipe": str(RECIPE),
        "extra_flags": args.extra,
        "models": {},
    }
    for model in args.models:
        out = work / f"{model}-lora"
        losses = loss_sets(args, latents[model], model)
        before = evaluate(args, model, losses=losses)
        train = run_script(
            args,
            "train_t2i.py",
            [
                f"@{RECIPE}",
                "--model",
                model,
                "--pretrained_model_name_or_path",
                BASES[model],
                "--latents_dir",
                latents[model],
                "--output_dir",
                out,
                "--resume_from_checkpoint",
                "latest",
                *args.extra,
            ],
            work / f"{model}-lora.log",
        )
        weights = out / "pytorch_lora_weights.safetensors"
        with safe_open(str(weights), "pt") as f:
            config = json.loads(f.metadata()["lora_adapter_metadata"])
            parameters = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys())
        card = (out / "README.md").read_text()
        steps = int(card.split("**Steps:** ", 1)[1].split()[0])
        after = evaluate(args, model, out, losses=losses)
        base_file = BASES[model] / "transformer" / "diffusion_pytorch_model.safetensors"
        results["models"][model] = {
            "base": str(BASES[model].relative_to(REPO)),
            "base_transformer_sha256": file_digest(base_file),  # the shipped models change between rounds
            "before": before,
            "after": after,
            "train": train,
            "steps": steps,
            "adapter": {
                "file": str(weights),
                "bytes": weights.stat().st_size,
                "parameters": parameters,
                "rank": config["transformer.r"],
                "alpha": config["transformer.lora_alpha"],
                "target_modules": sorted(config["transformer.target_modules"]),
                "base_bytes": base_file.stat().st_size,
            },
        }
    results["latents_cpu_s"] = round(latents_cpu, 1)
    results["total_cpu_s"] = round(cpu_seconds(False) + cpu_seconds(True) - started_cpu, 1)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (work / "results.md").write_text(text)
    print(text)
    return results


if __name__ == "__main__":
    main(parse_args())
