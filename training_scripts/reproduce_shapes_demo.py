#!/usr/bin/env python
# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Reproduce the offline shapes-world models from nothing, on a CPU: data -> tokenizer -> latents -> diffusion -> AR
-> a second round of the AR generator (fine-tuned from round 1 with a fresh, lower cosine schedule) -> evaluation, each
stage with this repository's own scripts and the recipes in `training_scripts/recipes/`.

    python training_scripts/reproduce_shapes_demo.py --work_dir runs/shapes-64            # everything, resumable
    python training_scripts/reproduce_shapes_demo.py --work_dir runs/shapes-64 --status   # where each stage stands
    python training_scripts/reproduce_shapes_demo.py --work_dir runs/shapes-64 --only diffusion ar
    python training_scripts/reproduce_shapes_demo.py --work_dir runs/shapes-64 --ship     # copy into pipelines/

Every stage is resumable: run the same command again after an interruption and each training stage continues from
its latest checkpoint (`--resume_from_checkpoint latest`); finished stages are skipped. `--micro` runs the whole chain
at a tiny budget (a smoke test of the plumbing, not a model). Extra flags for one stage's script go after `--`
with the stage name, e.g. `--extra tokenizer=--max_train_steps=8000`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECIPES = HERE / "recipes"
STAGES = ("data", "tokenizer", "latents", "diffusion", "ar", "ar2", "evaluation")
# round 2 starts from round 1's final (EMA) pipeline. Only the AR model gets one: a diffusion round 2 (3,600 steps,
# lr 5e-4, 2026-11-29) scored lower on the validation captions than its round 1 at every sampling setting tried
ROUND2 = {"ar2": "ar"}
SHIPPED = {"tokenizer": "shapes-64-tokenizer", "diffusion": "shapes-64-diffusion", "ar": "shapes-64-ar"}
DATA_SEED = 0
# micro budget: the chain's plumbing in about a minute
MICRO = {
    "data": ["--num_train", "64", "--num_validation", "8", "--num_test", "8"],
    "tokenizer": [
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "4",
        "--train_batch_size",
        "8",
        "--lr_warmup_steps",
        "1",
    ],
    "generator": [
        "--max_train_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--validation_steps",
        "4",
        "--train_batch_size",
        "8",
        "--lr_warmup_steps",
        "1",
    ],
    "evaluation": ["--images_per_prompt", "1", "--max_prompts", "4", "--max_images", "8", "--img2img_images", "8"],
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", type=str, default="runs/shapes-64", help="Where every stage writes.")
    parser.add_argument("--only", nargs="+", choices=STAGES, default=None, help="Run only these stages.")
    parser.add_argument("--status", action="store_true", help="Print where each stage stands and exit.")
    parser.add_argument(
        "--ship",
        nargs="*",
        choices=list(SHIPPED),
        default=None,
        help="Copy the trained models (default: all three) into pipelines/shapes-64-{tokenizer,diffusion,"
        "ar}: weights stored in float16 (loaded as float32), a README with the commands, wall times "
        "and evaluation numbers, and a sample image; then exit.",
    )
    parser.add_argument("--micro", action="store_true", help="Tiny budget: checks the chain runs, trains nothing.")
    parser.add_argument("--num_train", type=int, default=60000, help="Shapes-world training images.")
    parser.add_argument("--threads", type=int, default=None, help="OMP/torch threads of each stage (default: all).")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="STAGE=FLAGS",
        help="Extra flags for one stage's script, e.g. tokenizer='--max_train_steps 8000'.",
    )
    args = parser.parse_args(argv)
    extra = {}
    for item in args.extra:
        stage, sep, flags = item.partition("=")
        if not sep or stage not in STAGES:
            raise SystemExit(f"error: --extra {item!r}: expected STAGE=FLAGS with STAGE one of {list(STAGES)}")
        extra.setdefault(stage, []).extend(flags.split())
    args.extra = extra
    return args


class Chain:
    """Paths, completion tests and commands of every stage under one work folder."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work_dir).resolve()
        self.data = self.work / "data"
        self.tokenizer = self.work / "tokenizer"
        self.latents = self.work / "latents"
        self.generators = {"diffusion": self.work / "diffusion", "ar": self.work / "ar", "ar2": self.work / "ar-2"}
        self.report = self.work / "evaluation.json"

    # -- state ---------------------------------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        if stage == "data":
            return (self.data / "test" / "metadata.jsonl").is_file()
        if stage == "tokenizer":
            return (self.tokenizer / "diffusion_pytorch_model.safetensors").is_file()
        if stage == "latents":
            from diffusers_bit.training.latent_store import HEADER

            return (self.latents / HEADER).is_file()
        if stage in self.generators:
            return (self.generators[stage] / "model_index.json").is_file()
        return self.report.is_file()

    def describe(self, stage: str) -> str:
        if self.done(stage):
            return "done"
        folder = {"tokenizer": self.tokenizer, **self.generators}.get(stage)
        if folder is not None and folder.is_dir():
            steps = sorted(
                int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
            )
            if steps:
                return f"in progress (checkpoint at step {steps[-1]})"
        return "not started"

    def status(self) -> str:
        rows = [f"{stage:<11} {self.describe(stage)}" for stage in STAGES]
        return f"shapes-world chain in {self.work}\n" + "\n".join(rows)

    def final(self, model: str):
        """The folder of a generator's last finished round (round 2 once it is done)."""
        second = self.generators.get(f"{model}2")
        return second if second is not None and (second / "model_index.json").is_file() else self.generators[model]

    # -- commands ------------------------------------------------------------------------------------------------
    def command(self, stage: str) -> list[str]:
        py, micro = sys.executable, self.args.micro
        if stage == "data":
            cmd = [
                py,
                "-m",
                "diffusers_bit",
                "shapes-data",
                "--output_dir",
                str(self.data),
                "--num_train",
                str(self.args.num_train),
                "--size",
                "64",
                "--seed",
                str(DATA_SEED),
                "--overwrite",
            ]
            return cmd + (MICRO["data"] if micro else [])
        validation = sorted((self.data / "validation").glob("*.png"))[:16]
        if stage == "tokenizer":
            cmd = [
                py,
                str(HERE / "train_tokenizer.py"),
                f"@{RECIPES / 'shapes-64-tokenizer.args'}",
                "--train_data_dir",
                str(self.data),
                "--output_dir",
                str(self.tokenizer),
                "--resume_from_checkpoint",
                "latest",
                "--validation_images",
                *map(str, validation),
            ]
            return cmd + (MICRO["tokenizer"] if micro else [])
        if stage == "latents":
            return [
                py,
                str(HERE / "precompute_latents.py"),
                "--image_tokenizer",
                str(self.tokenizer),
                "--train_data_dir",
                str(self.data),
                "--resolution",
                "64",
                "--output_dir",
                str(self.latents),
                "--overwrite",
            ]
        if stage in self.generators:
            recipe = f"shapes-64-{ROUND2[stage]}-round2.args" if stage in ROUND2 else f"shapes-64-{stage}.args"
            start = ["--pretrained_model_name_or_path", str(self.generators[ROUND2[stage]])] if stage in ROUND2 else []
            cmd = [
                py,
                str(HERE / "train_t2i.py"),
                f"@{RECIPES / recipe}",
                *start,
                "--image_tokenizer",
                str(self.tokenizer),
                "--latents_dir",
                str(self.latents),
                "--output_dir",
                str(self.generators[stage]),
                "--resume_from_checkpoint",
                "latest",
            ]
            return cmd + (MICRO["generator"] if micro else [])
        cmd = [
            py,
            str(HERE / "evaluate_shapes_models.py"),
            "--data_dir",
            str(self.data),
            "--tokenizer",
            str(self.tokenizer),
            "--diffusion",
            str(self.final("diffusion")),
            "--ar",
            str(self.final("ar")),
            "--output",
            str(self.report),
            "--img2img",
            "--img2img_picture",
            str(self.work / "img2img.png"),
            "--guidance_scales",
            "3",
            "8",
            "--sampling_sweep",
            "posterior:3:0.3",
            "simplified:5:0.3",
        ]
        return cmd + (MICRO["evaluation"] if micro else [])

    def run(self, stage: str) -> float:
        cmd = self.command(stage) + self.args.extra.get(stage, [])
        env = dict(os.environ)
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
        self.work.mkdir(parents=True, exist_ok=True)
        log = self.work / f"{stage}.log"
        print(f"[{stage}] {' '.join(cmd)}\n[{stage}] log: {log}", flush=True)
        started = time.time()
        with open(log, "a", encoding="utf-8") as handle:
            result = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        elapsed = time.time() - started
        if result.returncode != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise SystemExit(
                f"error: stage {stage} failed (exit {result.returncode}) after {elapsed:.0f}s; end of {log}:\n{tail}"
            )
        self.record(stage, cmd, elapsed)
        return elapsed

    def record(self, stage: str, cmd: list[str], elapsed: float) -> None:
        """Append the stage's command and wall time to `runs.jsonl` (what the shipped READMEs quote)."""

        def shown(arg: str) -> str:
            if arg == sys.executable:
                return "python"
            prefix, path = ("@", arg[1:]) if arg.startswith("@") else ("", arg)
            return prefix + (os.path.relpath(path, REPO) if os.path.isabs(path) else path)

        entry = {
            "stage": stage,
            "command": " ".join(shown(c) for c in cmd),
            "wall_time_s": round(elapsed, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with open(self.work / "runs.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def runs(self) -> dict:
        """The latest recorded run of every stage (`runs.jsonl`)."""
        path = self.work / "runs.jsonl"
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        return {entry["stage"]: entry for entry in entries}

    def ship(self, stages) -> None:
        """Write the final models (no checkpoints or logs) into `pipelines/`, weights in float16, with a README and a
        sample image each."""
        import torch
        from diffusers.utils import logging as diffusers_logging
        from shapes_model_cards import render_shipped_readme, sample_image

        from diffusers_bit import BinaryLatentTokenizer, InstellaARPipeline, InstellaT2IPipeline

        diffusers_logging.set_verbosity_error()  # the float16 cast warns about modules it keeps in float32: none here
        report = json.loads(self.report.read_text()) if self.report.is_file() else {}
        for stage in stages:
            source = self.tokenizer if stage == "tokenizer" else self.final(stage)
            if not self.done(stage):
                raise SystemExit(f"error: stage {stage} is not done ({self.describe(stage)}); nothing shipped")
            target = REPO / "pipelines" / SHIPPED[stage]
            if target.exists():
                shutil.rmtree(target)
            if stage == "tokenizer":
                model = BinaryLatentTokenizer.from_pretrained(str(source)).to(torch.float16)
                model.save_pretrained(str(target), remote_code=False)  # loaded with the package here: no code copies
                model = BinaryLatentTokenizer.from_pretrained(str(target))  # float32, as users load it
            else:
                cls = InstellaT2IPipeline if stage == "diffusion" else InstellaARPipeline
                model = cls.from_pretrained(str(source))
                model.transformer.to(torch.float16)
                model.image_tokenizer.to(torch.float16)
                model.save_pretrained(str(target), remote_code=False)
                model = cls.from_pretrained(str(target))
            sample_image(model, self.data).save(target / "samples.png")
            if stage == "diffusion" and (self.work / "img2img.png").is_file():  # the evaluation's before/after picture
                shutil.copy(self.work / "img2img.png", target / "img2img.png")
            readme = render_shipped_readme(
                stage,
                SHIPPED[stage],
                self.runs(),
                report,
                num_train=self.args.num_train,
                second_round=f"{stage}2" in ROUND2,
            )
            (target / "README.md").write_text(readme, encoding="utf-8")
            print(f"shipped {source} -> {target}")


def main(argv=None) -> None:
    args = parse_args(argv)
    chain = Chain(args)
    if args.status:
        print(chain.status())
        return
    if args.ship is not None:
        chain.ship(args.ship or list(SHIPPED))
        return
    print(chain.status(), flush=True)
    for stage in args.only or STAGES:
        if chain.done(stage) and not (stage == "evaluation" and args.only):
            print(f"[{stage}] done, skipped", flush=True)
            continue
        elapsed = chain.run(stage)
        print(f"[{stage}] finished in {elapsed:.0f}s", flush=True)
    print(chain.status())


if __name__ == "__main__":
    main()
