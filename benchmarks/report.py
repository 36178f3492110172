r"""Derived numbers, the targets (same-run ratios with pass / fail / not measured) and the Markdown table.

Everything here works on the merged measurement records (see `common`) and the run's settings; nothing is timed, so
the logic is unit-tested with made-up numbers.
"""

from dataclasses import dataclass
from typing import Callable, Optional

from .common import PAPER_PRESET

PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"
SECTION_TITLES = {
    "efficiency": "Efficiency",
    "diffusion": "Diffusion (BinaryDiT)",
    "official": "Authors' diffusion model",
    "pixart": "PixArt-alpha transformer",
    "ar": "Autoregressive (BinaryARTransformer)",
    "tokenizer": "Image tokenizer",
    "training": "Training",
}


def decode_sizes(measurements: dict) -> list[int]:
    """Decode sizes measured by the tokenizer section, ascending."""
    return sorted(int(k.split("_")[1]) for k in measurements if k.startswith("tokenizer.decode_") and k.endswith("_s"))


def _sum_record(label: str, parts: list[dict], how: str, unit: str = "s") -> dict:
    extrapolated = [p["extrapolated"] for p in parts if p.get("extrapolated")]
    return {
        "value": sum(p["value"] for p in parts),
        "unit": unit,
        "label": label,
        "note": how,
        "extrapolated": "; ".join(extrapolated) if extrapolated else None,
        "derived": True,
        "peak_memory_gib": None,
        "memory": None,
    }


def derive(measurements: dict, settings: dict) -> dict:
    r"""Numbers combined from several sections of the same run:

    - `diffusion.full_image_<size>_s`: seconds per image of the diffusion loop plus the tokenizer's decode at the
      smallest and the largest size;
    - `ar.full_image_<size>_s`: AR generation with the KV cache plus the decode at the largest size;
    - `training.<preset>.<dit|ar>-lora.<ckpt|no_ckpt>.peak_memory_vs_full`: peak memory of the LoRA step over that
      of the full fine-tuning step of the same generator, preset and checkpointing (each task runs in its own
      process).
    """
    out = {}
    for key, rec in measurements.items():
        parts = key.split(".")
        if parts[0] != "training" or not parts[2].endswith("-lora") or parts[-1] != "samples_per_s":
            continue
        full = measurements.get(".".join([parts[0], parts[1], parts[2].removesuffix("-lora"), *parts[3:]]))
        if full is None or not rec.get("peak_memory_gib") or not full.get("peak_memory_gib"):
            continue
        out[".".join(parts[:-1] + ["peak_memory_vs_full"])] = {
            "value": rec["peak_memory_gib"] / full["peak_memory_gib"],
            "unit": "ratio",
            "label": f"{parts[1]} {parts[2]} step peak memory / full fine-tuning step's "
            f"({rec['peak_memory_gib']:.3g} / {full['peak_memory_gib']:.3g} GiB, "
            f"gradient checkpointing {'on' if parts[3] == 'ckpt' else 'off'})",
            "note": f"{rec.get('memory')}; LoRA trains {rec.get('trained_params')} of the parameters, full "
            f"{full.get('trained_params')}",
            "extrapolated": None,
            "derived": True,
            "peak_memory_gib": None,
            "memory": None,
        }
    sizes = decode_sizes(measurements)
    if not sizes:
        return out
    for size in sorted({sizes[0], sizes[-1]}):
        decode = measurements[f"tokenizer.decode_{size}_s"]
        if "diffusion.image_s" in measurements:
            out[f"diffusion.full_image_{size}_s"] = _sum_record(
                f"full {size} px image: {settings['steps']} steps + decode",
                [measurements["diffusion.image_s"], decode],
                "diffusion section + tokenizer section",
            )
    largest = sizes[-1]
    if "ar.image_kv_cache_s" in measurements:
        out[f"ar.full_image_{largest}_s"] = _sum_record(
            f"full {largest} px image: AR with KV cache + decode",
            [measurements["ar.image_kv_cache_s"], measurements[f"tokenizer.decode_{largest}_s"]],
            "AR section + tokenizer section",
        )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Target:
    r"""A target of the issue, as a same-run number compared with a threshold.

    Attributes:
        name (`str`): Stable id (JSON key).
        description (`str`): Shown in the table.
        value (`Callable[[dict], tuple]`): `measurements -> (value or None, [keys it needs], note)`.
        op (`str`): `"<="` or `">="`.
        threshold (`float`), unit (`str`): The target.
        device (`str`, *optional*): `"cpu"` or `"cuda"` when the target is for that device only.
        dtype (`str`, *optional*): Only for this dtype.
        steps (`int`, *optional*), batch_size (`int`, *optional*): Only for runs with these settings.
    """

    name: str
    description: str
    value: Callable[[dict], tuple]
    op: str
    threshold: float
    unit: str
    device: Optional[str] = None
    dtype: Optional[str] = None
    steps: Optional[int] = None
    batch_size: Optional[int] = None


def _ratio(numerator: str, denominator: str) -> Callable[[dict], tuple]:
    def value(m: dict) -> tuple:
        if numerator in m and denominator in m and m[denominator]["value"]:
            return m[numerator]["value"] / m[denominator]["value"], [numerator, denominator]
        return None, [numerator, denominator]

    return value


def _single(key: str) -> Callable[[dict], tuple]:
    return lambda m: (m[key]["value"], [key]) if key in m else (None, [key])


def _largest(template: str, over: Optional[str] = None) -> Callable[[dict], tuple]:
    """A key (or `over / key`) at the largest decode size measured."""

    def value(m: dict) -> tuple:
        sizes = decode_sizes(m)
        if not sizes:
            return None, ["tokenizer.decode_<largest>_s"]
        key = template.format(size=sizes[-1])
        return _single(key)(m) if over is None else _ratio(over, key)(m)

    return value


def _best_training(preset: str, model: str) -> Callable[[dict], tuple]:
    def value(m: dict) -> tuple:
        keys = [f"training.{preset}.{model}.{name}.samples_per_s" for name in ("no_ckpt", "ckpt")]
        found = [k for k in keys if k in m]
        if not found:
            return None, keys
        best = max(found, key=lambda k: m[k]["value"])
        return m[best]["value"], [best]

    return value


TARGETS = [
    Target(
        "diffusion_step_vs_official",
        "Diffusion step time / the authors' step (same weights and inputs, timed back to back in one process)",
        _ratio("official.ours_step_s", "official.step_s"),
        "<=",
        0.8,
        "x",
    ),
    Target(
        "diffusion_step_fraction_of_matmul_peak",
        "1B diffusion step FLOP/s (fastest of float32 / bfloat16) / best matmul peak of any dtype, CPU",
        _single("efficiency.fraction_of_peak"),
        ">=",
        0.75,
        "of peak",
        device="cpu",
    ),
    Target(
        "full_image_vs_pixart",
        "PixArt-alpha transformer at 4096 tokens (20 steps) / our full image (20 steps + decode at the largest size)",
        _largest("diffusion.full_image_{size}_s", over="pixart.image_s"),
        ">=",
        20.0,
        "x",
        steps=20,
    ),
    Target(
        "gpu_diffusion_image",
        "GPU: 20-step diffusion image + decode at the largest size, batch 1",
        _largest("diffusion.full_image_{size}_s"),
        "<=",
        0.1,
        "s/image",
        device="cuda",
        steps=20,
        batch_size=1,
    ),
    Target(
        "gpu_ar_image",
        "GPU: AR image (KV cache) + decode at the largest size, batch 1",
        _largest("ar.full_image_{size}_s"),
        "<=",
        0.5,
        "s/image",
        device="cuda",
        batch_size=1,
    ),
    Target(
        "gpu_dit_training",
        "GPU: 1B diffusion training images/s (precomputed latents and text features, best of "
        "with/without gradient checkpointing)",
        _best_training(PAPER_PRESET, "dit"),
        ">=",
        300.0,
        "images/s",
        device="cuda",
    ),
]


def _missing_reason(keys: list, sections: dict) -> str:
    """Why the measurements behind `keys` are missing: the owning section's status, or that it was not run."""
    for key in keys:
        section = key.split(".")[0]
        if section == "training":
            task = "/".join(key.split(".")[1:3])
            status = sections.get(f"training:{task}")
        else:
            status = sections.get(section)
        if status is None:
            return f"not measured: the {section} section was not run (--only)"
        if status["status"] != "ok":
            return status["reason"] if status["status"] == NOT_MEASURED else f"not measured: {section} failed"
    return "not measured"


def evaluate_targets(measurements: dict, settings: dict, sections: dict) -> list[dict]:
    r"""Every target's value, threshold and status.

    Status is `pass`/`fail` when the run measured the number under the target's conditions, else `not measured`
    with the reason: a GPU target on a CPU run ("no GPU"), a CPU target on a GPU run, a missing section (its own
    reason, e.g. the unset `INSTELLA_OFFICIAL_REPO`), or settings other than the target's (preset, dtype, steps,
    batch). The value is shown whenever it could be computed.
    """
    rows = []
    device = settings["device_type"]
    for target in TARGETS:
        value, keys = target.value(measurements)
        extrapolated = [
            measurements[k]["extrapolated"] for k in keys if k in measurements and measurements[k].get("extrapolated")
        ]
        reason = None
        if target.device == "cuda" and device != "cuda":
            reason = "not measured: no GPU"
        elif target.device == "cpu" and device != "cpu":
            reason = f"not measured: a CPU target (this run: {device})"
        elif value is None:
            reason = _missing_reason(keys, sections)
        elif settings["preset"] != PAPER_PRESET:
            reason = f"not measured: targets are for the {PAPER_PRESET} preset (this run: {settings['preset']})"
        elif target.dtype and settings["dtype"] != target.dtype:
            reason = f"not measured: the target is for {target.dtype} (this run: {settings['dtype']})"
        elif target.steps and settings["steps"] != target.steps:
            reason = f"not measured: the target is for {target.steps} steps (this run: {settings['steps']})"
        elif target.batch_size and settings["batch_size"] != target.batch_size:
            reason = f"not measured: the target is for batch {target.batch_size} (this run: {settings['batch_size']})"
        if reason is None:
            ok = value <= target.threshold if target.op == "<=" else value >= target.threshold
            status = PASS if ok else FAIL
        else:
            status = NOT_MEASURED
        rows.append(
            {
                "name": target.name,
                "description": target.description,
                "value": value,
                "op": target.op,
                "threshold": target.threshold,
                "unit": target.unit,
                "status": status,
                "reason": reason,
                "inputs": keys,
                "extrapolated": "; ".join(extrapolated) or None,
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------------
def format_value(value, unit: str) -> str:
    """A number with its unit, scaled for reading (ms, GFLOP/s, M params, ...)."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.4g} s"
    if unit in ("FLOP/s", "FLOP"):
        for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
            if value >= scale:
                return f"{value / scale:.4g} {prefix}{unit}"
        return f"{value:.4g} {unit}"
    if unit in ("B", "B/s"):
        return f"{value / 1e9:.3g} G{unit}"
    if unit == "params":
        return f"{value / 1e6:.2f}M"
    if unit in ("x",):
        return f"{value:.3g}x"
    if unit in ("ratio", "of peak"):
        return f"{value:.1%}"
    if unit == "abs":
        return f"{value:.3g}"
    if unit == "yes/no":
        return "yes" if value else "no"
    return f"{value:.4g} {unit}"


def _memory(rec: dict) -> str:
    if rec.get("peak_memory_gib") is None:
        return "-"
    return f"{rec['peak_memory_gib']:.2f} GiB ({rec['memory']})"


def _notes(rec: dict) -> str:
    parts = []
    if rec.get("extrapolated"):
        parts.append(f"**extrapolated**: {rec['extrapolated']}")
    if rec.get("note"):
        parts.append(rec["note"])
    if rec.get("cold"):
        parts.append("one cold run (over the time budget)")
    return "; ".join(parts).replace("|", "/")


def _threshold(row: dict) -> str:
    return (
        f"{row['op']} {format_value(row['threshold'], row['unit'])}"
        if row["unit"] not in ("s/image", "images/s")
        else f"{row['op']} {row['threshold']:g} {row['unit']}"
    )


def _target_value(row: dict) -> str:
    if row["value"] is None:
        return "-"
    text = (
        format_value(row["value"], row["unit"])
        if row["unit"] not in ("s/image", "images/s")
        else f"{row['value']:.4g} {row['unit']}"
    )
    return text + (" *" if row["extrapolated"] else "")


def _environment_rows(results: dict) -> list[str]:
    env, s = results["environment"], results["settings"]
    flags = f"; {', '.join(env['cpu_flags'])}" if env.get("cpu_flags") else ""
    machine = (
        f"{env['cpu']} ({env['cpu_cores']} logical cores, {env['torch_threads']} torch threads, "
        f"{env['ram_gib']} GiB RAM{flags})"
    )
    if env.get("cpu_capability"):
        bf16 = "yes" if env.get("bf16_matmul_instructions") else "no"
        machine += (
            f"; torch CPU kernels {env['cpu_capability']}, bf16 matrix instructions {bf16}, "
            f"faster dtype {env.get('preferred_dtype')}"
        )
    dtype = s["dtype"] + (" (--dtype auto)" if s.get("dtype_choice") == "auto" else "")
    settings = (
        f"preset `{s['preset']}`, {s['device']}, {dtype}, batch {s['batch_size']} (+{s['batch_size']} "
        f"unconditional), {s['steps']} steps, {s['text_len']} text tokens, best of {s['repeats']} after "
        f"{s['warmup']} warm-up, "
        + (f"time budget {s['time_budget_s']:g} s per measurement" if s["time_budget_s"] else "no time budget")
    )
    rows = [
        ("machine", machine),
        ("GPU", env.get("gpu") or "none"),
        ("date", env["date"]),
        ("commit", f"`{env['commit']}`" if env.get("commit") else "unknown"),
        (
            "software",
            f"torch {env['torch']}, diffusers {env['diffusers']}, transformers {env['transformers']}, "
            f"Python {env['python']}",
        ),
        ("settings", settings),
        ("command", f"`{results['command']}`"),
    ]
    return ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]


def render_markdown(results: dict) -> str:
    r"""The results as Markdown: machine/date/commit, the targets, one table per section (value, peak memory,
    notes; extrapolated numbers are marked), and the status of every section."""
    lines = ["# diffusers-bit benchmarks", ""] + _environment_rows(results)
    lines += [
        "",
        "## Targets (ratios measured in the same run)",
        "",
        "| target | measured | required | status |",
        "| --- | --- | --- | --- |",
    ]
    for row in results["targets"]:
        status = f"**{row['status']}**" if row["status"] in (PASS, FAIL) else row["reason"]
        lines.append(f"| {row['description']} | {_target_value(row)} | {_threshold(row)} | {status} |")
    lines += ["", "\\* uses an extrapolated number (see the rows below)."]

    measurements = results["measurements"]
    for section, title in SECTION_TITLES.items():
        keys = [k for k in measurements if k.split(".")[0] == section]
        statuses = {k: v for k, v in results["sections"].items() if k.split(":")[0] == section and v["status"] != "ok"}
        if not keys and not statuses:
            continue
        lines += ["", f"## {title}", ""]
        if keys:
            lines += ["| measurement | value | peak memory | notes |", "| --- | --- | --- | --- |"]
            for key in keys:
                rec = measurements[key]
                value = format_value(rec["value"], rec["unit"]) + (" *" if rec.get("extrapolated") else "")
                label = rec["label"].replace("|", "/")
                lines.append(f"| {label} | {value} | {_memory(rec)} | {_notes(rec)} |")
        for name, status in statuses.items():
            lines.append(f"\n{name}: {status['reason']}")
    lines += ["", "## Sections", "", "| section | status | wall time |", "| --- | --- | --- |"]
    for name, status in results["sections"].items():
        text = status["status"] if status["status"] == "ok" else status["reason"]
        wall = f"{status['wall_s']:.1f} s" if status.get("wall_s") is not None else "-"
        lines.append(f"| {name} | {text} | {wall} |")
    return "\n".join(lines) + "\n"
