"""Helpers shared by every benchmark section: device and dtype, timing, per-measurement peak memory, random
conditioning, measurement records and the description of the machine.

A *measurement record* is a plain dict (it goes to JSON as is):

- `value`, `unit`: the number (`"s"`, `"samples/s"`, `"tokens/s"`, `"FLOP/s"`, `"FLOP"`, `"ratio"`, ...);
- `label`: what was measured, for the Markdown table;
- `peak_memory_gib`, `memory`: peak memory of that measurement and what kind (`"peak RSS"`, `"CUDA max allocated"`);
- `note`: settings worth knowing (batch, text length, ...);
- `extrapolated`: `None` for a direct measurement, else how the number was extrapolated (shown in the table);
- `samples`, `cold`: every timed run, and whether the only sample is the first (untimed-warm-up-free) call.
"""

import datetime
import fnmatch
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import torch

PAPER_PRESET = "instella-t2i"
REPO_ROOT = Path(__file__).resolve().parents[1]


class NotMeasured(RuntimeError):
    """A section cannot measure anything on this run; the message is the reason shown in the results (it should
    start with "not measured: ")."""


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (CUDA and ROCm both expose `torch.cuda`); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------------------------------
def _read_vm_hwm_kib() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    r"""Peak memory of one measurement.

    - CUDA / ROCm: `torch.cuda.max_memory_allocated` after `torch.cuda.reset_peak_memory_stats`.
    - CPU: the peak resident set size (`VmHWM`) of this process, reset before the measurement by writing `5` to
      `/proc/self/clear_refs` (Linux >= 4.0), so it covers that measurement only (plus whatever is resident when it
      starts, e.g. the model's weights). Where the reset is unavailable it is the process's lifetime peak
      (`ru_maxrss`), and `kind` says so; the suite runs each section in its own process for that reason too.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "CUDA max allocated" if device.type == "cuda" else "peak RSS"

    def reset(self) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "peak RSS of the process"

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        kib = _read_vm_hwm_kib() if self.kind == "peak RSS" else None
        if kib is None:
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
        return kib / 2**20


def available_memory_gib(device: torch.device) -> Optional[float]:
    """Memory a new allocation can use: free GPU memory, or the system's available RAM (`None` if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------------
def measure(
    fn: Callable[[], object],
    device: torch.device,
    repeats: int = 3,
    warmup: int = 1,
    budget_s: Optional[float] = None,
) -> dict:
    r"""Time `fn()` and record the peak memory while it runs.

    `warmup` untimed calls come first, then up to `repeats` timed calls; the reported time is the fastest (the least
    disturbed by other work on a noisy machine), the median and every sample are kept. GPU work is synchronised
    before the clock is read.

    With `budget_s`, long runs are cut short so that a paper-size run on a CPU stays feasible: a warm-up call that
    alone takes longer than the budget becomes the only sample (`cold=True`), and timed calls stop once their total
    exceeds the budget (at least one is always made).

    Returns:
        `{"seconds", "median_s", "samples", "cold", "peak_memory_gib", "memory"}`.
    """
    memory = PeakMemory(device)
    memory.reset()
    samples, cold = [], False
    for index in range(warmup):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if budget_s is not None and index == 0 and elapsed > budget_s:
            samples, cold = [elapsed], True
            break
    if not cold:
        for _ in range(max(1, repeats)):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples.append(time.perf_counter() - start)
            if budget_s is not None and sum(samples) > budget_s:
                break
    return {
        "seconds": min(samples),
        "median_s": statistics.median(samples),
        "samples": samples,
        "cold": cold,
        "peak_memory_gib": round(memory.peak_gib(), 3),
        "memory": memory.kind,
    }


def record(
    value: float,
    unit: str,
    label: str,
    note: Optional[str] = None,
    extrapolated: Optional[str] = None,
    timing: Optional[dict] = None,
    **extra,
) -> dict:
    """A measurement record (see the module docstring); `timing` is a [`measure`] result whose memory and samples
    are attached."""
    out = {
        "value": value,
        "unit": unit,
        "label": label,
        "note": note,
        "extrapolated": extrapolated,
        "peak_memory_gib": None,
        "memory": None,
    }
    if timing is not None:
        out.update(
            peak_memory_gib=timing["peak_memory_gib"],
            memory=timing["memory"],
            samples=timing["samples"],
            cold=timing["cold"],
            median_s=timing["median_s"],
        )
    out.update(extra)
    return out


def time_record(label: str, timing: dict, note: Optional[str] = None, extrapolated: Optional[str] = None) -> dict:
    """A record in seconds from a [`measure`] result."""
    return record(timing["seconds"], "s", label, note=note, extrapolated=extrapolated, timing=timing)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------
def cfg_text_features(
    num_layers: int, batch_size: int, text_len: int, width: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Random per-layer text features and mask of a classifier-free-guidance batch, laid out as the pipelines do:
    `batch_size` prompt rows (every token real) followed by `batch_size` unconditional `""` rows (left padding: only
    the last token is real).

    Returns:
        `(features (num_layers, 2B, T, width), mask (2B, T) long)`.
    """
    features = torch.randn(num_layers, 2 * batch_size, text_len, width, device=device, dtype=dtype)
    mask = torch.ones(2 * batch_size, text_len, dtype=torch.long, device=device)
    mask[batch_size:, : text_len - 1] = 0
    return features, mask


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The CPU features that decide CPU matmul speed in reduced precision."""
    from diffusers_bit.utils.hardware import cpu_flags

    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni")
    return [flag for flag in wanted if flag in cpu_flags()]


def git_commit() -> Optional[str]:
    """`<sha>` of the checkout (with `+dirty` when tracked files changed), or `None` outside git. Read-only."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    """Machine, software and date of the run."""
    from diffusers_bit.utils.dtypes import dtype_name
    from diffusers_bit.utils.hardware import cpu_has_bf16_matmul, preferred_dtype

    total_ram = None
    try:
        total_ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_matmul_instructions": cpu_has_bf16_matmul(),
        "preferred_dtype": dtype_name(preferred_dtype(device)),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": total_ram,
        "gpu": None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
    }
    if device.type == "cuda":
        backend = f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else f"CUDA {torch.version.cuda}"
        env["gpu"] = f"{torch.cuda.get_device_name(device)} ({backend})"
    return env


# ----------------------------------------------------------------------------------------------------------------------
# Training tasks (planned by the parent process, which does not import the models)
# ----------------------------------------------------------------------------------------------------------------------
# `dit-lora` / `ar-lora`: the same generator steps training a LoRA adapter only (train_t2i.py --use_lora)
TRAINING_MODELS = ["dit", "ar", "dit-lora", "ar-lora", "tokenizer-stage1", "tokenizer-stage2", "tokenizer-stage3"]
DEFAULT_BATCH = {
    "tiny": 8,
    "cpu": {"dit": 1, "ar": 1, "tokenizer": 1},
    "cuda": {"dit": 256, "ar": 256, "tokenizer": 8},
}


def training_tasks(presets: list, skip: list) -> tuple[list, dict]:
    """`(tasks, skipped)`: `preset/model` names to run, and those matched by a `--train_skip` pattern (with why)."""
    tasks, skipped = [], {}
    for preset in dict.fromkeys(presets):
        for model in TRAINING_MODELS:
            name = f"{preset}/{model}"
            pattern = next((p for p in skip if fnmatch.fnmatch(name, p)), None)
            if pattern is None:
                tasks.append(name)
            else:
                skipped[name] = f"not measured: skipped by --train_skip {pattern}"
    return tasks, skipped


def parse_batch_sizes(items: Optional[list]) -> dict:
    """`["tiny=8", "instella-t2i.dit=4"]` -> `{"tiny": 8, "instella-t2i.dit": 4}` (a `ValueError` names bad items)."""
    sizes = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--train_batch_size entries look like tiny=8 or instella-t2i.dit=4, got {item!r}")
        sizes[key] = int(value)
    return sizes


def batch_size_for(preset: str, model: str, device_type: str, overrides: dict) -> int:
    """The most specific of `preset.model`, `preset.family`, `preset` in `overrides`, else the default."""
    family = model.split("-")[0]
    for key in (f"{preset}.{model}", f"{preset}.{family}", preset):
        if key in overrides:
            return overrides[key]
    if preset != PAPER_PRESET:
        return DEFAULT_BATCH["tiny"]
    return DEFAULT_BATCH["cuda" if device_type == "cuda" else "cpu"][family]
