"""The benchmark scripts run (on the tiny preset) and report every figure; timings are not asserted here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_inference_benchmark_runs_on_the_tiny_preset(tmp_path):
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "benchmark_inference.py"), "--preset", "tiny", "--device", "cpu",
         "--dtype", "float32", "--repeats", "1", "--steps", "2", "--output", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    results = json.loads(out.read_text())
    for key in ("diffusion_s_per_call", "diffusion_s_per_call_text_reprojected", "decode_128_s", "encode_64_s",
                "ar_s_per_image_kv_cache", "ar_s_full_recompute", "peak_memory_gib"):  # fmt: skip
        assert results[key] > 0, key
    assert results["diffusion_params"] == 170000 and results["ar_full_recompute_tokens"] == 16
