"""The shapes-world reproduction chain: `--status`, stage commands, and (slow) the whole chain at a micro budget."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training_scripts" / "reproduce_shapes_demo.py"
sys.path.insert(0, str(SCRIPT.parent))
import reproduce_shapes_demo as chain  # noqa: E402


def test_status_of_an_empty_work_dir(tmp_path, capsys):
    chain.main(["--work_dir", str(tmp_path / "w"), "--status"])
    out = capsys.readouterr().out
    assert all(f"{stage:<11} not started" in out for stage in chain.STAGES)


def test_stage_commands_use_the_recipes_and_resume(tmp_path):
    c = chain.Chain(chain.parse_args(["--work_dir", str(tmp_path)]))
    tokenizer = c.command("tokenizer")
    assert any(a.endswith("shapes-64-tokenizer.args") and a.startswith("@") for a in tokenizer)
    assert tokenizer[tokenizer.index("--resume_from_checkpoint") + 1] == "latest"
    diffusion = c.command("diffusion")
    assert any(a.endswith("shapes-64-diffusion.args") for a in diffusion) and "--latents_dir" in diffusion
    (tmp_path / "diffusion" / "checkpoint-500").mkdir(parents=True)
    assert c.describe("diffusion") == "in progress (checkpoint at step 500)"
    with pytest.raises(SystemExit, match="STAGE=FLAGS"):
        chain.parse_args(["--extra", "nonsense"])


@pytest.mark.slow
def test_micro_chain_runs_end_to_end(tmp_path):
    work = tmp_path / "work"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--work_dir", str(work), "--micro", "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert all(f"{stage:<11} done" in result.stdout for stage in chain.STAGES)
    report = json.loads((work / "evaluation.json").read_text())
    assert {"tokenizer", "diffusion", "ar"} <= set(report)
    runs = [json.loads(line) for line in (work / "runs.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in runs] == list(chain.STAGES) and all(r["wall_time_s"] > 0 for r in runs)
