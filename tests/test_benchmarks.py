"""The benchmark suite (benchmarks/run_benchmarks.py): the one command runs every section on the tiny preset and writes
the JSON and Markdown tables; the target logic (pass / fail / not measured), the derived numbers, the FLOP count, the
timing helper, the training-task plan and the authors'-model loader are checked with made-up or tiny inputs. Timings
are never asserted."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training_helpers import one_thread  # noqa: E402,F401 (autouse: tiny models run fastest on one thread)

from benchmarks import common, inference, official, report, training  # noqa: E402
from benchmarks.run_benchmarks import parse_args, plan_tasks, run_task  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "run_benchmarks.py"
TARGET_NAMES = [
    "diffusion_step_vs_official",
    "diffusion_step_fraction_of_matmul_peak",
    "full_image_vs_pixart",
    "gpu_diffusion_image",
    "gpu_ar_image",
    "gpu_dit_training",
]


def run_suite(tmp_path, *extra, env_overrides=None):
    env = {k: v for k, v in os.environ.items() if k != official.OFFICIAL_REPO_ENV}
    env.update(env_overrides or {}, OMP_NUM_THREADS="1")
    out = tmp_path / "results"
    process = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--repeats",
            "1",
            "--steps",
            "2",
            "--peak_max_size",
            "256",
            "--peak_repeats",
            "1",
            "--output_dir",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text(), out


def test_one_command_runs_every_section_on_tiny(tmp_path):
    results, markdown, _ = run_suite(tmp_path, "--in_process")
    m = results["measurements"]
    expected = [
        "efficiency.matmul_peak_flops.float32",
        "efficiency.matmul_peak_flops.bfloat16",
        "efficiency.step_flops",
        "efficiency.step_flops_analytic",
        "efficiency.step_s.float32",
        "efficiency.step_s.bfloat16",
        "efficiency.achieved_flops.float32",
        "efficiency.achieved_flops.bfloat16",
        "efficiency.fraction_of_peak",
        "diffusion.params",
        "diffusion.prepare_text_kv_s",
        "diffusion.step_s",
        "diffusion.step_text_reprojected_s",
        "diffusion.image_s",
        "diffusion.full_image_64_s",
        "diffusion.full_image_128_s",
        "pixart.params",
        "pixart.step_s",
        "pixart.image_s",
        "ar.params",
        "ar.image_kv_cache_s",
        "ar.tokens_per_s_kv_cache",
        "ar.decode_weight_bytes",
        "ar.memory_bandwidth",
        "ar.matvec_bandwidth",
        "ar.streaming_bound_tokens_per_s",
        "ar.fraction_of_streaming_bound",
        "ar.fraction_of_matvec_bound",
        "ar.image_full_forward_s",
        "ar.tokens_per_s_full_forward",
        "ar.full_image_128_s",
        "tokenizer.params",
        "tokenizer.encode_64_s",
        "tokenizer.decode_64_s",
        "tokenizer.decode_96_s",
        "tokenizer.decode_128_s",
    ] + [
        f"training.tiny.{model}.{ckpt}.samples_per_s"
        for model in common.TRAINING_MODELS
        for ckpt in ("ckpt", "no_ckpt")
    ]
    for key in expected:
        assert m[key]["value"] > 0, key
        assert m[key]["label"] and m[key]["unit"], key
    for key in (
        "diffusion.step_s",
        "ar.image_kv_cache_s",
        "tokenizer.decode_128_s",
        "training.tiny.dit.ckpt.samples_per_s",
    ):
        assert m[key]["peak_memory_gib"] > 0 and m[key]["memory"] == "peak RSS", key
    # nothing was extrapolated with the default settings; derived numbers add up
    assert not any(m[k].get("extrapolated") for k in expected if not k.startswith("pixart.image"))
    assert m["diffusion.params"]["value"] == 170000
    assert m["efficiency.step_flops"]["value"] == m["efficiency.step_flops_analytic"]["value"]
    assert m["diffusion.full_image_128_s"]["value"] == pytest.approx(
        m["diffusion.image_s"]["value"] + m["tokenizer.decode_128_s"]["value"]
    )
    assert m["pixart.image_s"]["value"] == pytest.approx(2 * m["pixart.step_s"]["value"])

    sections = results["sections"]
    assert sections["official"]["status"] == "not measured"
    assert official.OFFICIAL_REPO_ENV in sections["official"]["reason"]
    assert all(s["status"] == "ok" for name, s in sections.items() if name != "official"), sections
    targets = {t["name"]: t for t in results["targets"]}
    assert list(targets) == TARGET_NAMES
    assert official.OFFICIAL_REPO_ENV in targets["diffusion_step_vs_official"]["reason"]
    for name in ("gpu_diffusion_image", "gpu_ar_image", "gpu_dit_training"):
        assert targets[name]["reason"] == "not measured: no GPU"
    for name in ("diffusion_step_fraction_of_matmul_peak", "full_image_vs_pixart"):
        assert targets[name]["value"] > 0 and "instella-t2i preset" in targets[name]["reason"]
    # the efficiency ratio is the fastest dtype's step over the best peak of any dtype measured
    peaks = {d: m[f"efficiency.matmul_peak_flops.{d}"]["value"] for d in ("float32", "bfloat16")}
    steps = {d: m[f"efficiency.step_s.{d}"]["value"] for d in ("float32", "bfloat16")}
    fastest = min(steps, key=steps.get)
    assert m["efficiency.fraction_of_peak"]["value"] == pytest.approx(
        m["efficiency.step_flops"]["value"] / steps[fastest] / max(peaks.values())
    )
    assert m["efficiency.fraction_of_peak"]["fastest_dtype"] == fastest
    assert m["efficiency.fastest_dtype_matches_auto"]["unit"] == "yes/no"
    # KV-cache decoding against the streaming bound: batch 1, weights read once per forward
    ar_params = m["ar.params"]["value"]
    assert 0 < m["ar.decode_weight_bytes"]["value"] < 4 * ar_params  # float32, text projections left out
    bound = m["ar.memory_bandwidth"]["value"] / m["ar.decode_weight_bytes"]["value"]
    assert m["ar.streaming_bound_tokens_per_s"]["value"] == pytest.approx(bound)
    assert m["ar.fraction_of_streaming_bound"]["value"] == pytest.approx(m["ar.tokens_per_s_kv_cache"]["value"] / bound)
    assert all(t["status"] == "not measured" for t in targets.values())

    env, settings = results["environment"], results["settings"]
    assert env["date"] and env["cpu"] and env["torch"] == torch.__version__
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["preferred_dtype"] in ("float32", "bfloat16")
    assert settings["preset"] == "tiny" and results["command"].startswith("python benchmarks/run_benchmarks.py")
    for text in (
        "## Targets",
        "| machine |",
        "| commit |",
        "## Diffusion (BinaryDiT)",
        "## PixArt-alpha transformer",
        "## Autoregressive",
        "## Image tokenizer",
        "## Training",
        "## Efficiency",
        "## Sections",
        "not measured: no GPU",
        "decode 128 px",
    ):
        assert text in markdown, text
    for target in report.TARGETS:
        assert target.description in markdown


def test_sections_run_in_their_own_process(tmp_path):
    results, markdown, out = run_suite(tmp_path, "--only", "efficiency", "official")
    assert (out / "logs" / "efficiency.log").is_file()
    assert not (out / "logs" / "official.log").exists()  # known up front: no process started
    assert results["sections"]["efficiency"]["status"] == "ok"
    assert results["measurements"]["efficiency.step_s.float32"]["peak_memory_gib"] > 0
    reason = results["targets"][TARGET_NAMES.index("full_image_vs_pixart")]["reason"]
    assert "section was not run (--only)" in reason


# ----------------------------------------------------------------------------------------------------------------------
# Extrapolated measurements (in this process, tiny preset)
# ----------------------------------------------------------------------------------------------------------------------
def tiny_args(**overrides):
    args = parse_args(["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "1", "--steps", "3"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_extrapolated_numbers_are_labelled():
    out = inference.run_diffusion(tiny_args(per_step_only=True))
    image = out["diffusion.image_s"]
    assert "3 x the measured step" in image["extrapolated"]
    steps = 3 * out["diffusion.step_s"]["value"]
    assert image["value"] == pytest.approx(steps + out["diffusion.prepare_text_kv_s"]["value"])

    out = inference.run_ar(tiny_args(ar_full_tokens=4, ar_full_samples=3))
    assert "4 of 16 tokens generated" in out["ar.image_full_forward_s"]["extrapolated"]
    assert out["ar.tokens_per_s_full_forward"]["extrapolated"] and out["ar.kv_cache_speedup_same_tokens"]["value"] > 0

    out = training.run_training_task(tiny_args(train_blocks=1, train_batch_size=["tiny=2"]), "tiny/dit")
    for name in ("ckpt", "no_ckpt"):
        row = out[f"training.tiny.dit.{name}.samples_per_s"]
        assert row["extrapolated"] == "1 of 2 blocks built; step time scaled by 2/1"
        assert row["step_s"] == pytest.approx(2 * min(row["samples"]))
        assert row["value"] == pytest.approx(2 / row["step_s"]) and row["memory"].endswith("of the 1-block model")

    out = inference.run_pixart(tiny_args(pixart_layers=1))
    assert "1 of 2 blocks timed" in out["pixart.step_s"]["extrapolated"]
    assert out["pixart.step_s"]["value"] > out["pixart.block_s"]["value"] > 0
    assert out["pixart.params"]["value"] > 0


def test_lora_training_task_trains_the_adapter_only_and_its_memory_ratio_is_derived():
    args = tiny_args(train_batch_size=["tiny=2"], train_lora_rank=4)
    full = training.run_training_task(args, "tiny/dit")
    lora = training.run_training_task(args, "tiny/dit-lora")
    row = lora["training.tiny.dit-lora.ckpt.samples_per_s"]
    assert row["value"] > 0 and row["peak_memory_gib"] > 0 and "LoRA rank 4" in row["note"]
    assert row["trained_params"] == 2 * 4 * (4 * (64 + 64) + (64 + 256) + (256 + 64))  # 2 blocks, attn + ff
    assert full["training.tiny.dit.ckpt.samples_per_s"]["trained_params"] > 10 * row["trained_params"]
    assert training._param_counts("tiny", "dit-lora", lora_rank=4) == (row["trained_params"], 170000)
    derived = report.derive({**full, **lora}, {})
    ratio = derived["training.tiny.dit-lora.ckpt.peak_memory_vs_full"]
    full_peak = full["training.tiny.dit.ckpt.samples_per_s"]["peak_memory_gib"]
    assert ratio["value"] == pytest.approx(row["peak_memory_gib"] / full_peak)
    assert ratio["unit"] == "ratio" and "training.tiny.dit-lora.no_ckpt.peak_memory_vs_full" in derived


def test_step_flops_counted_on_meta_match_the_analytic_count_at_paper_size():
    from diffusers_bit import load_preset_config

    for preset in ("tiny", "instella-t2i"):
        config = load_preset_config(preset, "transformer")
        for batch, text_len in ((1, 128), (2, 7)):
            assert inference.count_step_flops(preset, batch, text_len) == inference.analytic_step_flops(
                config, batch, text_len
            )
    # the paper model's guided step: about 0.42 TFLOP with 128 text tokens
    assert 0.40e12 < inference.count_step_flops("instella-t2i", 1, 128) < 0.44e12


# ----------------------------------------------------------------------------------------------------------------------
# Targets and derived numbers
# ----------------------------------------------------------------------------------------------------------------------
def rec(value, extrapolated=None):
    return {"value": value, "unit": "s", "label": "x", "extrapolated": extrapolated}


def paper_measurements(**changes):
    m = {
        "official.ours_step_s": rec(1.0),
        "official.step_s": rec(1.3),
        "diffusion.image_s": rec(20.0),
        "ar.image_kv_cache_s": rec(10.0),
        "efficiency.fraction_of_peak": rec(0.8),
        "pixart.image_s": rec(900.0, extrapolated="1 of 28 blocks timed"),
        "tokenizer.decode_512_s": rec(2.0),
        "tokenizer.decode_768_s": rec(4.0),
        "tokenizer.decode_1024_s": rec(5.0),
        "training.instella-t2i.dit.ckpt.samples_per_s": rec(250.0),
        "training.instella-t2i.dit.no_ckpt.samples_per_s": rec(320.0),
    }
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            m.pop(key)
        else:
            m[key] = rec(value)
    return m


def settings(**changes):
    base = {"preset": "instella-t2i", "device_type": "cpu", "dtype": "bfloat16", "steps": 20, "batch_size": 1}
    return {**base, **changes}


ALL_SECTIONS = {
    name: {"status": "ok", "reason": None}
    for name in ("efficiency", "diffusion", "official", "pixart", "ar", "tokenizer", "training:instella-t2i/dit")
}


def targets_of(measurements, run_settings, sections=ALL_SECTIONS):
    measurements = {**measurements, **report.derive(measurements, run_settings)}
    return {t["name"]: t for t in report.evaluate_targets(measurements, run_settings, sections)}


def test_derived_full_image_times():
    m = paper_measurements()
    derived = report.derive(m, settings())
    assert derived["diffusion.full_image_512_s"]["value"] == 22.0
    assert derived["diffusion.full_image_1024_s"]["value"] == 25.0
    assert derived["ar.full_image_1024_s"]["value"] == 15.0
    assert "diffusion.full_image_768_s" not in derived
    m["diffusion.image_s"] = rec(20.0, extrapolated="20 x the step")
    assert report.derive(m, settings())["diffusion.full_image_1024_s"]["extrapolated"] == "20 x the step"
    assert report.derive({"diffusion.image_s": rec(1.0)}, settings()) == {}


def test_cpu_targets_pass_and_fail():
    t = targets_of(paper_measurements(), settings())
    assert t["diffusion_step_vs_official"]["value"] == pytest.approx(1 / 1.3)
    assert t["diffusion_step_vs_official"]["status"] == "pass"
    assert t["full_image_vs_pixart"]["extrapolated"] == "1 of 28 blocks timed"
    assert t["diffusion_step_fraction_of_matmul_peak"]["status"] == "pass"
    assert t["full_image_vs_pixart"]["value"] == 36.0 and t["full_image_vs_pixart"]["status"] == "pass"
    for name in ("gpu_diffusion_image", "gpu_ar_image", "gpu_dit_training"):
        assert t[name]["status"] == "not measured" and t[name]["reason"] == "not measured: no GPU"

    t = targets_of(
        paper_measurements(official__step_s=1.2, efficiency__fraction_of_peak=0.7, pixart__image_s=400.0),
        settings(),
    )
    for name in (
        "diffusion_step_vs_official",
        "diffusion_step_fraction_of_matmul_peak",
        "full_image_vs_pixart",
    ):
        assert t[name]["status"] == "fail", name
    # exactly on the threshold passes
    t = targets_of(paper_measurements(official__step_s=1.25, pixart__image_s=500.0), settings())
    assert t["diffusion_step_vs_official"]["status"] == "pass" and t["full_image_vs_pixart"]["status"] == "pass"


def test_gpu_targets():
    m = paper_measurements(diffusion__image_s=0.05, tokenizer__decode_1024_s=0.03, ar__image_kv_cache_s=0.4)
    t = targets_of(m, settings(device_type="cuda"))
    assert t["gpu_diffusion_image"]["status"] == "pass" and t["gpu_diffusion_image"]["value"] == pytest.approx(0.08)
    assert t["gpu_ar_image"]["status"] == "pass" and t["gpu_ar_image"]["value"] == pytest.approx(0.43)
    assert t["gpu_dit_training"]["status"] == "pass" and t["gpu_dit_training"]["value"] == 320.0  # best of the two
    assert t["diffusion_step_fraction_of_matmul_peak"]["reason"] == "not measured: a CPU target (this run: cuda)"
    assert t["diffusion_step_vs_official"]["status"] == "pass"  # same-run ratios apply on any device

    m = paper_measurements(diffusion__image_s=0.09, tokenizer__decode_1024_s=0.03, ar__image_kv_cache_s=0.6)
    m["training.instella-t2i.dit.no_ckpt.samples_per_s"] = rec(100.0)
    t = targets_of(m, settings(device_type="cuda"))
    assert [t[n]["status"] for n in ("gpu_diffusion_image", "gpu_ar_image", "gpu_dit_training")] == ["fail"] * 3
    t = targets_of(paper_measurements(diffusion__image_s=0.05), settings(device_type="cuda", batch_size=4))
    assert t["gpu_diffusion_image"]["reason"] == "not measured: the target is for batch 1 (this run: 4)"


def test_targets_not_measured_reasons():
    sections = {
        **ALL_SECTIONS,
        "official": {"status": "not measured", "reason": official.NOT_MEASURED},
        "pixart": {"status": "error", "reason": "error: boom"},
    }
    m = paper_measurements(official__step_s=None, pixart__image_s=None)
    t = targets_of(m, settings(), sections)
    assert t["diffusion_step_vs_official"]["status"] == "not measured"
    assert t["diffusion_step_vs_official"]["reason"] == official.NOT_MEASURED
    assert t["full_image_vs_pixart"]["reason"] == "not measured: pixart failed"

    t = targets_of(
        paper_measurements(ar__image_kv_cache_s=None),
        settings(device_type="cuda"),
        {k: v for k, v in ALL_SECTIONS.items() if k != "ar"},
    )
    assert t["gpu_ar_image"]["reason"] == "not measured: the ar section was not run (--only)"
    t = targets_of(paper_measurements(efficiency__fraction_of_peak=None), settings(), {})
    assert t["diffusion_step_fraction_of_matmul_peak"]["reason"] == (
        "not measured: the efficiency section was not run (--only)"
    )

    t = targets_of(paper_measurements(), settings(preset="tiny"))
    assert t["diffusion_step_vs_official"]["value"] == pytest.approx(1 / 1.3)
    assert t["diffusion_step_vs_official"]["reason"].startswith("not measured: targets are for the instella-t2i")
    # the efficiency target compares the fastest dtype with the best peak, whatever the run's --dtype
    t = targets_of(paper_measurements(), settings(dtype="float32"))
    assert t["diffusion_step_fraction_of_matmul_peak"]["status"] == "pass"
    t = targets_of(paper_measurements(), settings(steps=10))
    assert t["full_image_vs_pixart"]["reason"] == "not measured: the target is for 20 steps (this run: 10)"
    t = targets_of({}, settings(), {})
    assert all(row["status"] == "not measured" for row in t.values())


def test_markdown_marks_extrapolated_numbers_and_statuses():
    m = paper_measurements()
    m["official.step_s"] = rec(1.3, extrapolated="from 8 tokens")
    m["pixart.image_s"]["label"] = "seconds per image | full forward"
    run = settings()
    results = {
        "command": "python benchmarks/run_benchmarks.py",
        "settings": {**run, "device": "cpu", "text_len": 128, "repeats": 1, "warmup": 1, "time_budget_s": 20.0},
        "sections": ALL_SECTIONS,
        "measurements": m,
        "environment": {
            "date": "2026-01-01 00:00 UTC",
            "commit": "abc",
            "cpu": "CPU",
            "cpu_flags": ["avx2"],
            "cpu_cores": 2,
            "torch_threads": 2,
            "ram_gib": 8,
            "gpu": None,
            "python": "3.11",
            "torch": "2",
            "diffusers": "0",
            "transformers": "5",
        },
        "targets": report.evaluate_targets(m, run, ALL_SECTIONS),
    }
    text = report.render_markdown(results)
    assert "| 0.769x * | <= 0.8x | **pass** |" in text
    assert "**extrapolated**: from 8 tokens" in text
    assert "seconds per image / full forward" in text  # a pipe in a label does not break the table
    assert "not measured: no GPU" in text and "time budget 20 s per measurement" in text
    assert report.format_value(0.0123, "s") == "12.3 ms" and report.format_value(2.5e12, "FLOP/s") == "2.5 TFLOP/s"


# ----------------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------------
def test_measure_budget_and_peak_memory():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.02)

    cpu = torch.device("cpu")
    timing = common.measure(slow, cpu, repeats=5, warmup=1, budget_s=0.001)
    assert timing["cold"] and len(timing["samples"]) == 1 and len(calls) == 1  # the warm-up is the only sample
    calls.clear()
    timing = common.measure(slow, cpu, repeats=5, warmup=1, budget_s=0.05)
    assert not timing["cold"] and 1 <= len(timing["samples"]) < 5 and timing["seconds"] >= 0.02
    timing = common.measure(slow, cpu, repeats=3, warmup=0)
    assert len(timing["samples"]) == 3 and timing["seconds"] == min(timing["samples"])

    # the RSS peak is per measurement: a big allocation in one does not show in the next
    big = common.measure(lambda: torch.ones(64 * 2**20, dtype=torch.uint8).add_(1), cpu, repeats=1, warmup=0)
    small = common.measure(lambda: None, cpu, repeats=1, warmup=0)
    assert big["peak_memory_gib"] - small["peak_memory_gib"] > 0.04


def test_training_task_plan_and_batch_sizes():
    tasks, skipped = common.training_tasks(["tiny", "instella-t2i", "tiny"], ["instella-t2i/tokenizer-*"])
    assert tasks == [f"tiny/{m}" for m in common.TRAINING_MODELS] + [
        "instella-t2i/dit",
        "instella-t2i/ar",
        "instella-t2i/dit-lora",
        "instella-t2i/ar-lora",
    ]
    assert skipped["instella-t2i/tokenizer-stage2"] == "not measured: skipped by --train_skip instella-t2i/tokenizer-*"
    sizes = common.parse_batch_sizes(["instella-t2i=4", "instella-t2i.tokenizer=2", "instella-t2i.tokenizer-stage3=1"])
    assert common.batch_size_for("instella-t2i", "dit", "cpu", sizes) == 4
    assert common.batch_size_for("instella-t2i", "tokenizer-stage2", "cpu", sizes) == 2
    assert common.batch_size_for("instella-t2i", "tokenizer-stage3", "cpu", sizes) == 1
    assert common.batch_size_for("instella-t2i", "dit", "cuda", {}) == 256
    assert common.batch_size_for("tiny", "ar", "cpu", {}) == 8
    with pytest.raises(ValueError, match="tiny=8"):
        common.parse_batch_sizes(["tiny:8"])
    with pytest.raises(SystemExit):
        parse_args(["--train_batch_size", "tiny=0"])

    args = parse_args(["--preset", "tiny", "--only", "ar", "training", "--train_skip", "tiny/tokenizer-stage3"])
    tasks, skipped = plan_tasks(args)
    assert (
        tasks[0] == "ar"
        and tasks[-1] == "training:tiny/tokenizer-stage2"
        and list(skipped) == ["training:tiny/tokenizer-stage3"]
    )


def test_train_decode_size_caps_each_presets_decode_size():
    from benchmarks.training import tokenizer_job

    def decode_size(cap):
        args = parse_args(["--preset", "tiny"] + (["--train_decode_size", str(cap)] if cap else []))
        return tokenizer_job("tiny", 2, torch.device("cpu"), torch.float32, "mixed", args).decode_size

    assert (decode_size(None), decode_size(512), decode_size(100), decode_size(64)) == (128, 128, 96, 64)
    with pytest.raises(ValueError, match="below every size"):
        decode_size(32)


# ----------------------------------------------------------------------------------------------------------------------
# The authors' model
# ----------------------------------------------------------------------------------------------------------------------
def test_official_model_is_not_measured_without_the_environment_variable(monkeypatch):
    monkeypatch.delenv(official.OFFICIAL_REPO_ENV, raising=False)
    assert official.official_repo() is None
    with pytest.raises(official.OfficialUnavailable, match=official.OFFICIAL_REPO_ENV):
        official.load_official_diffusion_class()
    result = run_task("official", tiny_args())
    assert result == {"status": "not measured", "reason": official.NOT_MEASURED, "measurements": {}}

    monkeypatch.setenv(official.OFFICIAL_REPO_ENV, "/nonexistent/instella")
    with pytest.raises(official.OfficialUnavailable, match="has no models/diff_model.py"):
        official.load_official_diffusion_class()


def test_sdpa_flash_attention_stand_in_leaves_padded_keys_out():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 2, 8), torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8)  # (B, L, H, D)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    out = official.sdpa_flash_attention_forward(q, k, v, mask, query_length=3, is_causal=False)
    for row, first in ((0, 2), (1, 0)):  # row 0: the first two keys are padding
        qr, kr, vr = (x.transpose(1, 2) for x in (q[row : row + 1], k[row : row + 1, first:], v[row : row + 1, first:]))
        expected = F.scaled_dot_product_attention(qr, kr, vr).transpose(1, 2)
        torch.testing.assert_close(out[row : row + 1], expected)
    padded_query = torch.tensor([[1, 1, 1, 1, 1, 0, 1], [1] * 7])
    out = official.sdpa_flash_attention_forward(q, k, v, padded_query, query_length=3)
    assert out[0, 1].abs().max() == 0 and out[0, 0].abs().max() > 0  # flash-attn's zeros at padded queries
    with pytest.raises(NotImplementedError):
        official.sdpa_flash_attention_forward(q, k, v, mask, query_length=3, is_causal=True)


def test_official_loader_patches_flash_attention_in_a_checkout(tmp_path, monkeypatch):
    """A stand-in checkout with the authors' layout: `models/llama_attn.py` imports `_flash_attention_forward` from
    transformers, `models/diff_model.py` imports from it; the loader must route that call to the SDPA stand-in."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "llama_attn.py").write_text(
        "from transformers.modeling_flash_attention_utils import _flash_attention_forward\n"
        "def attend(q, k, v, mask):\n    return _flash_attention_forward(q, k, v, mask, q.shape[1], is_causal=False)\n"
    )
    (models / "diff_model.py").write_text(
        "import torch\nfrom models.llama_attn import attend\n"
        "class Instella_Binary_Diff(torch.nn.Module):\n"
        "    def forward(self, q, k, v, mask):\n        return attend(q, k, v, mask)\n"
    )
    monkeypatch.setenv(official.OFFICIAL_REPO_ENV, str(tmp_path))
    ours = [name for name in sys.modules if name == "models" or name.startswith("models.")]
    saved = {name: sys.modules.pop(name) for name in ours}
    try:
        cls = official.load_official_diffusion_class()
        q, k = torch.randn(1, 2, 2, 8), torch.randn(1, 5, 2, 8)
        mask = torch.tensor([[0, 1, 1, 1, 1]])
        expected = official.sdpa_flash_attention_forward(q, k, k, mask, 2)
        torch.testing.assert_close(cls()(q, k, k, mask), expected)
    finally:
        for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------------
# Speed switches: --attention_backend and --compile
# ----------------------------------------------------------------------------------------------------------------------
def test_speed_switches_are_parsed_and_kept_in_the_settings(capsys):
    from benchmarks.run_benchmarks import settings_of

    args = tiny_args()
    assert args.compile is False and args.attention_backend is None
    args = parse_args(["--preset", "tiny", "--compile", "--attention_backend", "_native_math"])
    assert args.compile is True and args.attention_backend == "_native_math"
    settings = settings_of(args)
    assert settings["compile"] is True and settings["attention_backend"] == "_native_math"
    with pytest.raises(SystemExit):
        parse_args(["--attention_backend", "no_such_backend"])
    assert "--attention_backend must be one of" in capsys.readouterr().err


def test_speed_switches_reach_our_models_before_timing_and_every_record(monkeypatch):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    from diffusers_bit import BinaryARTransformer, BinaryDiT, BinaryLatentTokenizer

    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    events = []
    for cls in (BinaryDiT, BinaryARTransformer, BinaryLatentTokenizer):
        set_backend = cls.set_attention_backend

        def spy_backend(self, name, set_backend=set_backend):
            events.append(("backend", type(self).__name__, name))
            set_backend(self, name)

        monkeypatch.setattr(cls, "set_attention_backend", spy_backend)
        # inductor is exercised in test_attention_dispatch; here only the call and its order matter
        compile_spy = lambda self, freeze_weights: events.append(("compile", type(self).__name__, freeze_weights))  # noqa: E731
        monkeypatch.setattr(cls, "compile_repeated_blocks", compile_spy)
    measure = inference.measure
    monkeypatch.setattr(inference, "measure", lambda *a, **k: events.append(("measure",)) or measure(*a, **k))

    for freeze in (False, True):
        args = tiny_args(
            compile=True, freeze_weights=freeze, attention_backend="_native_math", per_step_only=True, ar_full_tokens=2
        )
        said = "attention backend _native_math; regional torch.compile" + (" with frozen weights" if freeze else "")
        for run, model in (
            (inference.run_diffusion, "BinaryDiT"),
            (inference.run_ar, "BinaryARTransformer"),
            (inference.run_tokenizer, "BinaryLatentTokenizer"),
        ):
            events.clear()
            out = run(args)
            assert events[:3] == [("backend", model, "_native_math"), ("compile", model, freeze), ("measure",)]
            for key, rec in out.items():
                if key in (  # no switch applies
                    "ar.decode_weight_bytes",
                    "ar.memory_bandwidth",
                    "ar.matvec_bandwidth",
                    "ar.streaming_bound_tokens_per_s",
                ):
                    assert rec["compiled"] is False and "torch.compile" not in (rec["note"] or "")
                    continue
                assert rec["compiled"] is True and rec["frozen_weights"] is freeze, key
                assert rec["attention_backend"] == "_native_math", key
                if rec["unit"] not in ("params", "B"):
                    assert rec["note"].endswith(said), key

    out = inference.run_pixart(tiny_args(compile=True, attention_backend="_native_math", pixart_layers=1))
    assert all(rec["compiled"] is False and rec["attention_backend"] is None for rec in out.values())
    out = inference.run_diffusion(tiny_args(per_step_only=True))  # no switch: tagged as such, notes unchanged
    assert all(rec["compiled"] is False and rec["attention_backend"] is None for rec in out.values())
    assert "regional" not in out["diffusion.step_s"]["note"]
