r"""The diffusers-bit benchmark suite: one command, a Markdown and a JSON table.

Sections (all by default, a subset with `--only`):

    efficiency  FLOPs of one 1B diffusion step, its achieved FLOP/s, and the dtype's matmul peak measured in the run
    diffusion   BinaryDiT step latency (text K/V cached / re-projected) and seconds per image
    official    the authors' diffusion model beside ours (needs INSTELLA_OFFICIAL_REPO=<checkout>; never vendored)
    pixart      diffusers' PixArtTransformer2DModel at the PixArt-alpha 1024 config (4096 latent tokens)
    ar          AR seconds per image with and without the KV cache, tokens per second
    tokenizer   encode at the smallest size, decode at every size
    training    samples/s of one optimizer step per generator and tokenizer stage, tiny and paper configs, with and
                without gradient checkpointing

Every section (every training task) runs in a fresh Python process, so that its peak memory (RSS on CPU, CUDA max
allocated on GPU) is its own; inside a process the peak is reset before each measurement. The targets of the issue are
ratios of numbers measured in the same run on the same machine (these machines are noisy), reported with the absolute
numbers as pass / fail / not measured. Numbers not measured directly (`--per_step_only`, `--ar_full_tokens`,
`--pixart_layers`) are marked "extrapolated" with how.

    # paper sizes on a GPU (CUDA or ROCm)
    python benchmarks/run_benchmarks.py --device cuda --dtype bfloat16 --output_dir outputs/benchmarks-gpu
    # paper sizes on a small CPU: one diffusion step extrapolated to 20, a shortened AR no-cache loop, 1 timed
    # PixArt block, training in float32 with 2 generator blocks and 512 px tokenizer decodes (see benchmarks/README.md)
    python benchmarks/run_benchmarks.py --device cpu --dtype bfloat16 --per_step_only --ar_full_tokens 8 \
        --pixart_layers 1 --time_budget_s 20 --train_dtype float32 --train_blocks 2 --train_decode_size 512
    # smoke run
    python benchmarks/run_benchmarks.py --preset tiny --dtype float32 --repeats 1 --steps 2
"""

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import NotMeasured, environment  # noqa: E402
from benchmarks.report import derive, evaluate_targets, render_markdown  # noqa: E402

SECTIONS = ["efficiency", "diffusion", "official", "pixart", "ar", "tokenizer", "training"]


def parse_args(argv=None) -> argparse.Namespace:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("what and where")
    group.add_argument(
        "--preset",
        choices=["tiny", "instella-t2i"],
        default="instella-t2i",
        help="Architecture of the inference sections (training runs at --train_presets).",
    )
    group.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (ROCm builds of torch use cuda too). Default: cuda when available.",
    )
    group.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        default="auto",
        help="Inference dtype. auto (default): the faster one for --device, as the CLI's --dtype auto decides "
        "(diffusers_bit.utils.hardware.preferred_dtype: bfloat16 on GPUs and on CPUs with bf16 matrix "
        "instructions, float32 on other CPUs).",
    )
    group.add_argument("--only", nargs="+", choices=SECTIONS, default=None, help="Run only these sections.")
    group.add_argument("--output_dir", default="outputs/benchmarks", help="Writes results.json and results.md here.")
    group.add_argument("--seed", type=int, default=0)

    group = parser.add_argument_group("inference settings")
    group.add_argument(
        "--batch_size",
        type=int,
        default=1,
        help="Images per call (classifier-free guidance adds as many unconditional rows).",
    )
    group.add_argument("--steps", type=int, default=20, help="Denoising steps per image (the targets assume 20).")
    group.add_argument(
        "--text_len",
        type=int,
        default=128,
        help="Text tokens per prompt (the pipelines' max_sequence_length; also used in training).",
    )
    group.add_argument(
        "--compile",
        action="store_true",
        help="Regional torch.compile of our models (compile_repeated_blocks, inductor) before timing; "
        "one extra untimed call per measurement absorbs compilation. Inference sections only.",
    )
    group.add_argument(
        "--freeze_weights",
        action="store_true",
        help="With --compile: compile_repeated_blocks(freeze_weights=True), the weights become constants of the "
        "compiled code (on CPUs: oneDNN-packed bf16 weights, GELU fused into the matmul).",
    )
    group.add_argument(
        "--attention_backend",
        default=None,
        metavar="NAME",
        help="diffusers attention backend of our models (set_attention_backend), e.g. native, "
        "_native_math, _native_efficient, _native_cudnn, flex. Default: diffusers' default "
        "(native, or DIFFUSERS_ATTN_BACKEND). Inference sections only.",
    )

    group = parser.add_argument_group("timing")
    group.add_argument("--repeats", type=int, default=3, help="Timed runs per measurement (the fastest is reported).")
    group.add_argument("--warmup", type=int, default=1, help="Untimed runs before timing.")
    group.add_argument(
        "--time_budget_s",
        type=float,
        default=None,
        help="Per measurement: a warm-up run longer than this is used as the only sample, and timed "
        "runs stop once they add up to more (keeps paper sizes feasible on a CPU).",
    )
    group.add_argument(
        "--per_step_only",
        action="store_true",
        help="Diffusion: time one denoising step and extrapolate seconds per image to --steps steps "
        "(labelled) instead of timing the whole loop.",
    )
    group.add_argument(
        "--ar_full_tokens",
        type=int,
        default=None,
        help="AR: run the no-cache loop for this many tokens only; the remaining forwards are "
        "interpolated from --ar_full_samples timed prefix lengths (labelled). Default: all tokens.",
    )
    group.add_argument("--ar_full_samples", type=int, default=3, help="Prefix lengths timed for that interpolation.")
    group.add_argument(
        "--pixart_layers",
        type=int,
        default=None,
        help="PixArt: build this many of the 28 blocks and add the others as copies of one timed "
        "block (labelled). Default: all 28.",
    )
    group.add_argument(
        "--peak_max_size",
        type=int,
        default=None,
        help="Efficiency: largest side of the square matmuls (default 4096 on CPU, 8192 on GPU).",
    )
    group.add_argument("--peak_repeats", type=int, default=3, help="Efficiency: timed matmuls per layout.")

    group = parser.add_argument_group("training")
    group.add_argument(
        "--train_presets",
        nargs="+",
        choices=["tiny", "instella-t2i"],
        default=None,
        help="Configs of the training section (default: tiny and --preset).",
    )
    group.add_argument(
        "--train_skip",
        nargs="+",
        default=[],
        help='Skip training tasks matching these patterns, e.g. "instella-t2i/tokenizer-*" (tasks: '
        "<preset>/dit, /ar, /dit-lora, /ar-lora, /tokenizer-stage1, /tokenizer-stage2, "
        "/tokenizer-stage3).",
    )
    group.add_argument(
        "--train_batch_size",
        nargs="+",
        default=None,
        metavar="KEY=N",
        help="Batch per training task: tiny=8, instella-t2i.dit=4, instella-t2i.tokenizer=1 ... "
        "(default: 8 at tiny; paper: 1 on CPU, 256/256/8 for dit/ar/tokenizer on GPU).",
    )
    group.add_argument(
        "--train_precision",
        choices=["auto", "mixed", "pure"],
        default="auto",
        help="mixed: float32 weights + autocast to --dtype (the training scripts); pure: weights, "
        "gradients and AdamW states in --dtype; auto: mixed when it fits in memory.",
    )
    group.add_argument(
        "--train_decode_size",
        type=int,
        default=None,
        help="Cap on the decode size of tokenizer stages 2 and 3: each preset decodes at its largest "
        "size up to the cap (default: no cap, the largest).",
    )
    group.add_argument(
        "--train_dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="Training dtype (default: --dtype). CPUs without bf16 matrix instructions run bf16 "
        "backward passes tens of times slower than float32: use float32 there.",
    )
    group.add_argument(
        "--train_blocks",
        type=int,
        default=None,
        help="Generators keep this many blocks and their step time is scaled to the full depth "
        "(labelled); keeps paper-size training within a small machine's memory and time.",
    )
    group.add_argument(
        "--train_lora_rank",
        type=int,
        default=16,
        help="Rank (and alpha) of the LoRA adapter of the dit-lora / ar-lora tasks.",
    )

    group = parser.add_argument_group("process")
    group.add_argument(
        "--in_process",
        action="store_true",
        help="Run every section in this process (faster start-up, for smoke tests; peak memory is "
        "then reset per measurement but not isolated per section).",
    )
    group.add_argument("--task_timeout_s", type=float, default=None, help="Kill a section's process after this long.")
    parser.add_argument("--_task", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_task_output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "text_len", "repeats", "ar_full_samples", "peak_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.freeze_weights and not args.compile:
        parser.error("--freeze_weights needs --compile")
    if args.dtype == "auto":
        from diffusers_bit.utils.dtypes import dtype_name
        from diffusers_bit.utils.hardware import preferred_dtype

        args.dtype_choice = "auto"
        args.dtype = dtype_name(preferred_dtype(args.device))
    else:
        args.dtype_choice = args.dtype
    if args.attention_backend is not None:
        from diffusers.models.attention_dispatch import AttentionBackendName

        names = sorted(name.value for name in AttentionBackendName)
        if args.attention_backend not in names:
            parser.error(f"--attention_backend must be one of {', '.join(names)}; got {args.attention_backend!r}")
    for name in ("ar_full_tokens", "pixart_layers", "train_blocks", "train_decode_size", "train_lora_rank"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.train_presets is None:
        args.train_presets = list(dict.fromkeys(["tiny", args.preset]))
    from benchmarks.common import parse_batch_sizes

    try:
        parse_batch_sizes(args.train_batch_size)
    except ValueError as error:
        parser.error(str(error))
    return args


def plan_tasks(args: argparse.Namespace) -> tuple[list, dict]:
    """`(tasks, skipped)`: the sections (and `training:<preset>/<model>` tasks) to run in order, and the training
    tasks skipped by `--train_skip` with their reason."""
    from benchmarks.common import training_tasks

    tasks, skipped = [], {}
    for section in args.only or SECTIONS:
        if section == "training":
            names, skip = training_tasks(args.train_presets, args.train_skip)
            tasks += [f"training:{name}" for name in names]
            skipped.update({f"training:{name}": reason for name, reason in skip.items()})
        else:
            tasks.append(section)
    return tasks, skipped


def quick_reason(task: str):
    """The "not measured" reason of a task that cannot run, when it is known up front (`None` otherwise)."""
    from benchmarks.official import NOT_MEASURED, official_repo

    if task == "official" and official_repo() is None:
        return NOT_MEASURED
    return None


def run_task(task: str, args: argparse.Namespace) -> dict:
    """Run one task in this process; returns `{"status", "reason", "measurements"}`."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    from benchmarks.inference import SECTIONS as INFERENCE
    from benchmarks.training import run_training_task

    diffusers_logging.set_verbosity_error()  # diffusers warns on every `.to(dtype)`
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        if task.startswith("training:"):
            measurements = run_training_task(args, task.split(":", 1)[1])
        else:
            measurements = INFERENCE[task](args)
    except NotMeasured as reason:
        return {"status": "not measured", "reason": str(reason), "measurements": {}}
    except Exception as error:  # one failing section must not lose the others
        traceback.print_exc()
        return {"status": "error", "reason": f"error: {type(error).__name__}: {error}", "measurements": {}}
    return {"status": "ok", "reason": None, "measurements": measurements}


def run_task_in_subprocess(task: str, argv: list, log_dir: Path, timeout: float = None) -> dict:
    """Run one task in a fresh Python process (its own peak memory); its output goes to `log_dir/<task>.log`."""
    log_path = log_dir / (task.replace(":", "_").replace("/", "_") + ".log")
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--_task", task, "--_task_output", str(output)]
        with open(log_path, "w") as log:
            try:
                process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"status": "error", "reason": f"error: timed out after {timeout:g} s", "measurements": {}}
        if process.returncode == 0 and output.is_file():
            return json.loads(output.read_text())
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    if process.returncode < 0:
        reason = f"error: killed by signal {-process.returncode}" + (
            " (out of memory?)" if process.returncode == -9 else ""
        )
    else:
        reason = f"error: exit status {process.returncode}: {' / '.join(tail)}"
    return {"status": "error", "reason": reason, "measurements": {}}


def settings_of(args: argparse.Namespace) -> dict:
    keys = (
        "preset",
        "device",
        "dtype",
        "batch_size",
        "steps",
        "text_len",
        "repeats",
        "warmup",
        "time_budget_s",
        "per_step_only",
        "ar_full_tokens",
        "ar_full_samples",
        "pixart_layers",
        "train_presets",
        "train_skip",
        "train_batch_size",
        "train_precision",
        "train_decode_size",
        "train_dtype",
        "train_blocks",
        "train_lora_rank",
        "seed",
        "in_process",
        "compile",
        "freeze_weights",
        "attention_backend",
        "dtype_choice",
    )
    settings = {k: getattr(args, k) for k in keys}
    settings["device_type"] = args.device.split(":")[0]
    return settings


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._task:  # child process: one task, result as JSON
        result = run_task(args._task, args)
        Path(args._task_output).write_text(json.dumps(result))
        return 0

    import torch

    output_dir = Path(args.output_dir)
    (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    tasks, skipped = plan_tasks(args)
    sections, measurements = {}, {}
    started = time.time()
    machine = environment(torch.device(args.device))  # date and commit of the start: edits during the run don't count
    for index, task in enumerate(tasks, 1):
        print(f"[{index}/{len(tasks)}] {task} ...", end=" ", flush=True)
        start = time.time()
        precheck = quick_reason(task)
        if precheck is not None:  # known without starting a process
            result = {"status": "not measured", "reason": precheck, "measurements": {}}
        elif args.in_process:
            result = run_task(task, args)
        else:
            result = run_task_in_subprocess(task, argv, output_dir / "logs", args.task_timeout_s)
        wall = time.time() - start
        sections[task] = {"status": result["status"], "reason": result["reason"], "wall_s": round(wall, 1)}
        measurements.update(result["measurements"])
        print(f"{result['status'] if result['status'] == 'ok' else result['reason']} ({wall:.1f} s)", flush=True)
    for task, reason in skipped.items():
        sections[task] = {"status": "not measured", "reason": reason, "wall_s": None}

    settings = settings_of(args)
    measurements.update(derive(measurements, settings))
    command = "python benchmarks/run_benchmarks.py " + " ".join(shlex.quote(a) for a in argv)
    results = {
        "command": command.strip(),
        "environment": machine,
        "settings": settings,
        "wall_s": round(time.time() - started, 1),
        "targets": evaluate_targets(measurements, settings, sections),
        "sections": sections,
        "measurements": measurements,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    markdown = render_markdown(results)
    (output_dir / "results.md").write_text(markdown)
    print(markdown)
    print(f"wrote {output_dir / 'results.json'} and {output_dir / 'results.md'} ({results['wall_s']:.0f} s)")
    return 1 if any(s["status"] == "error" for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
